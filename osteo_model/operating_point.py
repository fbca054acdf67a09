"""The operating point, chosen in one place: score calibration and the sensitivity-constrained threshold.

Both are fitted on the VALIDATION split only (METHOD §6, paper 003), written once to
``operating_point.json`` beside the model bundle (the bundle itself is never rewritten)
and read back by evaluation, the registry and the pyfunc. The threshold is on the
calibrated scale when a calibration is stored.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from osteo_model import metrics as M
from osteo_model.config import CompanionConfig
from osteo_model.errors import ModelError

OPERATING_POINT_FILE = "operating_point.json"


class OperatingPointError(ModelError, ValueError):
    """A model has no stored operating point, or it is malformed."""


# --- 003: sensitivity-constrained threshold -----------------------------------------
@dataclass(frozen=True)
class ThresholdChoice:
    """Operating point: predict positive when ``score >= threshold``."""

    threshold: float
    sensitivity: float
    specificity: float
    min_sensitivity: float
    n_pos: int
    n_neg: int


def select_threshold(scores: np.ndarray, labels: np.ndarray, min_sensitivity: float = 0.86) -> ThresholdChoice:
    """Best specificity subject to sensitivity >= ``min_sensitivity`` (paper 003).

    Candidates are the distinct score values (positive iff ``score >= t``).
    Ties in specificity go to the higher sensitivity (i.e. the lower threshold:
    in screening a missed case costs more than a false alarm). Distinct
    candidates always differ in (TP, FP), so this rule picks exactly one. The
    smallest score is always feasible (sensitivity 1).

    Raises:
        ValueError: labels not binary, a class missing, or non-finite scores.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape or not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise ValueError("scores and labels must be equal-length, finite, with labels in {0, 1}")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"validation needs both classes (positives {n_pos}, negatives {n_neg})")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp, fp = np.cumsum(y_sorted == 1), np.cumsum(y_sorted == 0)
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]              # end of each run of equal scores
    thr, tp, fp = s_sorted[last_of_value], tp[last_of_value], fp[last_of_value]
    sens, spec = tp / n_pos, 1.0 - fp / n_neg
    feasible = sens >= min_sensitivity - 1e-12
    best = np.lexsort((-sens[feasible], -spec[feasible]))[0]               # max spec, then max sens
    i = np.flatnonzero(feasible)[best]
    return ThresholdChoice(float(thr[i]), float(sens[i]), float(spec[i]), float(min_sensitivity), n_pos, n_neg)


def patient_max(scores: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient (max score, max label): the any-vertebra rule of METHOD §6 as one row per patient.

    A threshold t on these rows gives exactly the patient-level decisions of applying t to every vertebra.
    """
    frame = pd.DataFrame({"p": np.asarray(patient_ids), "s": np.asarray(scores, dtype=np.float64),
                          "y": np.asarray(labels)})
    agg = frame.groupby("p", sort=True).agg(s=("s", "max"), y=("y", "max"))
    return agg["s"].to_numpy(), agg["y"].to_numpy()


@dataclass(frozen=True)
class PlattCalibration:
    """``p = sigmoid(a * logit(score) + b)``, fitted on validation vertebrae (monotone: AUROC unchanged)."""

    a: float = 1.0
    b: float = 0.0

    def apply(self, scores: np.ndarray) -> np.ndarray:
        s = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
        z = self.a * np.log(s / (1 - s)) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray) -> "PlattCalibration":
        """Maximum-likelihood (a, b): the logistic recalibration fit of :func:`osteo_model.metrics.calibration_fit`.

        Raises:
            ValueError: a class is missing, or the fit does not converge / gives a non-increasing map (a <= 0).
        """
        y = np.asarray(labels, dtype=np.float64).ravel()
        if y.size == 0 or y.min() == y.max():
            raise ValueError("calibration needs both classes in the validation split")
        slope, intercept = M.calibration_fit(y, np.asarray(scores, dtype=np.float64).ravel())
        if not (np.isfinite(slope) and np.isfinite(intercept)):
            raise ValueError("Platt calibration did not converge (separable validation scores?)")
        if slope <= 0:
            raise ValueError(f"Platt calibration gave a={slope:.3g}: scores do not rank validation cases")
        return cls(float(slope), float(intercept))


@dataclass(frozen=True)
class OperatingPoint:
    """The validation operating point of one model: threshold choice and optional calibration."""

    choice: ThresholdChoice
    calibration: PlattCalibration | None = None

    @property
    def threshold(self) -> float:
        return self.choice.threshold

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Raw model scores -> the scale the threshold is on."""
        s = np.asarray(scores, dtype=np.float64)
        return s if self.calibration is None else self.calibration.apply(s)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": asdict(self.choice),
                "calibration": None if self.calibration is None else asdict(self.calibration)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OperatingPoint":
        try:
            thr = dict(d["threshold"])
            choice = ThresholdChoice(**thr) if len(thr) > 1 else fixed_choice(float(thr["threshold"]))
        except (KeyError, TypeError) as exc:
            raise OperatingPointError(f"operating point {dict(d)!r} is malformed ({exc}): fine-tune again") from exc
        cal = d.get("calibration")
        return cls(choice, None if not cal else PlattCalibration(**cal))

    def save(self, path: Path) -> Path:
        """Write once, atomically (temp file + fsync + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> "OperatingPoint":
        path = Path(path)
        if not path.is_file():
            raise OperatingPointError(f"{path} not found: the model has no stored operating point; run "
                                      "`osteo train finetune`, which chooses it on the validation split")
        return cls.from_dict(json.loads(path.read_text()))


def fixed_choice(threshold: float) -> ThresholdChoice:
    """A rule's fixed threshold (not tuned on data: no sensitivity/specificity recorded)."""
    nan = float("nan")
    return ThresholdChoice(float(threshold), nan, nan, nan, 0, 0)


def operating_point_path(bundle: Path) -> Path:
    """Where a bundle's operating point lives: beside it."""
    return Path(bundle).with_name(OPERATING_POINT_FILE)


def choose_operating_point(valid: pd.DataFrame, companion: CompanionConfig) -> tuple[OperatingPoint, str]:
    """Fit the calibration (``model.companion.calibrate``) and the threshold on validation predictions.

    ``valid`` holds ``score`` (raw), ``y_true`` and ``patient_id``. The threshold is the best
    specificity at sensitivity >= ``companion.min_sensitivity``; ``threshold_level: patient``
    constrains patient-level sensitivity under the any-vertebra rule (METHOD §6: the screening
    decision is per patient), ``vertebra`` counts vertebrae. Returns the operating point and a
    note on the calibration (an MLflow tag).
    """
    scores, labels = valid["score"].to_numpy(dtype=np.float64), valid["y_true"].to_numpy()
    calibration, note = None, "none"
    if companion.calibrate:                     # Platt on valid vertebrae; monotone, so ranks are unchanged
        try:
            calibration = PlattCalibration.fit(scores, labels)
            scores = calibration.apply(scores)
            note = f"platt a={calibration.a:.3f} b={calibration.b:.3f}"
        except ValueError as exc:               # e.g. a model that anti-ranks valid: the gates judge it
            note = f"skipped: {exc}"
    if companion.threshold_level == "patient":
        scores, labels = patient_max(scores, labels, valid["patient_id"].to_numpy())
    return OperatingPoint(select_threshold(scores, labels, companion.min_sensitivity), calibration), note
