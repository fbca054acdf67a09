"""The assembled training table: Feast training set + patient-level splits.

``osteo_training_v1`` (via :func:`features.store.training_set`) pairs each
labelled CT vertebra with one DXA row inside the ±window rule. This module
attaches each patient's split (``features.splits``) and writes the table that
the training-set Great Expectations suite validates and training reads. It
holds no pairing logic of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features import atomic
from features.splits import load_splits
from features.store import FeatureStoreConfig, training_set


class TrainingTableError(RuntimeError):
    """The training table cannot be assembled (no splits, patients without a split)."""


@dataclass(frozen=True)
class TrainingTableSummary:
    """Counts of an assembled training table.

    Attributes:
        path: where the parquet was written.
        rows: labelled vertebrae (paired within the window).
        by_split: rows per split.
        by_site: rows per site.
        pairing: Feast pairing counts (vertebrae in, paired, excluded by the window rule, ...).
    """

    path: str
    rows: int
    by_split: dict[str, int]
    by_site: dict[str, int]
    pairing: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_training_table(cfg: FeatureStoreConfig, repo_dir: Path, splits_path: Path, out_path: Path
                         ) -> TrainingTableSummary:
    """Pair vertebrae with DXA labels through the FeatureService, attach splits, write parquet.

    Args:
        cfg: the ``features_store`` config.
        repo_dir: a Feast repository that :func:`features.store.materialize` has applied.
        splits_path: the split table (verified against its recorded SHA-256).
        out_path: the training table parquet to write (``<name>.json`` beside it holds the counts).

    Returns:
        A :class:`TrainingTableSummary`.

    Raises:
        TrainingTableError: a paired patient has no split (splits older than the ingest).
    """
    frame = training_set(cfg, repo_dir)
    pairing = dict(frame.attrs.get("pairing", {}))
    splits = load_splits(splits_path, verify=True)[["patient_id", "split"]]
    out = frame.merge(splits, on="patient_id", how="left", validate="many_to_one")
    missing = int(out["split"].isna().sum())
    if missing:
        raise TrainingTableError(
            f"{missing} paired vertebrae have no split: re-run `osteo splits` after `osteo ingest`")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_parquet(out_path, out, index=False)
    summary = TrainingTableSummary(
        path=str(out_path), rows=len(out),
        by_split={k: int(v) for k, v in out["split"].value_counts().sort_index().items()},
        by_site={k: int(v) for k, v in out["site"].value_counts().sort_index().items()},
        pairing=pairing)
    atomic.write_json(out_path.with_suffix(".json"), summary.to_dict(), indent=2, default=str)
    return summary
