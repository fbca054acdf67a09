"""Reading the tables to check from disk (the CLI's shell around :func:`data_checks.run_checks`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_checks.errors import ChecksInputError

# Where each stage writes its table, relative to paths.interim: the stage's own
# sub-folder first, then the interim root (docs/data_contract.md §2-3).
LOCATIONS: dict[str, tuple[str, ...]] = {
    "vertebrae": ("ingest/vertebrae.parquet", "vertebrae.parquet"),
    "dxa": ("ingest/dxa.parquet", "dxa.parquet"),
    "radiomics": ("texture/radiomics.parquet", "radiomics.parquet"),
    "texture": ("texture/texture.parquet", "texture.parquet"),
}


def read_tables(interim_dir: Path, training: Path | None = None) -> dict[str, pd.DataFrame]:
    """Read every stage table found under ``interim_dir`` (and the training set, if given).

    Args:
        interim_dir: ``paths.interim``.
        training: the assembled training-set parquet; ``None`` = not checked.

    Returns:
        Table name -> DataFrame, for the tables that exist.

    Raises:
        ChecksInputError: nothing found, or ``training`` was given but is missing.
    """
    interim_dir = Path(interim_dir)
    tables = {}
    for name, candidates in LOCATIONS.items():
        found = next((interim_dir / c for c in candidates if (interim_dir / c).is_file()), None)
        if found is not None:
            tables[name] = pd.read_parquet(found)
    if training is not None:
        if not Path(training).is_file():
            raise ChecksInputError(f"training set {training} not found: build it first or drop the option")
        tables["training"] = pd.read_parquet(training)
    if not tables:
        raise ChecksInputError(
            f"no table under {interim_dir}: run `osteo ingest` (and `osteo texture`) before the checks"
        )
    return tables
