"""Metric functions: parity with scikit-learn / brute force, NaN rules, patient rule, bootstrap, paired tests."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score, roc_curve)

from osteo_model import metrics as M


def _data(n: int = 300, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, n))))
    if ties:
        s = np.round(s, 1)                                    # many tied scores
    return y, s


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_sklearn(seed, ties):
    y, s = _data(seed=seed, ties=ties)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    roc = M.roc_points(y, s)
    np.testing.assert_allclose(roc["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-12)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_threshold_metrics_match_sklearn_and_brute_force(t):
    y, s = _data(seed=3)
    p = (s >= t).astype(int)
    m = M.score_metrics(y, s, t)
    assert m["sen"] == pytest.approx(100 * recall_score(y, p))
    assert m["spe"] == pytest.approx(100 * recall_score(1 - y, 1 - p))
    assert m["f1"] == pytest.approx(100 * f1_score(y, p))
    assert m["ppv"] == pytest.approx(100 * precision_score(y, p))
    assert m["acc"] == pytest.approx(100 * np.mean(y == p))
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def test_undefined_metrics_are_nan_by_the_documented_rule():
    only_neg = M.binary_metrics(M.confusion(np.zeros(5), np.array([0, 0, 1, 0, 0])))
    assert math.isnan(only_neg["sen"]) and only_neg["spe"] == pytest.approx(80.0)
    assert only_neg["f1"] == 0.0                              # a false alarm with no positives: F1 defined, 0
    all_correct_neg = M.binary_metrics(M.confusion(np.zeros(4), np.zeros(4)))
    assert math.isnan(all_correct_neg["f1"]) and math.isnan(all_correct_neg["ppv"])
    only_pos = M.binary_metrics(M.confusion(np.ones(4), np.ones(4)))
    assert math.isnan(only_pos["spe"]) and only_pos["sen"] == 100.0
    assert math.isnan(M.binary_metrics(M.Confusion(0, 0, 0, 0))["acc"])
    assert math.isnan(M.auroc(np.ones(3), [0.1, 0.2, 0.3])) and math.isnan(M.auprc(np.zeros(3), [0.1, 0.2, 0.3]))
    assert all(math.isnan(v) for v in M.calibration_fit(np.zeros(4), [0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(M.pearson_r([1.0], [2.0])) and math.isnan(M.pearson_r([1, 1, 1], [1, 2, 3]))


def test_pearson_and_mae_match_numpy():
    rng = np.random.default_rng(4)
    a = rng.normal(size=50)
    b = 0.5 * a + rng.normal(size=50)
    assert M.pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert M.mae(a, b) == pytest.approx(np.mean(np.abs(a - b)))


def test_calibration_fit_matches_unpenalised_sklearn_and_recovers_known_slopes():
    y, s = _data(n=2000, seed=5)
    slope, intercept = M.calibration_fit(y, s)
    x = np.log(s / (1 - s))[:, None]
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x, y)
    assert slope == pytest.approx(ref.coef_[0, 0], abs=1e-4)
    assert intercept == pytest.approx(ref.intercept_[0], abs=1e-4)
    rng = np.random.default_rng(6)
    logit = rng.normal(0, 1.5, 40_000)
    y = (rng.random(logit.size) < 1 / (1 + np.exp(-logit))).astype(int)
    assert M.calibration_fit(y, 1 / (1 + np.exp(-logit)))[0] == pytest.approx(1.0, abs=0.05)   # calibrated
    assert M.calibration_fit(y, 1 / (1 + np.exp(-2 * logit)))[0] == pytest.approx(0.5, abs=0.03)  # over-confident
    separable = M.calibration_fit(np.r_[np.zeros(10), np.ones(10)], np.r_[np.full(10, 0.2), np.full(10, 0.8)])
    assert all(math.isnan(v) for v in separable)                # perfect separation: slope unbounded -> NaN


def test_reliability_bins_partition_every_row():
    y, s = _data(seed=7)
    b = M.reliability_bins(y, np.r_[s[:-2], 0.0, 1.0], 10)
    assert b["n"].sum() == y.size and len(b) == 10
    full = b[b["n"] > 0]
    assert ((full["mean_score"] >= full["bin_lo"]) & (full["mean_score"] <= full["bin_hi"])).all()
    assert M.expected_calibration_error(b) >= 0


def test_patient_rule_is_any_vertebra_for_truth_and_prediction():
    pred = pd.DataFrame({"patient_id": ["p1"] * 3 + ["p2"] * 2 + ["p3"],
                         "site": ["A"] * 6,
                         "y_true": [0, 1, 0, 0, 0, 0],
                         "score": [0.1, 0.3, 0.2, 0.7, 0.1, 0.5],
                         "age_at_ct": [70, 70, 70, 61, 62, 50]})
    pt = M.patient_table(pred, threshold=0.5).set_index("patient_id")
    assert pt.loc["p1", "y_true"] == 1 and pt.loc["p1", "y_pred"] == 0       # one positive vertebra -> positive
    assert pt.loc["p2", "y_true"] == 0 and pt.loc["p2", "y_pred"] == 1       # one flagged vertebra -> flagged
    assert pt.loc["p3", "y_pred"] == 1                                       # score == threshold is positive
    assert pt.loc["p1", "score"] == 0.3 and pt.loc["p2", "n_vertebrae"] == 2 and pt.loc["p2", "age_at_ct"] == 61


def test_age_bands_and_subgroup_table():
    assert list(M.age_band([45, 60, 69.9, 70, 85], (60, 70, 80))) == ["<60", "60-69", "60-69", "70-79", ">=80"]
    pts = pd.DataFrame({"sex": ["F", "F", "M", "M"], "y_true": [1, 0, 1, 1], "y_pred": [1, 0, 0, 1],
                        "score": [0.9, 0.1, 0.2, 0.8]})
    tab = M.subgroup_table(pts, "sex").set_index("value")
    assert tab.loc["F", "sen"] == 100.0 and tab.loc["M", "sen"] == 50.0 and math.isnan(tab.loc["M", "spe"])


def test_bootstrap_resamples_whole_patients_within_sites():
    # patients own 1-4 vertebrae; site A has 5 patients, site B has 3
    counts = {"a1": 1, "a2": 2, "a3": 3, "a4": 4, "a5": 2, "b1": 3, "b2": 1, "b3": 4}
    pid = np.array([p for p, c in counts.items() for _ in range(c)])
    site = np.array([p[0].upper() for p in pid])
    rs = M.PatientResampler(pid, site)
    rng = np.random.default_rng(0)
    saw_duplicate = False
    for _ in range(50):
        idx = rs.draw(rng)
        drawn = pd.Series(pid[idx]).value_counts()
        for p, k in drawn.items():
            assert k % counts[p] == 0                            # a patient comes with all of its vertebrae
        per_site = {s: sum(k // counts[p] for p, k in drawn.items() if p[0] == s.lower()) for s in "AB"}
        assert per_site == {"A": 5, "B": 3}                      # patient count kept per site (stratified)
        saw_duplicate |= any(k > counts[p] for p, k in drawn.items())
    assert saw_duplicate                                         # with replacement
    with pytest.raises(ValueError, match="several strata"):
        M.PatientResampler(["x", "x"], ["A", "B"])


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    y, s = _data(n=400, seed=8)
    pid = np.repeat(np.arange(100), 4)
    site = np.where(pid < 60, "A", "B")

    def stat(idx: np.ndarray) -> dict[str, float]:
        return M.score_metrics(y[idx], s[idx], 0.5)

    point = stat(np.arange(y.size))
    ci = M.bootstrap_ci(pid, site, stat, n_boot=200, seed=1)
    for k in ("acc", "sen", "spe", "f1", "auroc", "auprc"):
        lo, hi = ci[k].lo, ci[k].hi
        assert lo <= point[k] <= hi and hi - lo > 0 and ci[k].n_undefined == 0 and ci[k].n_defined == 200
    assert ci == M.bootstrap_ci(pid, site, stat, n_boot=200, seed=1)
    assert ci != M.bootstrap_ci(pid, site, stat, n_boot=200, seed=2)


def test_bootstrap_ci_counts_undefined_replicates_and_uses_the_defined_ones_only():
    # 12 patients, 1 positive: a resample misses it with probability (11/12)^12 ~ 0.35 -> AUROC/SEN NaN there
    pid = np.arange(12)
    site = np.full(12, "A")
    y = np.r_[1, np.zeros(11, dtype=int)]
    s = np.linspace(0.9, 0.0, 12)                                      # the positive ranks first: AUROC 1 when defined

    def stat(idx):
        return {"auroc": M.auroc(y[idx], s[idx]), "acc": M.score_metrics(y[idx], s[idx], 0.5)["acc"]}

    ci = M.bootstrap_ci(pid, site, stat, n_boot=400, seed=0)
    reps = M.bootstrap_replicates(M.PatientResampler(pid, site), stat, 400, 0)["auroc"]
    n_nan = int(np.isnan(reps).sum())
    assert 80 < n_nan < 220 and ci["auroc"].n_undefined == n_nan and ci["auroc"].n_defined == 400 - n_nan
    assert (ci["auroc"].lo, ci["auroc"].hi) == (1.0, 1.0)            # from the defined replicates only
    assert ci["acc"].n_undefined == 0
    strict = M.bootstrap_ci(pid, site, stat, n_boot=400, seed=0, min_defined_share=0.9)
    assert math.isnan(strict["auroc"].lo) and math.isnan(strict["auroc"].hi)
    assert f"defined in {400 - n_nan} of 400" in strict["auroc"].reason and strict["acc"].reason is None
    assert not math.isnan(strict["acc"].lo)


def test_paired_bootstrap_identical_models_give_zero_ci_and_better_model_a_ci_above_zero():
    rng = np.random.default_rng(9)
    pid = np.arange(300)
    site = np.where(pid < 200, "A", "B")
    y = rng.integers(0, 2, pid.size)
    good = np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.15, y.size), 0, 1)
    bad = rng.random(y.size)

    def stat_of(score):
        return lambda idx: {"auroc": M.auroc(y[idx], score[idx]),
                            "f1": M.score_metrics(y[idx], score[idx], 0.5)["f1"]}

    same = M.paired_bootstrap(pid, site, stat_of(good), stat_of(good), n_boot=200, seed=0)
    assert all(v["diff"] == 0.0 and v["lo"] == v["hi"] == 0.0 and v["n_undefined"] == 0 for v in same.values())
    assert all("p" not in v for v in same.values())                   # no sign-fraction "p" any more
    better = M.paired_bootstrap(pid, site, stat_of(good), stat_of(bad), n_boot=200, seed=0)
    assert better["auroc"]["diff"] > 0.3 and better["auroc"]["lo"] > 0
    worse = M.paired_bootstrap(pid, site, stat_of(bad), stat_of(good), n_boot=200, seed=0)
    assert worse["f1"]["diff"] < 0 and worse["f1"]["hi"] < 0


def _outputs(score, t=0.5):
    return np.column_stack([M.rank01(score), (np.asarray(score) >= t).astype(float)])


def _decision_stat(y):
    return lambda out: {k: v for k, v in M.decision_metrics(y, out[:, 0], out[:, 1]).items() if k in ("auroc", "f1")}


def test_permutation_p_is_one_for_identical_models_and_small_for_a_dominated_one():
    rng = np.random.default_rng(4)
    pid = np.arange(120)
    y = rng.integers(0, 2, pid.size)
    good = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, y.size), 0, 1)
    bad = rng.random(y.size)
    same = M.paired_permutation(pid, _decision_stat(y), _outputs(good), _outputs(good), n_perm=200, seed=0)
    assert all(v["p_perm"] == 1.0 and v["diff"] == 0.0 and v["n_perm"] == 200 for v in same.values())
    dom = M.paired_permutation(pid, _decision_stat(y), _outputs(good), _outputs(bad), n_perm=500, seed=0)
    assert dom["auroc"]["diff"] > 0.2 and dom["auroc"]["p_perm"] == pytest.approx(1 / 501)   # never 0
    assert dom["f1"]["p_perm"] < 0.01
    again = M.paired_permutation(pid, _decision_stat(y), _outputs(good), _outputs(bad), n_perm=500, seed=0)
    assert again == dom                                                # seeded
    # the decision metrics equal the threshold metrics of the raw scores, AUROC that of the raw scores
    assert M.decision_metrics(y, *_outputs(good).T)["f1"] == M.score_metrics(y, good, 0.5)["f1"]
    assert M.decision_metrics(y, *_outputs(good).T)["auroc"] == pytest.approx(M.auroc(y, good), abs=1e-12)


def test_permutation_p_is_uniform_under_the_null():
    """Two exchangeable models on random data: P(p_perm <= a) ~ a (a calibrated test, neither liberal nor dead)."""
    rng = np.random.default_rng(11)
    ps = []
    for _ in range(200):
        y = rng.integers(0, 2, 40)
        latent = rng.normal(size=40) + y
        a, b = latent + rng.normal(size=40), latent + rng.normal(size=40)     # same model, independent noise
        stat = (lambda yy: lambda out: {"auroc": M.auroc(yy, out[:, 0])})(y)
        ps.append(M.paired_permutation(np.arange(40), stat, a[:, None], b[:, None], n_perm=99, seed=int(rng.integers(1 << 30)))
                  ["auroc"]["p_perm"])
    ps = np.asarray(ps)
    for alpha in (0.1, 0.3, 0.5):
        assert abs((ps <= alpha).mean() - alpha) < 0.1
    assert ps.min() < 0.1 and ps.max() > 0.9


def test_permutation_swaps_whole_patients():
    # one patient owns all the signal rows: swapping per patient (not per row) keeps the p-value large
    pid = np.r_[np.zeros(20, dtype=int), np.arange(1, 21)]
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int), np.tile([1, 0], 10)]
    a = np.r_[np.ones(10), np.zeros(10), np.full(20, 0.5)]
    b = np.full(40, 0.5)
    stat = lambda out: {"auroc": M.auroc(y, out[:, 0])}             # noqa: E731
    res = M.paired_permutation(pid, stat, a[:, None], b[:, None], n_perm=400, seed=1)
    assert res["auroc"]["p_perm"] > 0.3                               # one patient's coin decides the sign
    with pytest.raises(ValueError, match="same rows"):
        M.paired_permutation(pid, stat, a[:, None], b[:20, None], n_perm=5, seed=1)


def test_mcnemar_exact_binomial():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    r = M.mcnemar(a, b)
    # two-sided exact: 2 * P(X <= 2), X ~ Bin(12, 1/2)
    expected = 2 * sum(math.comb(12, k) for k in range(3)) / 2 ** 12
    assert (r["b"], r["c"]) == (10, 2) and r["p"] == pytest.approx(expected)
    assert M.mcnemar(a, a)["p"] == 1.0
    big = M.mcnemar(np.r_[np.ones(3000, bool), np.zeros(2000, bool)], np.zeros(5000, bool))
    assert big["p"] == 0.0 or big["p"] < 1e-300                 # no overflow on large discordant counts
