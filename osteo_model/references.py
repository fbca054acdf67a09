"""What a model version carries for serving besides its weights, fitted once at training time.

* ``conformal.json``: the split-conformal BMD interval (:mod:`osteo_model.conformal`), fitted on the
  VALIDATION vertebrae' BMD residuals at ``screen.interval_level``; its coverage on the test split is
  measured here and reported (never used to refit).
* ``drift_reference.json``: the training distribution summary (:mod:`osteo_model.drift`) of the
  per-vertebra features a screening batch also has (HU statistics, body size, scanner, contrast).

Both are written beside the bundle (which is never rewritten) and logged with the pyfunc.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteo_model.conformal import ConformalError, ConformalInterval, coverage, fit_conformal, predict_interval
from osteo_model.drift import DriftReference

CONFORMAL_FILE = "conformal.json"
DRIFT_FILE = "drift_reference.json"
# per-vertebra features shared by the training table and a screening batch (vertebrae.parquet)
DRIFT_FEATURES = ("hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95", "body_voxels", "scanner", "contrast")


def _write_json(path: Path, obj: Any) -> Path:
    """Atomic write: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _bmd_pairs(pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(pred["bmd_true"].to_numpy(dtype=float)) & np.isfinite(pred["bmd_pred"].to_numpy(dtype=float))
    return pred["bmd_true"].to_numpy(dtype=float)[ok], pred["bmd_pred"].to_numpy(dtype=float)[ok]


def fit_references(bundle: Path, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
                   interval_level: float, drift_bins: int) -> dict[str, Any]:
    """Fit and write the BMD interval and the drift reference beside ``bundle``; return what was measured.

    Args:
        bundle: the model bundle (its folder receives the files).
        train: the training vertebrae (drift features).
        valid / test: prediction frames with ``bmd_true`` and ``bmd_pred`` (g/cm2).
        interval_level: target coverage, e.g. 0.90.
        drift_bins: quantile bins of the drift reference.

    Returns:
        ``{"interval": {level, half_width, n_calibration, rank, test_coverage, n_test} | {"error": ...},
        "drift_features": [...]}``: the interval is absent (with the reason) when the model predicts no BMD
        or validation has too few vertebrae for the level.
    """
    folder = Path(bundle).parent
    out: dict[str, Any] = {}
    y_val, p_val = _bmd_pairs(valid)
    try:
        interval = fit_conformal(y_val, p_val, interval_level)
        _write_json(folder / CONFORMAL_FILE, interval.to_dict())
        y_te, p_te = _bmd_pairs(test)
        lo, hi = predict_interval(interval, p_te)
        out["interval"] = {**interval.to_dict(), "n_test": int(y_te.size),
                           "test_coverage": coverage(y_te, lo, hi) if y_te.size else None}
    except ConformalError as exc:
        out["interval"] = {"error": str(exc)}
    columns = {c: train[c].to_numpy() for c in DRIFT_FEATURES if c in train.columns}
    _write_json(folder / DRIFT_FILE, DriftReference.fit(columns, drift_bins).to_dict())
    out["drift_features"] = sorted(columns)
    return out


def load_interval(bundle: Path) -> ConformalInterval | None:
    """The stored BMD interval of a bundle (None when the model has none)."""
    path = Path(bundle).with_name(CONFORMAL_FILE)
    return ConformalInterval.from_dict(json.loads(path.read_text())) if path.is_file() else None


def load_drift_reference(bundle: Path) -> DriftReference | None:
    """The stored training distribution of a bundle (None when the model has none)."""
    path = Path(bundle).with_name(DRIFT_FILE)
    return DriftReference.from_dict(json.loads(path.read_text())) if path.is_file() else None


def serving_files(bundle: Path) -> dict[str, str]:
    """The pyfunc's artifacts: the bundle and every companion file present beside it."""
    from osteo_model.operating_point import OPERATING_POINT_FILE

    names = {"operating_point": OPERATING_POINT_FILE, "conformal": CONFORMAL_FILE, "drift_reference": DRIFT_FILE}
    files = {"bundle": str(bundle)}
    files.update({k: str(Path(bundle).with_name(v)) for k, v in names.items() if Path(bundle).with_name(v).is_file()})
    return files
