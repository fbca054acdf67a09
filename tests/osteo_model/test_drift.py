"""Drift: PSI and KS from a stored quantile summary; unshifted data passes, shifted data drifts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ks_2samp

from osteo_config.screen import DriftConfig
from osteo_model.drift import DriftError, DriftReference, drift_verdict, psi

CFG = DriftConfig()


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(7)
    n = 4000
    return {"hu_mean_L1": rng.normal(150, 40, n), "hu_std_L1": rng.gamma(5.0, 8.0, n),
            "scanner": rng.choice(["GE", "Siemens", "Philips"], n, p=[0.5, 0.3, 0.2])}


@pytest.fixture(scope="module")
def ref(train):
    return DriftReference.fit(train, CFG.bins)


def test_psi_by_hand():
    r, p = [0.5, 0.5], [0.25, 0.75]
    assert psi(r, p) == pytest.approx(-0.25 * np.log(0.5) + 0.25 * np.log(1.5))
    assert psi(r, r) == 0.0


def test_reference_bins_are_equal_probability_and_json_round_trips(ref):
    f = ref.features["hu_mean_L1"]
    assert len(f.shares) == CFG.bins and len(f.edges) == CFG.bins - 1
    np.testing.assert_allclose(f.shares, 1 / CFG.bins, atol=1e-3)
    assert DriftReference.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_an_unshifted_batch_does_not_drift(ref):
    rng = np.random.default_rng(8)
    batch = {"hu_mean_L1": rng.normal(150, 40, 400), "hu_std_L1": rng.gamma(5.0, 8.0, 400),
             "scanner": rng.choice(["GE", "Siemens", "Philips"], 400, p=[0.5, 0.3, 0.2])}
    rep = drift_verdict(ref, batch, CFG)
    assert not rep.drifted, [f.reason for f in rep.features]
    assert all(f.status == "ok" for f in rep.features), [f.reason for f in rep.features]


def test_a_shifted_batch_drifts_on_the_shifted_features_only(ref):
    rng = np.random.default_rng(9)
    batch = {"hu_mean_L1": rng.normal(150 + 20, 40, 400),          # contrast: +20 HU
             "hu_std_L1": rng.gamma(5.0, 8.0, 400),
             "scanner": rng.choice(["GE", "Canon"], 400, p=[0.4, 0.6])}  # a new scanner
    rep = drift_verdict(ref, batch, CFG)
    status = {f.name: f.status for f in rep.features}
    assert rep.drifted and status == {"hu_mean_L1": "drift", "hu_std_L1": "ok", "scanner": "drift"}
    m = rep.metrics()
    assert m["n_drifted"] == 2 and m["psi_scanner"] > CFG.psi_alert and "ks_d_scanner" not in m


def test_ks_from_the_summary_matches_scipy_on_the_raw_data(train, ref):
    rng = np.random.default_rng(10)
    for shift in (0.0, 10.0, 30.0):
        x = rng.normal(150 + shift, 40, 300)
        ours = drift_verdict(ref, {"hu_mean_L1": x, "hu_std_L1": train["hu_std_L1"][:300],
                                   "scanner": train["scanner"][:300]}, CFG)
        f = next(f for f in ours.features if f.name == "hu_mean_L1")
        exact = ks_2samp(train["hu_mean_L1"], x, method="asymp")
        assert f.ks_d == pytest.approx(exact.statistic, abs=0.012)     # grid of 101 knots: error <= ~1 %
        if not 0.1 * CFG.ks_alpha < exact.pvalue < 10 * CFG.ks_alpha:     # a clear decision must agree
            assert (f.ks_p < CFG.ks_alpha) == (exact.pvalue < CFG.ks_alpha)
    assert f.ks_p < CFG.ks_alpha          # the 30 HU shift is detected


def test_small_batches_are_not_judged_and_missing_features_are_typed_errors(ref, train):
    small = {k: v[:5] for k, v in train.items()}
    rep = drift_verdict(ref, small, CFG)
    assert {f.status for f in rep.features} == {"too_few"} and not rep.drifted
    with pytest.raises(DriftError, match="scanner"):
        drift_verdict(ref, {"hu_mean_L1": train["hu_mean_L1"], "hu_std_L1": train["hu_std_L1"]}, CFG)
