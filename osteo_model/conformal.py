"""Split-conformal prediction intervals for predicted BMD (g/cm2).

Split conformal (Vovk et al. 2005; Lei et al. 2018, Alg. 2): with n calibration
(validation) residuals R_i = |y_i - yhat_i| and miscoverage alpha = 1 - level,

    k = ceil((n + 1) * (1 - alpha)),     q = R_(k)   (the k-th smallest residual)

and the interval of a new prediction is [yhat - q, yhat + q]. If the calibration
and test points are exchangeable, P(y in interval) >= 1 - alpha (and < 1 - alpha
+ 1 / (n + 1) without ties). If k > n the finite-sample quantile is +inf: too few
calibration points for that level, which is :class:`ConformalError` here rather
than an infinite interval. The fitted :class:`ConformalInterval` is a small dict
(``to_dict``) stored with the model version; fit it on the validation split and
measure :func:`coverage` on the test split.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np


class ConformalError(ValueError):
    """Residuals or level cannot give a finite, valid interval (the message says what to change)."""


@dataclass(frozen=True)
class ConformalInterval:
    """A fitted symmetric split-conformal interval: yhat +- half_width (g/cm2)."""

    level: float        # target coverage 1 - alpha
    half_width: float   # q, the k-th smallest absolute calibration residual
    n_calibration: int  # n
    rank: int           # k = ceil((n + 1) * level)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConformalInterval":
        return cls(level=float(d["level"]), half_width=float(d["half_width"]),
                   n_calibration=int(d["n_calibration"]), rank=int(d["rank"]))


def conformal_rank(n: int, level: float) -> int:
    """k = ceil((n + 1) * level), the finite-sample corrected rank (1-based)."""
    if not 0.0 < level < 1.0:
        raise ConformalError(f"interval level {level} must lie in (0, 1): fix screen.interval_level")
    # the small epsilon keeps (n + 1) * level exactly integral from rounding up by float error
    return int(math.ceil((n + 1) * level - 1e-9))


def fit_conformal(y_true: np.ndarray, y_pred: np.ndarray, level: float) -> ConformalInterval:
    """Fit on calibration (validation) pairs: q = k-th smallest |y - yhat|.

    Args:
        y_true: (n,) measured BMD (g/cm2).
        y_pred: (n,) predicted BMD (g/cm2), same rows.
        level: target coverage, e.g. 0.90.

    Raises:
        ConformalError: shapes differ, non-finite values, or n too small (k > n) for ``level``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ConformalError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    bad = int((~np.isfinite(y_true) | ~np.isfinite(y_pred)).sum())
    if bad:
        raise ConformalError(f"{bad} calibration rows are not finite: drop or fix them before fitting")
    n = y_true.size
    k = conformal_rank(n, level)
    if k > n:
        need = int(math.ceil(level / (1.0 - level) - 1e-9))   # smallest n with ceil((n+1) level) <= n
        raise ConformalError(f"{n} calibration residuals are too few for a {level:.0%} interval "
                             f"(rank {k} > n): use at least {need} validation vertebrae")
    r = np.sort(np.abs(y_true - y_pred))             # (n,) ascending
    return ConformalInterval(level=float(level), half_width=float(r[k - 1]), n_calibration=n, rank=k)


def predict_interval(model: ConformalInterval, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds, each (m,) g/cm2, of new predictions ``y_pred`` (m,)."""
    y = np.asarray(y_pred, dtype=float)
    return y - model.half_width, y + model.half_width


def coverage(y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of ``y_true`` inside the closed intervals [lower, upper]."""
    y, lo, hi = (np.asarray(a, dtype=float) for a in (y_true, lower, upper))
    if not (y.shape == lo.shape == hi.shape) or y.size == 0:
        raise ConformalError(f"coverage needs equal, non-empty shapes; got {y.shape}, {lo.shape}, {hi.shape}")
    return float(np.mean((y >= lo) & (y <= hi)))
