"""Patient-level bootstrap (METHOD.md §6): resampling, percentile intervals, paired differences, McNemar.

Patients are resampled with replacement within each site (stratum), a patient bringing all
of their vertebrae. Pure numpy; the statistics come from :mod:`osteo_model.metrics`.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd


class PatientResampler:
    """Draws bootstrap replicates of row indices by resampling patients within strata.

    Args:
        patient_ids: one patient id per row (a patient may own several rows, e.g. vertebrae).
        strata: one stratum per row (the site); a patient must lie in one stratum.
    """

    def __init__(self, patient_ids: Sequence, strata: Sequence) -> None:
        pid = pd.Series(np.asarray(patient_ids, dtype=object))
        codes, uniques = pd.factorize(pid, sort=True)
        self.n_rows = codes.size
        self.order = np.argsort(codes, kind="stable")                 # rows grouped by patient
        self.counts = np.bincount(codes, minlength=len(uniques))
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        first_row = self.order[self.starts]
        patient_stratum = np.asarray(strata, dtype=object)[first_row]
        per_row = pd.Series(np.asarray(strata, dtype=object)).groupby(codes).nunique()
        if (per_row > 1).any():
            raise ValueError("a patient appears in several strata (sites): fix the site column")
        self.groups = [np.flatnonzero(patient_stratum == s) for s in pd.unique(patient_stratum)]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one replicate: per stratum as many patients as it has, drawn with replacement."""
        picked = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in self.groups])
        lengths = self.counts[picked]
        offsets = np.repeat(self.starts[picked] - (np.cumsum(lengths) - lengths), lengths)
        return self.order[offsets + np.arange(lengths.sum())]


Statistic = Callable[[np.ndarray], Mapping[str, float]]


def bootstrap_replicates(resampler: PatientResampler, statistic: Statistic, n_boot: int,
                         seed: int) -> dict[str, np.ndarray]:
    """Evaluate ``statistic(row_indices)`` on ``n_boot`` patient-level replicates (fixed seed)."""
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for k, v in statistic(resampler.draw(rng)).items():
            reps.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in reps.items()}


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none is finite)."""
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(r, a)), float(np.quantile(r, 1.0 - a))


def bootstrap_ci(patient_ids: Sequence, strata: Sequence, statistic: Statistic, n_boot: int, seed: int,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Patient-level bootstrap percentile CIs of every value returned by ``statistic(row_indices)``."""
    reps = bootstrap_replicates(PatientResampler(patient_ids, strata), statistic, n_boot, seed)
    return {k: percentile_ci(v, level) for k, v in reps.items()}


def paired_bootstrap(patient_ids: Sequence, strata: Sequence, stat_a: Statistic, stat_b: Statistic,
                     n_boot: int, seed: int, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Paired bootstrap of ``stat_a - stat_b`` on the same resampled patients.

    Both statistics see the same row indices in every replicate. The two-sided
    p-value is ``min(1, 2 * (min(#{d <= 0}, #{d >= 0}) + 1) / (B + 1))`` over
    the finite replicate differences d (so identical models give p = 1 and a
    model better in every replicate gives p = 2 / (B + 1)).

    Returns:
        Per key: ``diff`` (point difference on all rows), ``lo``, ``hi`` (percentile CI), ``p``.
    """
    rs = PatientResampler(patient_ids, strata)
    everything = np.arange(rs.n_rows)
    point_a, point_b = stat_a(everything), stat_b(everything)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {k: [] for k in point_a}
    for _ in range(n_boot):
        idx = rs.draw(rng)
        a, b = stat_a(idx), stat_b(idx)
        for k in diffs:
            diffs[k].append(a[k] - b[k])
    out = {}
    for k, d in diffs.items():
        arr = np.asarray(d, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        lo, hi = percentile_ci(arr, level)
        if arr.size:
            tail = min(int((arr <= 0).sum()), int((arr >= 0).sum()))
            p = min(1.0, 2.0 * (tail + 1) / (arr.size + 1))
        else:
            p = float("nan")
        out[k] = {"diff": float(point_a[k] - point_b[k]), "lo": lo, "hi": hi, "p": p}
    return out


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test on paired per-patient correctness (two-sided binomial on discordant pairs).

    Returns ``b`` (A right, B wrong), ``c`` (A wrong, B right) and ``p``; p = 1 without discordant pairs.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    bb = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != bb.shape:
        raise ValueError("McNemar needs one correctness flag per patient for both models")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n, k = b + c, min(b, c)
    if n == 0:
        return {"b": 0, "c": 0, "p": 1.0}
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (no underflow for large n)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    cdf = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return {"b": b, "c": c, "p": float(min(1.0, 2.0 * cdf))}
