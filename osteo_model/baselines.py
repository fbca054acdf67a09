"""Baselines every report shows beside the deep model (METHOD.md §6).

Both expose the interface of the deep models' scorer: ``predict_proba(frame)``
returns an osteoporosis score in [0, 1] per row (vertebra), higher = more
likely osteoporotic, and ``predict(frame)`` the 0/1 decision.

* :class:`L1HURule`: opportunistic-CT practice, "osteoporosis when the L1
  trabecular attenuation is <= t HU" (t = 160 sensitive, 110 specific). Each
  vertebra is scored with its study's L1 ``hu_mean`` (vertebrae.parquet); a
  study without an L1 row falls back to the vertebra's own ``hu_mean``. The
  score ``sigmoid((t - HU) / scale)`` is monotone in HU and crosses 0.5 exactly
  at t, so ``predict`` equals the HU rule and the score gives ROC curves.
* :class:`RadiomicsLogistic`: scalar pyradiomics features (radiomics.parquet,
  columns ``original_*``) -> standardisation -> L2 logistic regression.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from osteo_model.errors import NotFittedError

L1_LEVEL = 13  # T1..T12 = 1..12, L1 = 13 (data contract §2)


def hu_rule_score(hu: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """Score in [0, 1] that is >= 0.5 exactly when ``hu <= threshold``."""
    z = (threshold - np.asarray(hu, dtype=np.float64)) / scale
    return 0.5 * (1.0 + np.tanh(0.5 * z))                              # = sigmoid(z), overflow-free


def l1_hu(frame: pd.DataFrame) -> np.ndarray:
    """Per row: the L1 ``hu_mean`` of the row's study, or the row's own ``hu_mean`` without an L1."""
    if "l1_hu" in frame.columns:
        return frame["l1_hu"].to_numpy(dtype=np.float64)
    own = frame["hu_mean"].to_numpy(dtype=np.float64)
    if "study_id" not in frame.columns:
        return own
    l1 = frame.loc[frame["level"] == L1_LEVEL].groupby("study_id")["hu_mean"].mean()
    mapped = frame["study_id"].map(l1).to_numpy(dtype=np.float64)
    return np.where(np.isfinite(mapped), mapped, own)


class L1HURule:
    """The L1 trabecular-HU threshold rule (no training)."""

    def __init__(self, threshold_hu: float = 160.0, scale_hu: float = 20.0) -> None:
        self.threshold_hu, self.scale_hu = float(threshold_hu), float(scale_hu)

    @property
    def name(self) -> str:
        return f"l1_hu_le_{self.threshold_hu:g}"

    def fit(self, frame: pd.DataFrame | None = None, y: np.ndarray | None = None) -> "L1HURule":
        return self                                                    # nothing to learn

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return hu_rule_score(l1_hu(frame), self.threshold_hu, self.scale_hu)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return (l1_hu(frame) <= self.threshold_hu).astype(int)


class RadiomicsLogistic:
    """Radiomics + linear model: StandardScaler -> LogisticRegression (balanced class weights)."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000, feature_prefix: str = "original_",
                 seed: int = 0) -> None:
        self.feature_prefix = feature_prefix
        self.pipeline = Pipeline([
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", random_state=seed)),
        ])
        self.features: list[str] | None = None
        self.name = "radiomics_logreg"

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[self.features].to_numpy(dtype=np.float64)
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, frame: pd.DataFrame, y: np.ndarray, features: Sequence[str] | None = None) -> "RadiomicsLogistic":
        """Fit on the training split; ``features`` default to every numeric ``original_*`` column."""
        self.features = list(features) if features is not None else [
            c for c in frame.columns if c.startswith(self.feature_prefix) and pd.api.types.is_numeric_dtype(frame[c])]
        if not self.features:
            raise NotFittedError(f"no '{self.feature_prefix}*' feature columns: join radiomics.parquet first")
        self.pipeline.fit(self._matrix(frame), np.asarray(y).astype(int))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.features is None:
            raise NotFittedError("RadiomicsLogistic.predict_proba before fit: call fit on the training split")
        return self.pipeline.predict_proba(self._matrix(frame))[:, 1]

    def predict(self, frame: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
        return (self.predict_proba(frame) >= threshold).astype(int)
