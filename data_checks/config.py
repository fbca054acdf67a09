"""``ChecksConfig``: the ``checks:`` section of params.yaml (plus the few ``ingest:``/``paths:`` keys it shares)."""
from __future__ import annotations


from osteo_config.checks import ChecksConfig  # noqa: F401  (configuration lives in the leaf package)

# Every table's names in `tables` passed to `run_checks` (docs/data_contract.md §2-3).
TABLES: tuple[str, ...] = ("vertebrae", "dxa", "radiomics", "texture", "training")

# Columns whose values identify a person or an item: never copied into results or Data Docs.
IDENTIFYING_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_id", "dxa_id", "roi_path", "roi_sha256", "pool_path", "pool_sha256",
)


