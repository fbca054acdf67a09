"""The training run's data: the training table, texture index, vertebrae and splits, as per-vertebra frames.

* ``DataPaths.training_table``: labelled L1-L4 vertebrae with ``split``;
* ``texture.parquet`` + the split table: the **pretraining set** = every vertebra (all levels,
  labelled or not) of train-split patients;
* ``vertebrae.parquet``: the study's L1 ``hu_mean`` for the HU-rule baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from osteo_config.experiment import DataPaths
from osteo_model.baselines import L1_LEVEL
from osteo_model.errors import ModelError

__all__ = ["DataPaths", "ExperimentError", "Frames", "assemble_frames", "vertebra_id"]


class ExperimentError(ModelError, ValueError):
    """The training inputs or the method cannot produce a run."""


@dataclass
class Frames:
    """Per-vertebra frames of one run; ``pool_path`` is relative to ``root``."""

    root: Path
    pretrain: pd.DataFrame            # all vertebrae of train-split patients
    unlabeled: pd.DataFrame           # pretrain minus the labelled training vertebrae
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def vertebra_id(frame: pd.DataFrame) -> pd.Series:
    """``patient:study:level``: the vertebra key of the prediction tables."""
    return frame["patient_id"].astype(str) + ":" + frame["study_id"].astype(str) + ":" + frame["level"].astype(str)


def calibration_versions(paths: DataPaths) -> list[str] | None:
    """The HU calibration versions (``cal_version``) of the ingested vertebrae, sorted; None when ingestion
    wrote no such column. The model's I/O contract records them: screening refuses pools calibrated otherwise."""
    if not Path(paths.vertebrae).is_file():
        return None
    import pyarrow.parquet as pq
    if "cal_version" not in pq.read_schema(paths.vertebrae).names:
        return None
    return sorted(pd.read_parquet(paths.vertebrae, columns=["cal_version"])["cal_version"].astype(str).unique())


def assemble_frames(paths: DataPaths) -> Frames:
    """Read the training table, texture index, vertebrae and splits into the run's frames.

    Raises:
        ExperimentError: a file is missing or a labelled split is empty.
    """
    for p in (paths.training_table, paths.texture_dir / "texture.parquet", paths.splits):
        if not Path(p).is_file():
            raise ExperimentError(f"{p} not found: run `osteo texture`, `osteo splits` and "
                                  "`osteo features training-table` first")
    table = pd.read_parquet(paths.training_table)
    if "vertebra_id" not in table.columns:
        table["vertebra_id"] = vertebra_id(table)
    if Path(paths.vertebrae).is_file():
        vert = pd.read_parquet(paths.vertebrae, columns=["study_id", "level", "hu_mean"])
        l1 = vert[vert["level"] == L1_LEVEL].groupby("study_id")["hu_mean"].mean()
        table["l1_hu"] = table["study_id"].map(l1).fillna(table["hu_mean"])
    splits = pd.read_parquet(paths.splits, columns=["patient_id", "split"])
    texture = pd.read_parquet(paths.texture_dir / "texture.parquet")
    train_patients = set(splits.loc[splits["split"] == "train", "patient_id"])
    pretrain = texture[texture["patient_id"].isin(train_patients)].reset_index(drop=True)
    pretrain["vertebra_id"] = vertebra_id(pretrain)
    if Path(paths.vertebrae).is_file():      # unlabelled rows join fine-tuning (L_position): they need the descriptors too
        import pyarrow.parquet as pq
        from features.roi import DESCRIPTOR_CHOICES
        have = [c for c in DESCRIPTOR_CHOICES if c in pq.read_schema(paths.vertebrae).names and c not in pretrain.columns]
        if have:
            desc = pd.read_parquet(paths.vertebrae, columns=["study_id", "level", *have])
            pretrain = pretrain.merge(desc, on=["study_id", "level"], how="left", validate="many_to_one")
    vendor = table.groupby("patient_id")["device_vendor"].first()          # the patient's DXA device
    pretrain["device_vendor"] = pretrain["patient_id"].map(vendor)
    parts = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    for s, f in parts.items():
        if f.empty:
            raise ExperimentError(f"the training table has no '{s}' rows: rebuild the splits with more patients")
    labelled = set(parts["train"]["vertebra_id"])
    unlabeled = pretrain[~pretrain["vertebra_id"].isin(labelled)].reset_index(drop=True)
    return Frames(paths.texture_dir, pretrain, unlabeled, parts["train"], parts["valid"], parts["test"])
