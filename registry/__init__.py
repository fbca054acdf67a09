"""Evaluation gates and MLflow model-registry promotion (issue: evaluation and registry).

One concept per module:

* :mod:`~registry.config`: ``RegistryConfig`` (tracking URI per profile, model name, lock timeout, lineage tags).
* :mod:`~registry.gates`: ``GatesConfig`` and the pure ``evaluate_gates(metrics, champion_metrics, cfg)``.
* :mod:`~registry.lock`: ``registry_lock`` (PostgreSQL advisory lock, or fcntl file lock beside SQLite).
* :mod:`~registry.audit`: append-only, hash-chained ``osteo_registry_audit`` table in the tracking DB.
* :mod:`~registry.registry`: ``register_candidate``, ``promote``, ``rollback``, ``champion_metrics``.

Dependencies: mlflow, SQLAlchemy and the standard library; never torch,
``features/``, ``osteo_model/`` or ``flows/`` (the contract is the metrics dict
and MLflow). Importing the package has no side effects.
"""
