"""Split-conformal BMD intervals: the finite-sample rank by hand, coverage on exchangeable data, typed errors."""
from __future__ import annotations

import numpy as np
import pytest

from osteo_model.conformal import (ConformalError, ConformalInterval, conformal_rank, coverage, fit_conformal,
                                 predict_interval)


def test_rank_and_quantile_match_a_hand_computation():
    # n = 9, level 0.9: k = ceil(10 * 0.9) = 9 -> the largest residual
    y = np.zeros(9)
    pred = np.array([0.05, -0.01, 0.02, 0.09, -0.03, 0.04, -0.07, 0.06, 0.08])
    m = fit_conformal(y, pred, 0.9)
    assert (m.rank, m.n_calibration) == (9, 9) and m.half_width == pytest.approx(0.09)
    # n = 19, level 0.8: k = ceil(20 * 0.8) = 16 -> the 16th smallest of |r| = 0.01 .. 0.19
    r = np.arange(1, 20) / 100.0
    m = fit_conformal(np.zeros(19), np.random.default_rng(0).permutation(r) * np.where(np.arange(19) % 2, 1, -1), 0.8)
    assert m.rank == 16 and m.half_width == pytest.approx(0.16)
    assert conformal_rank(99, 0.9) == 90 and conformal_rank(100, 0.9) == 91


def test_too_few_residuals_is_a_typed_error():
    with pytest.raises(ConformalError, match="at least 9"):
        fit_conformal(np.zeros(8), np.ones(8), 0.9)


def test_bad_input_is_a_typed_error():
    with pytest.raises(ConformalError, match="not finite"):
        fit_conformal(np.array([0.0, np.nan] * 10), np.zeros(20), 0.9)
    with pytest.raises(ConformalError, match="shapes"):
        fit_conformal(np.zeros(20), np.zeros(21), 0.9)
    with pytest.raises(ConformalError, match="interval level"):
        fit_conformal(np.zeros(20), np.zeros(20), 1.0)


def test_coverage_on_exchangeable_data_is_near_the_target():
    """Average over 200 splits of 500 calibration / 2000 test: E[coverage] in [0.9, 0.9 + 1/(n+1)]."""
    rng = np.random.default_rng(20261202)
    covs = []
    for _ in range(200):
        x = rng.uniform(0.5, 1.3, 2500)
        y = x + rng.standard_t(4, 2500) * 0.05            # heavy-tailed, heteroscedasticity-free noise
        pred = x                                           # a fixed predictor
        m = fit_conformal(y[:500], pred[:500], 0.9)
        lo, hi = predict_interval(m, pred[500:])
        covs.append(coverage(y[500:], lo, hi))
    mean = float(np.mean(covs))
    assert 0.895 <= mean <= 0.9 + 1 / 501 + 0.005, mean
    # spread: the calibration quantile's Beta law (var ~ a(1-a)/(n+2)) plus test sampling (a(1-a)/m)
    sd_theory = np.sqrt(0.09 / 502 + 0.09 / 2000)
    assert 0.6 * sd_theory <= float(np.std(covs)) <= 1.4 * sd_theory


def test_interval_is_symmetric_and_round_trips_through_a_dict():
    m = fit_conformal(np.zeros(50), np.linspace(-0.1, 0.1, 50), 0.9)
    lo, hi = predict_interval(m, np.array([1.0, 0.8]))
    np.testing.assert_allclose(hi - lo, 2 * m.half_width)
    np.testing.assert_allclose((hi + lo) / 2, [1.0, 0.8])
    assert ConformalInterval.from_dict(m.to_dict()) == m
