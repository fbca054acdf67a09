"""Evaluation gates and MLflow model-registry promotion (issue: evaluation and registry).

One concept per module:

* :mod:`~registry.config`: ``RegistryConfig`` (model name, lock timeout, lineage tags, approval, audit key;
  the tracking URI is the ``tracking:`` section's -- a database or an ``http(s)://`` MLflow server --, the
  registry store ``store_uri`` is ``registry.lock_uri``, else the tracking database).
* :mod:`~registry.gates`: ``GatesConfig`` and the pure ``evaluate_gates(metrics, champion_metrics, cfg)``.
* :mod:`~registry.lock`: ``registry_lock`` on the registry store (PostgreSQL advisory lock, or fcntl file lock).
* :mod:`~registry.audit`: append-only, HMAC-SHA256-chained ``osteo_registry_log`` table in the registry store
  (events and promotion intents), its key (``load_audit_key``) and ``verify_chain``.
* :mod:`~registry.registry`: ``register_candidate``, ``promote``, ``approve``, ``reject``, ``rollback``,
  ``repair``, ``consistency``, ``champion_metrics``; each alias change is an intent, then its completion.
* :mod:`~registry.pipeline`: the steps behind ``osteo registry promote|approve|reject|rollback|repair|status|log``: read the
  candidate's files (finetune.json, evaluate.json), gate, register, promote; ``promotion.json``.

Dependencies: mlflow, SQLAlchemy, :mod:`osteo_config.params` and the standard library; never torch,
``features/``, ``osteo_model/`` or ``flows/`` (the contract is the metrics dict
and MLflow). Importing the package has no side effects.
"""
