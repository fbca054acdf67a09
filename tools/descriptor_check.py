"""How much of the DXA BMD each CT measurement explains: the evidence behind ``model.moe.descriptors``.

On the pipeline's own CT/DXA pairs (the training table: L1-L4 vertebrae with their DXA reading within the
±``ingest.dxa_window_days`` rule, every split) prints

* the Pearson r of each CT measurement alone with the DXA BMD, and
* the r of a linear model's out-of-fold predictions (5 folds **grouped by patient**, so no patient is in
  a fold's training and test part), each with the DXA vendor, level and contrast beside it.

Reads ``<data>/processed/training_table.parquet`` (pseudonymous); writes nothing.

    .venv/bin/python tools/descriptor_check.py --data data
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, cross_val_predict

from features.roi import DESCRIPTOR_CHOICES

MODELS = {
    "hu_mean (trabecular core)": ["hu_mean"],
    "hu_mean + body_voxels": ["hu_mean", "body_voxels"],
    "proj_hu_mm (AP projection)": ["proj_hu_mm"],
    "hu_mean + every descriptor": ["hu_mean", *DESCRIPTOR_CHOICES],
}


def paired(data: Path) -> pd.DataFrame:
    """The pipeline's own CT/DXA pairs: the training table (``osteo features training-table``), every split."""
    return pd.read_parquet(data / "processed" / "training_table.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"), help="paths.data of the profile")
    args = ap.parse_args()
    m = paired(args.data)
    y = m["bmd_g_cm2"].to_numpy()
    print(f"{len(m)} paired L1-L4 vertebrae of {m['patient_id'].nunique()} patients")
    print("\nmeasurement alone            r with DXA BMD")
    for c in ["hu_mean", *DESCRIPTOR_CHOICES]:
        print(f"  {c:26s} {np.corrcoef(m[c], y)[0, 1]: .3f}")
    side = np.column_stack([pd.get_dummies(m["device_vendor"]).to_numpy(float), m["contrast"].to_numpy(float),
                            pd.get_dummies(m["level"]).to_numpy(float)])
    print("\nlinear model (+ vendor, level, contrast), 5 patient-grouped folds: out-of-fold r")
    for name, cols in MODELS.items():
        X = np.column_stack([m[cols].to_numpy(float), side])
        p = cross_val_predict(LinearRegression(), X, y, cv=GroupKFold(5), groups=m["patient_id"])
        print(f"  {name:28s} {np.corrcoef(p, y)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
