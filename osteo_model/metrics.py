"""Evaluation metrics as pure functions (METHOD.md §6, paper §3.1).

Everything here takes numpy arrays or a pandas frame and returns numbers; no
I/O, no torch, no global state. :mod:`osteo_model.evaluate` assembles them
into the per-site report.

Conventions:

* Labels are 0/1 (1 = osteoporosis), scores are in [0, 1]; a prediction is
  positive iff ``score >= threshold`` (the rule of ``select_threshold``).
* ACC, SEN, SPE, F1, PPV, NPV are **percentages** (0-100); AUROC, AUPRC, Brier,
  calibration and Pearson r are on their natural scale; MAE is in the unit of
  the BMD columns (g/cm2).
* Undefined values are ``NaN``, never a made-up 0 or 100. The rules:
  SEN is NaN without true positives in the truth (TP + FN = 0); SPE is NaN
  without true negatives (TN + FP = 0); PPV is NaN when nothing is predicted
  positive, NPV when nothing is predicted negative; F1 = 2TP / (2TP + FP + FN)
  is NaN only when that denominator is 0 (no positive in truth or prediction);
  ACC is NaN on an empty set; AUROC / AUPRC / calibration are NaN when a class
  is missing; Pearson r is NaN with fewer than 2 points or zero variance.
* Patient level (METHOD.md §6): a patient is positive if ANY of their
  vertebrae is positive, for the truth and for the prediction; the patient
  score is the maximum vertebra score, so ``max score >= t`` is exactly "any
  vertebra predicted positive".
* Bootstrap (:mod:`osteo_model.bootstrap`): patients are resampled with replacement within each site
  (stratum), a patient bringing all of their vertebrae; percentile intervals of the replicates where
  the statistic is defined, with the count of undefined ones (withheld below ``evaluate.min_defined_share``).
  Paired comparisons: the bootstrap CI of the difference plus a paired permutation p-value
  (``p_perm``: the two models' outputs swapped within patients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from osteo_model.bootstrap import (Interval, PatientResampler, Statistic, bootstrap_ci,  # noqa: F401
                                   bootstrap_replicates, interval, mcnemar, paired_bootstrap, paired_permutation,
                                   percentile_ci)

BINARY_KEYS: tuple[str, ...] = ("acc", "sen", "spe", "f1", "ppv", "npv")


def _arrays(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel().astype(np.int64)
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but score has {s.size}: pass one score per label")
    return y, s


def _ratio(num: float, den: float, scale: float = 100.0) -> float:
    return float(scale * num / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary confusion matrix (positive = osteoporosis)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
    """Confusion counts of 0/1 truth against 0/1 predictions."""
    y, p = _arrays(y_true, y_pred)
    p = p.astype(np.int64)
    return Confusion(tp=int(((y == 1) & (p == 1)).sum()), fp=int(((y == 0) & (p == 1)).sum()),
                     tn=int(((y == 0) & (p == 0)).sum()), fn=int(((y == 1) & (p == 0)).sum()))


def binary_metrics(c: Confusion) -> dict[str, float]:
    """ACC, SEN, SPE, F1, PPV, NPV in percent from confusion counts (NaN rules in the module docstring)."""
    return {
        "acc": _ratio(c.tp + c.tn, c.n),
        "sen": _ratio(c.tp, c.tp + c.fn),
        "spe": _ratio(c.tn, c.tn + c.fp),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "ppv": _ratio(c.tp, c.tp + c.fp),
        "npv": _ratio(c.tn, c.tn + c.fn),
    }


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0                                   # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count 1/2).

    Returns NaN when either class is absent.
    """
    y, s = _arrays(y_true, score)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _pr_steps(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP, FP and the threshold at each distinct score, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]                             # last row of each run of equal scores
    return np.cumsum(ys == 1)[last], np.cumsum(ys == 0)[last], ss[last]


def auprc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k (no interpolation).

    Returns NaN when either class is absent (with no negatives AP is trivially 1;
    we report it as undefined like AUROC).
    """
    y, s = _arrays(y_true, score)
    n1 = int((y == 1).sum())
    if n1 == 0 or n1 == y.size:
        return float("nan")
    tp, fp, _ = _pr_steps(y, s)
    precision, recall = tp / (tp + fp), tp / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_points(y_true: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """ROC curve at every distinct score: columns ``threshold``, ``fpr``, ``tpr`` from (0, 0) to (1, 1)."""
    y, s = _arrays(y_true, score)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    tp, fp, thr = _pr_steps(y, s)
    return pd.DataFrame({"threshold": np.r_[np.inf, thr],
                         "fpr": np.r_[0.0, fp / n0] if n0 else np.nan,
                         "tpr": np.r_[0.0, tp / n1] if n1 else np.nan})


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays (NaN: < 2 points or zero variance)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error (NaN on empty input)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.abs(x - y).mean()) if x.size else float("nan")


def brier(y_true: np.ndarray, score: np.ndarray) -> float:
    """Mean squared difference between score and outcome (NaN on empty input)."""
    y, s = _arrays(y_true, score)
    return float(((s - y) ** 2).mean()) if y.size else float("nan")


def calibration_fit(y_true: np.ndarray, score: np.ndarray, eps: float = 1e-6,
                    max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Logistic recalibration ``logit P(y=1) = a + b * logit(score)``: returns ``(slope b, intercept a)``.

    Unpenalised maximum likelihood by Newton-Raphson. A perfectly calibrated
    model has b = 1, a = 0; b < 1 means over-confident scores. Scores are
    clipped to [eps, 1 - eps] before the logit. Returns ``(NaN, NaN)`` when a
    class is missing, the scores are constant, or the fit does not converge
    (perfect separation makes the likelihood unbounded).
    """
    y, s = _arrays(y_true, score)
    nan = (float("nan"), float("nan"))
    if y.size == 0 or y.min() == y.max():
        return nan
    x = np.log(np.clip(s, eps, 1 - eps)) - np.log1p(-np.clip(s, eps, 1 - eps))
    if np.ptp(x) == 0:
        return nan
    X = np.column_stack([np.ones_like(x), x])                         # (n, 2): intercept, logit(score)
    beta = np.zeros(2)
    for _ in range(max_iter):
        p = np.exp(-np.logaddexp(0.0, -(X @ beta)))                  # stable sigmoid
        w = p * (1 - p)
        hess = X.T @ (X * w[:, None])
        try:
            step = np.linalg.solve(hess, X.T @ (y - p))
        except np.linalg.LinAlgError:
            return nan
        beta = beta + step
        if not np.isfinite(beta).all():
            return nan
        if np.abs(step).max() < tol * (1 + np.abs(beta).max()):
            return float(beta[1]), float(beta[0])
    return nan


def reliability_bins(y_true: np.ndarray, score: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width score bins on [0, 1]: ``bin_lo``, ``bin_hi``, ``n``, ``mean_score``, ``frac_pos``.

    The last bin is closed on the right; empty bins have ``n = 0`` and NaN means.
    """
    y, s = _arrays(y_true, score)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_s = np.bincount(idx, weights=s, minlength=n_bins) / n
        frac = np.bincount(idx, weights=y, minlength=n_bins) / n
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "n": n, "mean_score": mean_s, "frac_pos": frac})


def expected_calibration_error(bins: pd.DataFrame) -> float:
    """Sample-weighted mean |frac_pos - mean_score| over the non-empty bins of :func:`reliability_bins`."""
    b = bins[bins["n"] > 0]
    return float((b["n"] * (b["frac_pos"] - b["mean_score"]).abs()).sum() / b["n"].sum()) if len(b) else float("nan")


RANK_METRICS: tuple[str, ...] = ("acc", "sen", "spe", "f1", "ppv", "npv", "auroc", "auprc")


def decision_metrics(y_true: np.ndarray, rank: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """:data:`RANK_METRICS` from 0/1 decisions and a ranking score (AUROC/AUPRC depend on the order only).

    What a paired permutation test can swap between two models: their decisions at their own
    thresholds and their scores' ranks (raw scores of two models need not share a scale).
    """
    y, r = _arrays(y_true, rank)
    out = binary_metrics(confusion(y, np.asarray(y_pred).ravel()))
    out.update(auroc=auroc(y, r), auprc=auprc(y, r))
    return out


def rank01(score: np.ndarray) -> np.ndarray:
    """Average ranks scaled to (0, 1]: a monotone map of the scores (AUROC/AUPRC unchanged)."""
    s = np.asarray(score, dtype=np.float64).ravel()
    return _average_ranks(s) / max(1, s.size)


def score_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold metrics (percent) plus AUROC, AUPRC and Brier for one set of rows."""
    y, s = _arrays(y_true, score)
    out = binary_metrics(confusion(y, s >= threshold))
    out.update(auroc=auroc(y, s), auprc=auprc(y, s), brier=brier(y, s))
    return out


# --------------------------------------------------------------------------- patient level

def patient_table(pred: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Aggregate vertebra predictions to one row per patient (any-vertebra rule).

    Args:
        pred: one row per vertebra with ``patient_id``, ``site``, ``y_true``, ``score``; optional
            ``sex``, ``age_at_ct``, ``scanner`` (first row's value; age = youngest age at CT).
        threshold: operating threshold of the model (positive iff score >= threshold).

    Returns:
        ``patient_id``, ``site``, ``n_vertebrae``, ``y_true`` (max), ``score`` (max), ``y_pred``
        plus the optional descriptors, sorted by ``patient_id``.
    """
    agg: dict[str, tuple[str, str]] = {"site": ("site", "first"), "n_vertebrae": ("y_true", "size"),
                                       "y_true": ("y_true", "max"), "score": ("score", "max")}
    for col, how in (("sex", "first"), ("age_at_ct", "min"), ("scanner", "first"), ("contrast", "max")):
        if col in pred.columns:
            agg[col] = (col, how)
    out = pred.groupby("patient_id", sort=True).agg(**agg).reset_index()
    out["y_true"] = out["y_true"].astype(np.int64)
    out["y_pred"] = (out["score"] >= threshold).astype(np.int64)
    return out


def age_band(age: pd.Series | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Label ages by band edges, e.g. edges (60, 70, 80) -> "<60", "60-69", "70-79", ">=80"."""
    e = [float(v) for v in edges]
    labels = [f"<{e[0]:g}"] + [f"{lo:g}-{hi - 1:g}" for lo, hi in zip(e[:-1], e[1:])] + [f">={e[-1]:g}"]
    a = np.asarray(age, dtype=np.float64)
    return np.asarray(labels, dtype=object)[np.searchsorted(e, a, side="right")]


def subgroup_table(patients: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """Patient-level metrics per value of ``attribute`` (columns ``y_true``, ``y_pred``, ``score`` needed).

    Returns one row per value: ``attribute``, ``value``, ``n``, ``n_pos``, ACC/SEN/SPE/F1 (percent), ``auroc``.
    """
    rows = []
    for value, g in patients.groupby(attribute, sort=True):
        m = binary_metrics(confusion(g["y_true"].to_numpy(), g["y_pred"].to_numpy()))
        rows.append({"attribute": attribute, "value": str(value), "n": len(g), "n_pos": int(g["y_true"].sum()),
                     "acc": m["acc"], "sen": m["sen"], "spe": m["spe"], "f1": m["f1"],
                     "auroc": auroc(g["y_true"].to_numpy(), g["score"].to_numpy())})
    return pd.DataFrame(rows, columns=["attribute", "value", "n", "n_pos", "acc", "sen", "spe", "f1", "auroc"])


# --------------------------------------------------------------------------- bootstrap


