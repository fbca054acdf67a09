"""The osteo Feast feature repository: declarative definitions and feature_store.yaml templates.

``definitions.py`` tells the story Entity -> Source -> FeatureView -> FeatureService;
``templates/`` holds the per-profile ``feature_store.yaml`` that
:func:`features.store.write_feature_store_yaml` fills from ``params.yaml``.
Generated files (yaml, Feast-ready parquet, registry, SQLite) go to the runtime
repository directory (``features_store.repo_dir``), never into this package.
"""
