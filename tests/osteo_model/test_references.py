"""The serving references a model version carries: BMD interval fitted on valid, measured on test; drift summary."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from osteo_model.drift import DriftReference
from osteo_model.references import (CONFORMAL_FILE, DRIFT_FILE, fit_references, load_drift_reference, load_interval,
                                    serving_files)


def _pred(rng, n, noise=0.05, nan_every=0):
    true = rng.normal(0.9, 0.15, n)
    pred = true + rng.normal(0, noise, n)
    if nan_every:
        true[::nan_every] = np.nan                    # unlabelled vertebrae carry no DXA BMD
    return pd.DataFrame({"bmd_true": true, "bmd_pred": pred})


def test_interval_is_fitted_on_valid_and_its_test_coverage_is_measured(tmp_path):
    rng = np.random.default_rng(0)
    bundle = tmp_path / "finetune" / "model.pt"
    bundle.parent.mkdir()
    bundle.write_bytes(b"weights")
    train = pd.DataFrame({"hu_mean": rng.normal(150, 40, 300), "body_voxels": rng.integers(800, 2000, 300),
                          "scanner": rng.choice(["s1", "s2"], 300), "contrast": rng.integers(0, 2, 300)})
    valid, test = _pred(rng, 400, nan_every=7), _pred(rng, 4000)
    out = fit_references(bundle, train, valid, test, interval_level=0.9, drift_bins=10)
    interval = load_interval(bundle)
    ok = valid["bmd_true"].notna()
    residuals = np.sort(np.abs(valid.loc[ok, "bmd_true"] - valid.loc[ok, "bmd_pred"]).to_numpy())
    k = int(np.ceil((ok.sum() + 1) * 0.9))
    assert interval.n_calibration == ok.sum() and interval.half_width == residuals[k - 1]   # valid only, NaN dropped
    assert 0.87 <= out["interval"]["test_coverage"] <= 0.93 and out["interval"]["n_test"] == 4000
    assert bundle.read_bytes() == b"weights"                                               # the bundle is untouched
    ref = load_drift_reference(bundle)
    assert isinstance(ref, DriftReference) and set(ref.features) == {"hu_mean", "body_voxels", "scanner", "contrast"}
    assert set(serving_files(bundle)) == {"bundle", "conformal", "drift_reference"}     # no operating point yet


def test_too_few_validation_vertebrae_record_the_reason_instead_of_an_interval(tmp_path):
    rng = np.random.default_rng(1)
    bundle = tmp_path / "model.pt"
    out = fit_references(bundle, pd.DataFrame({"hu_mean": rng.normal(size=50)}), _pred(rng, 5), _pred(rng, 50),
                         interval_level=0.9, drift_bins=4)
    assert "too few" in out["interval"]["error"] and not (tmp_path / CONFORMAL_FILE).exists()
    assert load_interval(bundle) is None and json.loads((tmp_path / DRIFT_FILE).read_text())["hu_mean"]["n"] == 50
