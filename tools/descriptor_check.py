"""How much of the DXA BMD each CT measurement explains: the evidence behind ``model.moe.descriptors``.

Pairs every ingested L1-L4 vertebra with its DXA reading of the same level (nearest date within
``--window-days``, the pairing rule of the pipeline) and prints, on those pairs,

* the Pearson r of each CT measurement alone with the DXA BMD, and
* the r of a linear model's out-of-fold predictions (5 folds **grouped by patient**, so no patient is in
  a fold's training and test part), each with the DXA vendor, level and contrast beside it.

Reads ``<data>/interim/ingest/{vertebrae,dxa}.parquet`` (pseudonymous); writes nothing.

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

L1_L4 = (13, 16)
MODELS = {
    "hu_mean (trabecular core)": ["hu_mean"],
    "hu_mean + body_voxels": ["hu_mean", "body_voxels"],
    "proj_hu_mm (AP projection)": ["proj_hu_mm"],
    "hu_mean + every descriptor": ["hu_mean", *DESCRIPTOR_CHOICES],
}


def paired(data: Path, window_days: int) -> pd.DataFrame:
    v = pd.read_parquet(data / "interim" / "ingest" / "vertebrae.parquet")
    d = pd.read_parquet(data / "interim" / "ingest" / "dxa.parquet")
    d = d[d["level"].between(*L1_L4)]
    m = v.merge(d[["patient_id", "level", "dxa_date", "bmd_g_cm2", "device_vendor"]], on=["patient_id", "level"])
    m["dt"] = (m["dxa_date"] - m["ct_date"]).dt.days.abs()
    return m[m["dt"] <= window_days].sort_values("dt", kind="mergesort").drop_duplicates(["study_id", "level"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"), help="paths.data of the profile")
    ap.add_argument("--window-days", type=int, default=183, help="CT-DXA pairing window (ingest.dxa_window_days)")
    args = ap.parse_args()
    m = paired(args.data, args.window_days)
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
