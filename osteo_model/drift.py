"""Drift of a screening batch vs the model's training distribution: PSI and two-sample KS per feature.

The reference is a *summary* small enough to store with a model version
(``DriftReference.to_dict`` is plain JSON): per numeric feature, the training
quantiles at ``bins`` equal-probability cuts plus a finer quantile grid for KS;
per categorical feature (scanner, contrast) the category shares.

- **PSI** (population stability index) over the reference's quantile bins
  (open-ended outer bins): PSI = sum_b (p_b - r_b) ln(p_b / r_b), shares floored
  at ``EPS`` so an empty bin stays finite. Customary reading: < 0.1 stable,
  0.1-0.25 moderate shift, >= 0.25 shifted.
- **KS**: D = sup_x |F_ref(x) - F_batch(x)|, F_ref the piecewise-linear CDF
  through the stored quantile grid (exact at its knots; error <= 1 / grid), and
  the asymptotic two-sample p-value with n_eff = n m / (n + m) (Kolmogorov
  distribution, as scipy.stats.ks_2samp's ``method='asymp'``).

:func:`drift_verdict` turns the per-feature statistics into ok / warn / drift
against :class:`osteo_config.screen.DriftConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import kolmogorov

from osteo_config.screen import DriftConfig

EPS = 1e-4            # floor of a bin share in PSI (an empty bin would be ln 0)
KS_GRID = 101         # quantile knots stored per numeric feature for KS (0, 1, ..., 100 %)


class DriftError(ValueError):
    """A feature is missing, empty or of the wrong kind (the message names it and the fix)."""


@dataclass(frozen=True)
class FeatureReference:
    """Stored summary of one feature's training distribution."""

    name: str
    kind: str                          # "numeric" | "categorical"
    n: int                             # training values summarised
    edges: tuple[float, ...] = ()      # numeric: bins - 1 inner cut points (quantiles)
    shares: tuple[float, ...] = ()     # numeric: training share per bin (bins); categorical: per category
    grid: tuple[float, ...] = ()       # numeric: quantiles at KS_GRID equal probabilities
    categories: tuple[str, ...] = ()   # categorical: category labels


@dataclass(frozen=True)
class DriftReference:
    """The training distribution summary stored with a model version."""

    features: Mapping[str, FeatureReference]

    @classmethod
    def fit(cls, columns: Mapping[str, Sequence[Any]], bins: int) -> "DriftReference":
        """Summarise training columns: numeric dtypes by quantiles, anything else as categories."""
        out = {}
        for name, values in columns.items():
            a = np.asarray(values)
            if a.dtype.kind in "biuf":
                x = a.astype(float)
                x = x[np.isfinite(x)]
                if x.size == 0:
                    raise DriftError(f"feature {name!r} has no finite training values: drop it from the reference")
                edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])       # (bins - 1,)
                counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=bins)
                grid = np.quantile(x, np.linspace(0, 1, KS_GRID))
                out[name] = FeatureReference(name, "numeric", int(x.size), tuple(map(float, edges)),
                                             tuple(map(float, counts / x.size)), tuple(map(float, grid)))
            else:
                cats, counts = np.unique(a.astype(str), return_counts=True)
                out[name] = FeatureReference(name, "categorical", int(a.size), shares=tuple(map(float, counts / a.size)),
                                             categories=tuple(map(str, cats)))
        return cls(out)

    def to_dict(self) -> dict[str, Any]:
        return {n: {k: (list(v) if isinstance(v, tuple) else v) for k, v in f.__dict__.items()}
                for n, f in self.features.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> "DriftReference":
        return cls({n: FeatureReference(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in f.items()})
                    for n, f in d.items()})


def psi(reference: Sequence[float], batch: Sequence[float]) -> float:
    """PSI between two share vectors over the same bins (each sums to 1)."""
    r = np.maximum(np.asarray(reference, dtype=float), EPS)
    p = np.maximum(np.asarray(batch, dtype=float), EPS)
    return float(np.sum((p - r) * np.log(p / r)))


def ks_vs_reference(ref: FeatureReference, x: np.ndarray) -> tuple[float, float]:
    """(D, asymptotic p-value) of batch values ``x`` vs the stored quantile grid of ``ref``."""
    grid = np.asarray(ref.grid)                               # (KS_GRID,) quantiles, non-decreasing
    probs = np.linspace(0.0, 1.0, grid.size)
    xs = np.sort(x)                                           # (m,)
    m = xs.size

    def f_ref(t: np.ndarray) -> np.ndarray:                   # piecewise-linear reference CDF
        return np.interp(t, grid, probs, left=0.0, right=1.0)

    # sup over the batch's jump points (both sides of each step) and the reference knots
    f_lo, f_hi = np.arange(m) / m, np.arange(1, m + 1) / m
    fr = f_ref(xs)
    d = max(np.max(np.abs(fr - f_lo)), np.max(np.abs(fr - f_hi)),
            np.max(np.abs(probs - np.searchsorted(xs, grid, side="right") / m)))
    n_eff = ref.n * m / (ref.n + m)
    return float(d), float(kolmogorov(np.sqrt(n_eff) * d))


@dataclass(frozen=True)
class FeatureDrift:
    """Drift statistics and verdict of one feature."""

    name: str
    n_batch: int
    psi: float | None
    ks_d: float | None
    ks_p: float | None
    status: str          # ok | warn | drift | too_few
    reason: str


def feature_drift(ref: FeatureReference, values: Sequence[Any], cfg: DriftConfig) -> FeatureDrift:
    """PSI (+ KS for numeric features) of one batch column and its verdict."""
    a = np.asarray(values)
    if ref.kind == "numeric":
        x = a.astype(float)
        x = x[np.isfinite(x)]
        if x.size < cfg.min_batch:
            return FeatureDrift(ref.name, int(x.size), None, None, None, "too_few",
                                f"{x.size} finite values < screen.drift.min_batch={cfg.min_batch}")
        counts = np.bincount(np.searchsorted(np.asarray(ref.edges), x, side="right"), minlength=len(ref.shares))
        value = psi(ref.shares, counts / x.size)
        d, p = ks_vs_reference(ref, x)
    else:
        s = a.astype(str)
        if s.size < cfg.min_batch:
            return FeatureDrift(ref.name, int(s.size), None, None, None, "too_few",
                                f"{s.size} values < screen.drift.min_batch={cfg.min_batch}")
        cats = list(ref.categories)
        unseen = sorted(set(s) - set(cats))
        batch = [float(np.mean(s == c)) for c in cats] + ([float(np.isin(s, unseen).mean())] if unseen else [])
        value = psi(list(ref.shares) + ([0.0] if unseen else []), batch)
        d = p = None
    drifted = value >= cfg.psi_alert or (p is not None and p < cfg.ks_alpha)
    status = "drift" if drifted else ("warn" if value >= cfg.psi_warn else "ok")
    ks = f", KS D={d:.3f} p={p:.2g} (alpha {cfg.ks_alpha})" if d is not None else ""
    return FeatureDrift(ref.name, int(a.size), value, d, p, status,
                        f"PSI={value:.3f} (warn {cfg.psi_warn}, alert {cfg.psi_alert}){ks}")


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of one batch; ``drifted`` is the batch verdict (any feature drifted)."""

    features: tuple[FeatureDrift, ...]

    @property
    def drifted(self) -> bool:
        return any(f.status == "drift" for f in self.features)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for the batch's MLflow run (no identifiers): psi_<f>, ks_d_<f>, n_drifted."""
        out: dict[str, float] = {"n_drifted": float(sum(f.status == "drift" for f in self.features))}
        for f in self.features:
            if f.psi is not None:
                out[f"psi_{f.name}"] = f.psi
            if f.ks_d is not None:
                out[f"ks_d_{f.name}"] = f.ks_d
        return out


def drift_verdict(reference: DriftReference, batch: Mapping[str, Sequence[Any]], cfg: DriftConfig) -> DriftReport:
    """Compare every reference feature with the batch's column of the same name.

    Raises:
        DriftError: a reference feature has no column in the batch.
    """
    missing = sorted(set(reference.features) - set(batch))
    if missing:
        raise DriftError(f"batch lacks reference features {missing}: compute them in the screening table")
    return DriftReport(tuple(feature_drift(reference.features[n], batch[n], cfg) for n in sorted(reference.features)))
