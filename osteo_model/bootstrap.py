"""Patient-level bootstrap (METHOD.md §6): resampling, percentile intervals, paired differences,
the paired permutation test, McNemar.

Patients are resampled with replacement within each site (stratum), a patient bringing all
of their vertebrae. Pure numpy; the statistics come from :mod:`osteo_model.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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


@dataclass(frozen=True)
class Interval:
    """A percentile CI and how many replicates it rests on.

    Attributes:
        lo / hi: the bounds (NaN when the interval is withheld, see ``reason``).
        n_defined: replicates where the statistic was finite (the interval's sample).
        n_undefined: replicates where it was NaN (e.g. a resample with one class for AUROC);
            they are left out of the quantiles, never counted as 0 or 1.
        reason: why the interval is withheld (``None`` when it is reported).
    """

    lo: float
    hi: float
    n_defined: int
    n_undefined: int
    reason: str | None = None


def interval(replicates: np.ndarray, level: float = 0.95, min_defined_share: float = 0.0) -> Interval:
    """Percentile interval of the finite replicates, withheld (NaN) below ``min_defined_share`` of them defined.

    A CI computed from the few replicates where a statistic happens to be defined describes those
    resamples, not the test set: below the share it is reported as missing with the counts.
    """
    r = np.asarray(replicates, dtype=np.float64)
    ok = np.isfinite(r)
    n_def, n_undef = int(ok.sum()), int((~ok).sum())
    if n_def == 0:
        return Interval(float("nan"), float("nan"), 0, n_undef, f"undefined in all {r.size} replicates")
    if n_def < min_defined_share * r.size:
        return Interval(float("nan"), float("nan"), n_def, n_undef,
                        f"defined in {n_def} of {r.size} replicates (< evaluate.min_defined_share "
                        f"{min_defined_share:g})")
    lo, hi = percentile_ci(r[ok], level)
    return Interval(lo, hi, n_def, n_undef)


def bootstrap_ci(patient_ids: Sequence, strata: Sequence, statistic: Statistic, n_boot: int, seed: int,
                 level: float = 0.95, min_defined_share: float = 0.0) -> dict[str, Interval]:
    """Patient-level bootstrap percentile CIs of every value returned by ``statistic(row_indices)``.

    Returns:
        Per key an :class:`Interval` (``lo``, ``hi``, ``n_defined``, ``n_undefined``, ``reason``).
    """
    reps = bootstrap_replicates(PatientResampler(patient_ids, strata), statistic, n_boot, seed)
    return {k: interval(v, level, min_defined_share) for k, v in reps.items()}


def paired_bootstrap(patient_ids: Sequence, strata: Sequence, stat_a: Statistic, stat_b: Statistic,
                     n_boot: int, seed: int, level: float = 0.95,
                     min_defined_share: float = 0.0) -> dict[str, dict[str, Any]]:
    """Paired bootstrap CI of ``stat_a - stat_b`` on the same resampled patients.

    Both statistics see the same row indices in every replicate. This gives the interval of the
    difference only; its p-value is the permutation test :func:`paired_permutation` (the share of
    bootstrap differences on one side of 0 is not a p-value under any null).

    Returns:
        Per key: ``diff`` (point difference on all rows), ``lo``, ``hi`` (percentile CI of the finite
        replicate differences), ``n_undefined`` (replicates where the difference was NaN) and, when
        the CI is withheld, ``ci_reason``.
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
    out: dict[str, dict[str, Any]] = {}
    for k, d in diffs.items():
        ci = interval(np.asarray(d, dtype=np.float64), level, min_defined_share)
        out[k] = {"diff": float(point_a[k] - point_b[k]), "lo": ci.lo, "hi": ci.hi, "n_undefined": ci.n_undefined}
        if ci.reason:
            out[k]["ci_reason"] = ci.reason
    return out


OutputStatistic = Callable[[np.ndarray], Mapping[str, float]]


def paired_permutation(patient_ids: Sequence, statistic: OutputStatistic, out_a: np.ndarray, out_b: np.ndarray,
                       n_perm: int, seed: int, tol: float = 1e-12) -> dict[str, dict[str, float]]:
    """Two-sided paired permutation test of ``statistic(out_a) - statistic(out_b)`` (H0: exchangeable models).

    Under H0 the two models' outputs for a patient are exchangeable, so each replicate swaps
    A's and B's outputs for a random half of the patients (all rows of a patient together: a
    patient stays in its site, so every site keeps its patients and the null keeps the site mix).
    ``p_perm = (1 + #{|d*| >= |d|}) / (1 + n_defined)`` over the replicates d* where the difference
    is defined (Phipson & Smyth 2010: never 0; identical models give exactly 1).

    Args:
        patient_ids: one patient id per row.
        statistic: outputs ``(n_rows, m)`` -> metrics; it sees A's outputs, B's, or a row-wise mix.
        out_a / out_b: the two models' outputs on the same rows ``(n_rows, m)``, on exchangeable
            scales (e.g. per-model score ranks and 0/1 decisions, not raw scores of different units).
        n_perm: permutation replicates; seed: their RNG seed.

    Returns:
        Per key: ``diff``, ``p_perm``, ``n_perm`` (defined replicates), ``n_undefined``.
    """
    a, b = np.asarray(out_a, dtype=np.float64), np.asarray(out_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outputs differ in shape {a.shape} vs {b.shape}: score both models on the same rows")
    codes, uniques = pd.factorize(pd.Series(np.asarray(patient_ids, dtype=object)))
    pa, pb = statistic(a), statistic(b)
    observed = {k: pa[k] - pb[k] for k in pa}
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {k: [] for k in observed}
    for _ in range(n_perm):
        swap = (rng.integers(0, 2, len(uniques)) == 1)[codes]          # (n_rows,) one coin per patient
        xa, xb = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
        sa, sb = statistic(xa), statistic(xb)
        for k in reps:
            reps[k].append(sa[k] - sb[k])
    out = {}
    for k, d in reps.items():
        arr = np.asarray(d, dtype=np.float64)
        ok = np.isfinite(arr)
        obs = float(observed[k])
        if not math.isfinite(obs) or not ok.any():
            p = float("nan")
        else:
            p = float((1 + int((np.abs(arr[ok]) >= abs(obs) - tol).sum())) / (1 + int(ok.sum())))
        out[k] = {"diff": obs, "p_perm": p, "n_perm": int(ok.sum()), "n_undefined": int((~ok).sum())}
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
