"""Evaluation gates and MLflow model-registry promotion (issue: evaluation and registry).

One concept per module:

* :mod:`~registry.config`: ``RegistryConfig`` (model name, lock timeout, lineage tags; the database URI is
  the ``tracking:`` section's, via :func:`osteo_config.params.resolve_tracking_uri`).
* :mod:`~registry.gates`: ``GatesConfig`` and the pure ``evaluate_gates(metrics, champion_metrics, cfg)``.
* :mod:`~registry.lock`: ``registry_lock`` (PostgreSQL advisory lock, or fcntl file lock beside SQLite).
* :mod:`~registry.audit`: append-only, hash-chained ``osteo_registry_audit`` table in the tracking DB.
* :mod:`~registry.registry`: ``register_candidate``, ``promote``, ``rollback``, ``champion_metrics``.
* :mod:`~registry.pipeline`: the steps behind ``osteo registry promote|rollback|status|log``: read the
  candidate's files (finetune.json, evaluate.json), gate, register, promote; ``promotion.json``.

Dependencies: mlflow, SQLAlchemy, :mod:`osteo_config.params` and the standard library; never torch,
``features/``, ``osteo_model/`` or ``flows/`` (the contract is the metrics dict
and MLflow). Importing the package has no side effects.
"""
