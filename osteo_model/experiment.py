"""The training pipeline: data assembly -> pretrain -> fine-tune -> threshold -> metrics -> MLflow.

``run_training(params, method)`` is the one function behind ``osteo train ...``,
the ablation and the Prefect flow. It reads (paths from ``params['paths']``):

* ``<data>/processed/training_table.parquet``: labelled L1-L4 vertebrae with ``split``;
* ``<interim>/texture/texture.parquet`` + ``<interim>/splits/splits.parquet``: the
  **pretraining set** = every vertebra (all levels, labelled or not) of train-split patients;
* ``<interim>/ingest/vertebrae.parquet``: the study's L1 ``hu_mean`` for the HU-rule baseline.

Methods (MLflow tag ``method``):

| method | pretraining | fine-tuning / fitting |
|---|---|---|
| ``tp_swav`` | TP-SwAV (texture-pool views) | MoE multi-task, Eq. 4 (``model.moe``: class_only / use_moe ablations) |
| ``swav`` | SwAV (random crops of HU) | as above |
| ``scratch`` | none | as above |
| ``selftrain`` | TP-SwAV (or ``init_encoder``) | paper 002: Eq. 4 + adaptive triplet, pseudo-BMD rounds on unlabeled vertebrae |
| ``screening`` | TP-SwAV (or ``init_encoder``) | paper 003: screening / severity / T-score heads |
| ``l1_hu`` | none | L1 HU <= ``model.baselines.l1_hu_thresholds[0]`` (fixed rule, threshold 0.5 on its score) |
| ``radiomics_lr`` | none | radiomics + logistic regression |

Every learned method's operating threshold is chosen on the VALID split
(``companion.select_threshold``, sensitivity >= ``model.companion.min_sensitivity``)
and stored with the model; valid and test predictions are scored by
:func:`osteo_model.evaluate.evaluate_predictions`. Outputs under ``out_dir``:
``pretrain/encoder.pt``, ``finetune/model.pt``, ``metrics.json`` (DVC metrics),
``predictions.parquet`` (pseudonymous ids only, no paths).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from osteo_config.params import deep_merge, params_hash
from osteo_model import evaluate as E
from osteo_model.baselines import L1_LEVEL, L1HURule, RadiomicsLogistic
from osteo_model.companion import (PlattCalibration, ThresholdChoice, patient_max, refine_pseudo_bmd,
                                   select_threshold)
from osteo_model.config import POOL_CHANNELS, ModelConfig
from osteo_model.pipeline import (TripletMultiTaskObjective, load_model, predict_frame, predict_screening,
                                  run_finetune, run_pretrain, run_screening)
from osteo_model.train import MetricsCallback
from osteo_model.tracking import (Tracker, TrackingConfig, code_version, confusion_figure, data_version,
                                  loss_curves_figure, pool_montage_figure, roc_figure, tracked_params)

METHODS = ("tp_swav", "swav", "scratch", "selftrain", "screening", "l1_hu", "radiomics_lr")
DEEP = ("tp_swav", "swav", "scratch", "selftrain", "screening")
PRED_COLUMNS = ("vertebra_id", "patient_id", "split", "site", "scanner", "sex", "age_at_ct", "level",
                "who_class", "y_true", "score", "bmd_true", "bmd_pred")


class ExperimentError(ValueError):
    """The training inputs or the method cannot produce a run."""


@dataclass(frozen=True)
class DataPaths:
    """Where the pipeline's inputs live (all derived from ``params['paths']``)."""

    training_table: Path
    texture_dir: Path
    vertebrae: Path
    splits: Path

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "DataPaths":
        data, interim = Path(params["paths"]["data"]), Path(params["paths"]["interim"])
        split_file = (params.get("splits") or {}).get("file", "splits/splits.parquet")
        return cls(data / "processed" / "training_table.parquet", interim / "texture",
                   interim / "ingest" / "vertebrae.parquet", interim / split_file)


@dataclass
class Frames:
    """Per-vertebra frames of one run; ``pool_path`` is relative to ``root``."""

    root: Path
    pretrain: pd.DataFrame            # all vertebrae of train-split patients
    unlabeled: pd.DataFrame           # pretrain minus the labelled training vertebrae
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def _vertebra_id(frame: pd.DataFrame) -> pd.Series:
    return frame["patient_id"].astype(str) + ":" + frame["study_id"].astype(str) + ":" + frame["level"].astype(str)


def assemble_frames(paths: DataPaths) -> Frames:
    """Read the training table, texture index, vertebrae and splits into the run's frames.

    Raises:
        ExperimentError: a file is missing or a labelled split is empty.
    """
    for p in (paths.training_table, paths.texture_dir / "texture.parquet", paths.splits):
        if not Path(p).is_file():
            raise ExperimentError(f"{p} not found: run `osteo texture`, `osteo splits` and "
                                  "`osteo features training-table` first")
    table = pd.read_parquet(paths.training_table)
    if "vertebra_id" not in table.columns:
        table["vertebra_id"] = _vertebra_id(table)
    if Path(paths.vertebrae).is_file():
        vert = pd.read_parquet(paths.vertebrae, columns=["study_id", "level", "hu_mean"])
        l1 = vert[vert["level"] == L1_LEVEL].groupby("study_id")["hu_mean"].mean()
        table["l1_hu"] = table["study_id"].map(l1).fillna(table["hu_mean"])
    splits = pd.read_parquet(paths.splits, columns=["patient_id", "split"])
    texture = pd.read_parquet(paths.texture_dir / "texture.parquet")
    train_patients = set(splits.loc[splits["split"] == "train", "patient_id"])
    pretrain = texture[texture["patient_id"].isin(train_patients)].reset_index(drop=True)
    pretrain["vertebra_id"] = _vertebra_id(pretrain)
    vendor = table.groupby("patient_id")["device_vendor"].first()          # the patient's DXA device
    pretrain["device_vendor"] = pretrain["patient_id"].map(vendor)
    parts = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    for s, f in parts.items():
        if f.empty:
            raise ExperimentError(f"the training table has no '{s}' rows: rebuild the splits with more patients")
    labelled = set(parts["train"]["vertebra_id"])
    unlabeled = pretrain[~pretrain["vertebra_id"].isin(labelled)].reset_index(drop=True)
    return Frames(paths.texture_dir, pretrain, unlabeled, parts["train"], parts["valid"], parts["test"])


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


def run_tags(method: str, params: Mapping[str, Any], init_encoder: Path | None, data_tag: str) -> dict[str, str]:
    """The tags every parent run carries (filter/compare in the MLflow UI)."""
    mcfg = ModelConfig.from_params(params)
    pretrain = {"tp_swav": "tp_swav", "swav": "swav"}.get(method, "none")
    if method in ("selftrain", "screening"):
        pretrain = "tp_swav" if init_encoder is None else "init_encoder"
    deep = method in DEEP
    return {"method": method, "backbone": mcfg.backbone.name if deep else "none", "pretrain": pretrain,
            "moe": str(deep and method != "screening" and mcfg.moe.use_moe).lower(),
            "loss": ("class_only" if mcfg.moe.class_only else "unified") if deep and method != "screening"
            else ("screening" if method == "screening" else "none"),
            "profile": str(params.get("profile", "demo")), "data_version": data_tag}


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


def run_training(params: Mapping[str, Any], method: str = "tp_swav", overrides: Mapping[str, Any] | None = None,
                 tracking: bool = True, out_dir: Path | None = None, init_encoder: Path | None = None,
                 stages: tuple[str, ...] = ("pretrain", "finetune"), run_name: str | None = None,
                 resume: bool = False, parent_run_id: str | None = None) -> TrainingResult:
    """Train and validate one method end to end, tracked in MLflow.

    Args:
        params: merged params.yaml (``load_params``).
        method: one of :data:`METHODS`.
        overrides: params overlay merged on top (e.g. ``{"model": {"moe": {"use_moe": False}}}``).
        tracking: log to MLflow (``tracking:`` section); False = files only.
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
    params = deep_merge(params, overrides or {})
    paths = DataPaths.from_params(params)
    frames = assemble_frames(paths)
    out = _fresh(Path(out_dir or Path("models") / method), resume)
    versions = data_version(params, paths.training_table, paths.splits)
    tags = {**run_tags(method, params, init_encoder, versions["data_version"]), **code_version(),
            "split_hash": versions["splits_sha256"], "params_hash": params_hash(params, ("model", "train"))}
    tracker = Tracker(TrackingConfig.from_params(params), enabled=tracking)
    with tracker.parent(run_name or method, tags, {**tracked_params(params), **versions},
                        run_id=parent_run_id) as run_id:
        result = _run(params, method, frames, out, tracker, init_encoder, stages, resume)
        result.run_id = run_id
        if result.metrics:  # headline metrics on the parent too: parents compare side by side in the MLflow UI
            tracker.log_metrics({"threshold": result.threshold,
                                 **E.scalar_metrics(result.metrics["valid"], "valid"),
                                 **E.scalar_metrics(result.metrics["test"], "test")})
        if result.model_path is not None and method != "screening":
            result.model_uri = tracker.log_pyfunc(result.model_path)
        if tracker.enabled and tracker.history:
            tracker.log_figure(loss_curves_figure(tracker.history), "plots/loss_curves.png")
    return result


def _run(params: Mapping[str, Any], method: str, frames: Frames, out: Path, tracker: Tracker,
         init_encoder: Path | None, stages: tuple[str, ...], resume: bool) -> TrainingResult:
    mcfg = ModelConfig.from_params(params)
    timings: dict[str, float] = {}
    encoder = init_encoder
    needs_pretrain = init_encoder is None and method in ("tp_swav", "swav", "selftrain", "screening")
    if "pretrain" in stages and needs_pretrain:
        with tracker.child("pretrain", {"pretrain_method": "swav" if method == "swav" else "tp_swav"}):
            t0 = time.perf_counter()
            res = run_pretrain(params, frames.pretrain, frames.root, out / "pretrain",
                               method="swav" if method == "swav" else "tp_swav",
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
        fitted = fit_method(params, method, frames, out / "finetune", encoder, tracker.callback("finetune"), resume)
        timings["finetune_s"] = time.perf_counter() - t0
        tracker.log_metrics({"finetune_s": timings["finetune_s"], "n_train": len(frames.train)})
    with tracker.child("evaluate-valid"):
        valid = _predictions(frames.valid, "valid", *fitted.score(frames.valid))
        test = _predictions(frames.test, "test", *fitted.score(frames.test))
        choice: ThresholdChoice | None = None
        calibration: PlattCalibration | None = None
        if fitted.fixed_threshold is None:
            if mcfg.companion.calibrate:                 # Platt on valid vertebrae; monotone, so ranks are unchanged
                try:
                    calibration = PlattCalibration.fit(valid["score"].to_numpy(), valid["y_true"].to_numpy())
                    valid["score"], test["score"] = calibration.apply(valid["score"]), calibration.apply(test["score"])
                    tracker.set_tags({"calibration": f"platt a={calibration.a:.3f} b={calibration.b:.3f}"})
                except ValueError as exc:                # e.g. a model that anti-ranks valid: the gates judge it
                    tracker.set_tags({"calibration": f"skipped: {exc}"})
            choice = choose_threshold(valid, mcfg.companion)
            threshold = choice.threshold
        else:
            threshold = fitted.fixed_threshold
        if fitted.model_path is not None:
            _store_threshold(fitted.model_path, choice, threshold, calibration)
        ecfg = E.EvaluateConfig.from_params(params)
        metrics = {"method": method, "threshold": threshold,
                   "threshold_choice": None if choice is None else choice.__dict__,
                   "valid": E.evaluate_predictions(valid, ecfg, threshold),
                   "test": E.evaluate_predictions(test, ecfg, threshold), "timings": timings}
        tracker.log_metrics({"threshold": threshold, **E.scalar_metrics(metrics["valid"], "valid")})
        tracker.log_metrics(E.scalar_metrics(metrics["test"], "test"))
        for split, pred in (("valid", valid), ("test", test)) if tracker.enabled else ():
            tracker.log_figure(confusion_figure(pred, threshold, split), f"plots/confusion_{split}.png")
            tracker.log_figure(roc_figure(pred, f"ROC {split} (vertebra level)"), f"plots/roc_{split}.png")
    predictions = pd.concat([valid, test], ignore_index=True)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(E._clean(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
    tracker.log_artifact(out / "metrics.json")
    return TrainingResult(method, out, float(threshold), choice, metrics, predictions, fitted.model_path,
                          encoder, timings=timings)


# --------------------------------------------------------------------------- one method -> a scorer

@dataclass
class Fitted:
    """A trained method: ``score(frame) -> (score, bmd_pred)``; ``fixed_threshold`` for rules (not tuned)."""

    score: Any
    model_path: Path | None = None
    fixed_threshold: float | None = None


def fit_method(params: Mapping[str, Any], method: str, frames: Frames, out: Path, encoder: Path | None,
               log: MetricsCallback, resume: bool = False) -> Fitted:
    """Fit ``method`` on ``frames.train`` (deep methods from ``encoder`` when given) and return its scorer."""
    mcfg = ModelConfig.from_params(params)
    nan = lambda f: np.full(len(f), np.nan)                                   # noqa: E731
    if method == "l1_hu":
        rule = L1HURule(mcfg.baselines.l1_hu_thresholds[0], mcfg.baselines.hu_score_scale)
        return Fitted(lambda f: (rule.predict_proba(f), nan(f)), fixed_threshold=0.5)   # score >= 0.5 <=> HU <= t
    if method == "radiomics_lr":
        lr = RadiomicsLogistic(mcfg.baselines.radiomics_C, mcfg.baselines.radiomics_max_iter,
                               seed=int(params["train"]["seed"]))
        lr.fit(frames.train, (frames.train["who_class"] == 2).to_numpy())
        return Fitted(lambda f: (lr.predict_proba(f), nan(f)))
    if method == "screening":
        res = run_screening(params, frames.train, frames.root, out, encoder, log, resume)
        return Fitted(lambda f: (predict_screening(res.bundle, f, frames.root)["score"].to_numpy(), nan(f)), res.bundle)
    if method == "selftrain":
        return _self_training(params, mcfg, frames, out, encoder, log, resume)
    res = run_finetune(params, frames.train, frames.root, out, init_encoder=encoder, log_metrics=log, resume=resume)
    return Fitted(_moe_scorer(res.bundle, frames.root), res.bundle)


def _moe_scorer(bundle: Path, root: Path):
    model, norm, mcfg, _ = load_model(bundle)

    def score(frame: pd.DataFrame, vendor: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        pred = predict_frame(model, norm, frame, root, mcfg.moe, vendor=vendor, input_shape=mcfg.input_shape)
        return pred["score"].to_numpy(), pred["bmd_pred"].to_numpy()
    return score


def _self_training(params: Mapping[str, Any], mcfg: ModelConfig, frames: Frames, out: Path, encoder: Path | None,
                   log: MetricsCallback, resume: bool) -> Fitted:
    """Paper 002 on vertebrae: supervised round, then ``pseudo_rounds`` rounds that add confident pseudo-BMDs
    of the unlabeled vertebrae (all levels of train patients without DXA) and train with Eq. 4 + adaptive triplet.

    The prediction spread per vertebra comes from two passes (the pool and its left-right mirror).
    """
    cc = mcfg.companion
    objective = TripletMultiTaskObjective(mcfg.moe, cc)
    unl = frames.unlabeled.assign(who_class=-1, t_score=np.nan)
    pseudo, res = None, None
    for r in range(cc.pseudo_rounds + 1):
        train = frames.train
        if pseudo is not None:
            keep = pseudo.confident
            train = pd.concat([frames.train, unl.loc[keep].assign(bmd_g_cm2=pseudo.bmd[keep])], ignore_index=True)
        res = run_finetune(params, train, frames.root, out / f"round{r}", init_encoder=encoder, log_metrics=log,
                           resume=resume, objective=objective)
        if r == cc.pseudo_rounds or unl.empty:
            break
        model, norm, m, _ = load_model(res.bundle)
        a = predict_frame(model, norm, unl, frames.root, m.moe, input_shape=m.input_shape)["bmd_pred"].to_numpy()
        b = _mirrored_bmd(model, norm, unl, frames.root, m)                     # same rows, mirrored pools
        pseudo = refine_pseudo_bmd(np.stack([a, b]), pseudo, cc.pseudo_max_std, cc.pseudo_momentum)
        log(r, {"pseudo_confident_share": float(pseudo.confident.mean())})
    final = out / "model.pt"
    shutil.copyfile(res.bundle, final)
    return Fitted(_moe_scorer(final, frames.root), final)


@torch.no_grad()
def _mirrored_bmd(model: torch.nn.Module, norm: Any, frame: pd.DataFrame, root: Path, mcfg: ModelConfig) -> np.ndarray:
    from torch.utils.data import DataLoader
    from osteo_model.data import TexturePoolDataset
    from osteo_model.moe import decode_outputs
    ds = TexturePoolDataset(frame, root, norm, device_vendors=mcfg.moe.device_vendors, input_shape=mcfg.input_shape)
    out = []
    for batch in DataLoader(ds, batch_size=32):
        pool = torch.flip(batch["pool"], dims=[2])                             # (B, 5, X, Y, Z), x mirrored
        out.append(decode_outputs(model(pool, batch["device"]), mcfg.moe)["bmd_g_cm2"].numpy())
    return np.concatenate(out)


def choose_threshold(valid: pd.DataFrame, companion: Any) -> ThresholdChoice:
    """Best specificity at sensitivity >= ``companion.min_sensitivity`` on the validation predictions.

    ``threshold_level: patient`` constrains patient-level sensitivity under the any-vertebra rule
    (METHOD §6: the screening decision is per patient); ``vertebra`` counts vertebrae.
    """
    scores, labels = valid["score"].to_numpy(), valid["y_true"].to_numpy()
    if companion.threshold_level == "patient":
        scores, labels = patient_max(scores, labels, valid["patient_id"].to_numpy())
    return select_threshold(scores, labels, companion.min_sensitivity)


def _store_threshold(bundle: Path, choice: ThresholdChoice | None, threshold: float,
                     calibration: PlattCalibration | None = None) -> None:
    """Write the validation operating point (and score calibration) into ``model.pt``: what the registry
    and the pyfunc read; the threshold is on the calibrated scale when a calibration is stored."""
    state = torch.load(bundle, map_location="cpu", weights_only=False)
    state["threshold"] = choice.__dict__ if choice is not None else {"threshold": float(threshold)}
    state["calibration"] = None if calibration is None else {"a": calibration.a, "b": calibration.b}
    torch.save(state, bundle)


def _montage(frames: Frames, n: int = 3):
    from osteo_model.data import TexturePoolDataset
    ds = TexturePoolDataset(frames.pretrain.sample(n=min(n, len(frames.pretrain)), random_state=0), frames.root)
    return pool_montage_figure([ds.load_pool(i) for i in range(len(ds))], POOL_CHANNELS)


# --------------------------------------------------------------------------- stage entry points (CLI / DVC)

def run_pretrain_stage(params: Mapping[str, Any], method: str = "tp_swav", out_dir: Path = Path("models"),
                       tracking: bool = True) -> dict[str, Any]:
    """``osteo train pretrain``: TP-SwAV (or SwAV) encoder -> ``<out_dir>/pretrain/encoder.pt``.

    Opens the pipeline's MLflow parent run (``<method>``); ``<out_dir>/pretrain/pretrain.json``
    records it (and the encoder, or none for ``scratch``) so ``finetune`` continues the same run.
    """
    if method not in METHODS or method not in DEEP:
        raise ExperimentError(f"train.method={method!r}: `osteo train` trains one of {list(DEEP)}")
    out_dir = Path(out_dir)
    res = run_training(params, method, tracking=tracking, out_dir=out_dir, stages=("pretrain",),
                       run_name=method, resume=True)
    record = {"method": method, "encoder": None if res.encoder_path is None else str(res.encoder_path),
              "pretrain_s": res.timings.get("pretrain_s"), "run_id": res.run_id}
    (out_dir / "pretrain").mkdir(parents=True, exist_ok=True)
    (out_dir / "pretrain" / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_finetune_stage(params: Mapping[str, Any], method: str = "tp_swav", out_dir: Path = Path("models"),
                       metrics_path: Path = Path("metrics/train.json"), tracking: bool = True) -> dict[str, Any]:
    """``osteo train finetune``: fine-tune from the encoder ``pretrain`` recorded (none for ``scratch``),
    pick the validation threshold, write ``<out_dir>/finetune/model.pt`` and ``metrics_path``.

    Continues the parent MLflow run of the pretrain stage when it used the same method.
    """
    out_dir = Path(out_dir)
    record_path = out_dir / "pretrain" / "pretrain.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("method") not in (None, method):
        raise ExperimentError(f"{record_path} holds a '{record.get('method')}' pretraining but train.method is "
                              f"'{method}': run `osteo train pretrain` first")
    init = Path(record["encoder"]) if record.get("encoder") else None
    if init is None and method in ("tp_swav", "swav"):
        raise ExperimentError(f"no pretrained encoder for '{method}' ({record_path} missing or empty): "
                              "run `osteo train pretrain` first")
    res = run_training(params, method, tracking=tracking, out_dir=out_dir, init_encoder=init, stages=("finetune",),
                       run_name=method, resume=True, parent_run_id=record.get("run_id") if tracking else None)
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "metrics.json", metrics_path)
    record = {"method": method, "model": str(res.model_path), "threshold": res.threshold, "metrics": str(metrics_path),
              "finetune_s": res.timings.get("finetune_s"), "run_id": res.run_id, "model_uri": res.model_uri}
    (out_dir / "finetune" / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")  # read by evaluate/promote
    return record
