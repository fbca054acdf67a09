"""The training pipeline, kept thin: frames -> pretrain -> fit the method -> operating point -> metrics -> MLflow.

``run_training(spec, method)`` is the one function behind ``osteo train ...``,
the ablation and the Prefect flow. Inputs are :class:`~osteo_config.ExperimentSpec`
(typed sections + input paths, :mod:`osteo_model.frames`); methods are fitted by
:mod:`osteo_model.methods`. Every learned method's operating point (calibration and
threshold, :func:`~osteo_model.operating_point.choose_operating_point`) is chosen on the
VALID split and written beside the model (the bundle is never rewritten); valid and test
predictions are scored by :func:`osteo_model.evaluate.evaluate_predictions`. Outputs under
``out_dir``: ``pretrain/encoder.pt``, ``finetune/model.pt`` + ``finetune/operating_point.json``,
``metrics.json`` (DVC metrics), ``predictions.parquet`` (pseudonymous ids only, no paths).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteo_config.experiment import ExperimentSpec
from osteo_model import evaluate as E
from osteo_model import figures
from osteo_model.config import POOL_CHANNELS
from osteo_model.frames import DataPaths, ExperimentError, Frames, assemble_frames, calibration_versions  # noqa: F401  (public API)
from osteo_model.methods import DEEP, METHODS, PRETRAINED, fit_method
from osteo_model.operating_point import (OperatingPoint, ThresholdChoice, choose_operating_point, fixed_choice,
                                         operating_point_path)
from osteo_model.pipeline import run_pretrain
from osteo_model.references import fit_references
from osteo_model.tracking import Tracker, code_version, data_version

PRED_COLUMNS = ("vertebra_id", "patient_id", "split", "site", "scanner", "contrast", "sex", "age_at_ct", "level",
                "who_class", "y_true", "score", "bmd_true", "bmd_pred")


@dataclass
class TrainingResult:
    """What :func:`run_training` returns."""

    method: str
    out_dir: Path
    threshold: float
    threshold_choice: ThresholdChoice | None
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    model_path: Path | None = None
    encoder_path: Path | None = None
    run_id: str | None = None
    model_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_tags(method: str, spec: ExperimentSpec, init_encoder: Path | None, data_tag: str) -> dict[str, str]:
    """The tags every parent run carries (filter/compare in the MLflow UI)."""
    mcfg = spec.model
    pretrain = {"tp_swav": "tp_swav", "swav": "swav"}.get(method, "none")
    if method in ("selftrain", "screening"):
        pretrain = "tp_swav" if init_encoder is None else "init_encoder"
    deep = method in DEEP
    return {"method": method, "backbone": mcfg.backbone.name if deep else "none", "pretrain": pretrain,
            "moe": str(deep and method != "screening" and mcfg.moe.use_moe).lower(),
            "loss": ("class_only" if mcfg.moe.class_only else "unified") if deep and method != "screening"
            else ("screening" if method == "screening" else "none"),
            "profile": spec.profile, "data_version": data_tag}


def _predictions(frame: pd.DataFrame, split: str, score: np.ndarray, bmd_pred: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({c: frame[c].to_numpy() for c in PRED_COLUMNS if c in frame.columns})
    out["split"] = split
    out["y_true"] = (frame["who_class"].to_numpy() == 2).astype(np.int64)
    out["score"] = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    out["bmd_true"] = frame["bmd_g_cm2"].to_numpy(dtype=np.float64)
    out["bmd_pred"] = np.asarray(bmd_pred, dtype=np.float64)
    return out[[c for c in PRED_COLUMNS if c in out.columns]]


def _fresh(path: Path, resume: bool) -> Path:
    if not resume and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_training(spec: ExperimentSpec, method: str = "tp_swav", tracking: bool = True, out_dir: Path | None = None,
                 init_encoder: Path | None = None, stages: tuple[str, ...] = ("pretrain", "finetune"),
                 run_name: str | None = None, resume: bool = False,
                 parent_run_id: str | None = None) -> TrainingResult:
    """Train and validate one method end to end, tracked in MLflow.

    Args:
        spec: the run's typed configuration (:meth:`osteo_config.Config.experiment`).
        method: one of :data:`~osteo_model.methods.METHODS`.
        tracking: log to MLflow (``spec.tracking``); False = files only.
        out_dir: output folder (default ``models/<method>``).
        init_encoder: an ``encoder.pt`` to start from instead of pretraining (shared by ablation arms).
        stages: ``("pretrain",)`` stops after writing the encoder; ``("finetune",)`` skips pretraining
            (uses ``init_encoder`` when given, else trains from scratch).
        run_name: MLflow run name (default the method); nested under the active MLflow run if any (ablation).
        resume: keep ``out_dir`` and resume interrupted stages from their checkpoints.
        parent_run_id: reopen this MLflow parent run instead of starting one (stage-by-stage pipelines).

    Returns:
        A :class:`TrainingResult` (metrics empty when only pretraining ran).
    """
    if method not in METHODS:
        raise ExperimentError(f"unknown method {method!r}: choose one of {list(METHODS)}")
    frames = assemble_frames(spec.data)
    cal = calibration_versions(spec.data)
    if cal is not None:                          # the pools' HU calibration travels in the I/O contract
        spec = replace(spec, geometry={**spec.geometry, "cal_version": cal})
    out = _fresh(Path(out_dir or Path("models") / method), resume)
    versions = data_version(spec.texture_digest, spec.data.training_table, spec.data.splits)
    tags = {**run_tags(method, spec, init_encoder, versions["data_version"]), **code_version(),
            "split_hash": versions["splits_sha256"], "params_hash": spec.model_digest}
    tracker = Tracker(spec.tracking, enabled=tracking)
    with tracker.parent(run_name or method, tags, {**spec.run_params, **versions}, run_id=parent_run_id) as run_id:
        result = _run(spec, method, frames, out, tracker, init_encoder, stages, resume)
        result.run_id = run_id
        if result.metrics:  # headline metrics on the parent too: parents compare side by side in the MLflow UI
            tracker.log_metrics({"threshold": result.threshold,
                                 **E.scalar_metrics(result.metrics["valid"], "valid"),
                                 **E.scalar_metrics(result.metrics["test"], "test")})
        if result.model_path is not None and method != "screening":
            result.model_uri = tracker.log_pyfunc(result.model_path)
        if tracker.enabled and tracker.history:
            tracker.log_figure(figures.loss_curves_figure(tracker.history), "plots/loss_curves.png")
    return result


def _run(spec: ExperimentSpec, method: str, frames: Frames, out: Path, tracker: Tracker,
         init_encoder: Path | None, stages: tuple[str, ...], resume: bool) -> TrainingResult:
    timings: dict[str, float] = {}
    encoder = init_encoder
    if "pretrain" in stages and init_encoder is None and method in PRETRAINED:
        kind = "swav" if method == "swav" else "tp_swav"
        with tracker.child("pretrain", {"pretrain_method": kind}):
            t0 = time.perf_counter()
            res = run_pretrain(spec, frames.pretrain, frames.root, out / "pretrain", method=kind,
                               log_metrics=tracker.callback("pretrain"), resume=resume)
            timings["pretrain_s"] = time.perf_counter() - t0
            tracker.log_metrics({"pretrain_s": timings["pretrain_s"], "n_vertebrae": len(frames.pretrain)})
            if tracker.enabled:
                tracker.log_figure(_montage(frames), "plots/texture_pool_montage.png")
        encoder = res.bundle
    if "finetune" not in stages:
        return TrainingResult(method, out, float("nan"), None, {}, pd.DataFrame(), encoder_path=encoder,
                              timings=timings)
    with tracker.child("finetune"):
        t0 = time.perf_counter()
        fitted = fit_method(spec, method, frames, out / "finetune", encoder, tracker.callback("finetune"), resume)
        timings["finetune_s"] = time.perf_counter() - t0
        tracker.log_metrics({"finetune_s": timings["finetune_s"], "n_train": len(frames.train)})
    with tracker.child("evaluate-valid"):
        valid = _predictions(frames.valid, "valid", *fitted.score(frames.valid))
        test = _predictions(frames.test, "test", *fitted.score(frames.test))
        choice: ThresholdChoice | None = None
        if fitted.fixed_threshold is None:
            op, note = choose_operating_point(valid, spec.model.companion)
            if spec.model.companion.calibrate:
                tracker.set_tags({"calibration": note})
            valid["score"], test["score"] = op.apply(valid["score"]), op.apply(test["score"])
            choice = op.choice
        else:
            op = OperatingPoint(fixed_choice(fitted.fixed_threshold))
        threshold = op.threshold
        serving: dict[str, Any] = {}
        if fitted.model_path is not None:
            op.save(operating_point_path(fitted.model_path))      # written once, beside the untouched bundle
            serving = fit_references(fitted.model_path, frames.train, valid, test, spec.interval_level,
                                     spec.drift_bins)
            interval = serving.get("interval") or {}
            tracker.log_metrics({f"bmd_interval.{k}": v for k, v in interval.items()
                                 if k in ("half_width", "test_coverage", "level")})
        metrics = {"method": method, "threshold": threshold, "serving": serving,
                   "threshold_choice": None if choice is None else choice.__dict__,
                   "valid": E.evaluate_predictions(valid, spec.evaluate, threshold),
                   "test": E.evaluate_predictions(test, spec.evaluate, threshold), "timings": timings}
        tracker.log_metrics({"threshold": threshold, **E.scalar_metrics(metrics["valid"], "valid")})
        if fitted.gates is not None and spec.model.moe.use_moe:   # "experts specialise by device", checkable
            tracker.log_metrics(fitted.gates(frames.valid))
        tracker.log_metrics(E.scalar_metrics(metrics["test"], "test"))
        for split, pred in (("valid", valid), ("test", test)) if tracker.enabled else ():
            tracker.log_figure(figures.confusion_figure(pred, threshold, split), f"plots/confusion_{split}.png")
            tracker.log_figure(figures.roc_figure(pred, f"ROC {split} (vertebra level)"), f"plots/roc_{split}.png")
    predictions = pd.concat([valid, test], ignore_index=True)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(E.clean_json(metrics), indent=2, sort_keys=True, allow_nan=False)
                                      + "\n")
    tracker.log_artifact(out / "metrics.json")
    return TrainingResult(method, out, float(threshold), choice, metrics, predictions, fitted.model_path,
                          encoder, timings=timings)


def _montage(frames: Frames):
    from osteo_model.data import TexturePoolDataset
    ds = TexturePoolDataset(frames.pretrain.sample(n=min(3, len(frames.pretrain)), random_state=0), frames.root)
    return figures.pool_montage_figure([ds.load_pool(i) for i in range(len(ds))], POOL_CHANNELS)
