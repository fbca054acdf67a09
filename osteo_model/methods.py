"""One method -> a fitted scorer: deep methods (MoE, self-training, screening heads) and the baselines.

| method | pretraining | fine-tuning / fitting |
|---|---|---|
| ``tp_swav`` | TP-SwAV (texture-pool views) | MoE multi-task, Eq. 4 (``model.moe``: class_only / use_moe ablations) |
| ``swav`` | SwAV (large random crops of the 5-channel pool) | as above |
| ``scratch`` | none | as above |
| ``selftrain`` | TP-SwAV (or ``init_encoder``) | paper 002: Eq. 4 + adaptive triplet, pseudo-BMD rounds on unlabeled vertebrae |
| ``screening`` | TP-SwAV (or ``init_encoder``) | paper 003: screening / severity / T-score heads |
| ``l1_hu`` | none | L1 HU <= ``model.baselines.l1_hu_thresholds[0]`` (fixed rule, threshold 0.5 on its score) |
| ``radiomics_lr`` | none | radiomics + logistic regression |
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from osteo_config.experiment import ExperimentSpec
from osteo_model.baselines import L1HURule, RadiomicsLogistic
from osteo_model.companion import PseudoLabels, self_training
from osteo_model.config import ModelConfig
from osteo_model.frames import Frames
from osteo_model.pipeline import (TripletMultiTaskObjective, gate_metrics, load_model, predict_frame,
                                  predict_screening, run_finetune, run_screening)
from osteo_model.train import MetricsCallback

METHODS = ("tp_swav", "swav", "scratch", "selftrain", "screening", "l1_hu", "radiomics_lr")
DEEP = ("tp_swav", "swav", "scratch", "selftrain", "screening")
PRETRAINED = ("tp_swav", "swav", "selftrain", "screening")      # methods that start from a pretrained encoder

Scorer = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]   # frame -> (score, bmd_pred)


@dataclass
class Fitted:
    """A trained method: ``score(frame) -> (score, bmd_pred)``; ``fixed_threshold`` for rules (not tuned)."""

    score: Scorer
    model_path: Path | None = None
    fixed_threshold: float | None = None
    gates: Callable[[pd.DataFrame], dict[str, float]] | None = None   # frame -> mean gate per expert per vendor


def fit_method(spec: ExperimentSpec, method: str, frames: Frames, out: Path, encoder: Path | None,
               log: MetricsCallback, resume: bool = False) -> Fitted:
    """Fit ``method`` on ``frames.train`` (deep methods from ``encoder`` when given) and return its scorer."""
    mcfg = spec.model
    nan = lambda f: np.full(len(f), np.nan)                                   # noqa: E731
    if method == "l1_hu":
        rule = L1HURule(mcfg.baselines.l1_hu_thresholds[0], mcfg.baselines.hu_score_scale)
        return Fitted(lambda f: (rule.predict_proba(f), nan(f)), fixed_threshold=0.5)   # score >= 0.5 <=> HU <= t
    if method == "radiomics_lr":
        lr = RadiomicsLogistic(mcfg.baselines.radiomics_C, mcfg.baselines.radiomics_max_iter, seed=spec.seed)
        lr.fit(frames.train, (frames.train["who_class"] == 2).to_numpy())
        return Fitted(lambda f: (lr.predict_proba(f), nan(f)))
    if method == "screening":
        res = run_screening(spec, frames.train, frames.root, out, encoder, log, resume)
        return Fitted(lambda f: (predict_screening(res.bundle, f, frames.root)["score"].to_numpy(), nan(f)), res.bundle)
    if method == "selftrain":
        return _self_training(spec, frames, out, encoder, log, resume)
    res = run_finetune(spec, frames.train, frames.root, out, init_encoder=encoder, log_metrics=log, resume=resume,
                       position_frame=frames.unlabeled)
    return Fitted(moe_scorer(res.bundle, frames.root), res.bundle, gates=moe_gates(res.bundle, frames.root))


def moe_scorer(bundle: Path, root: Path) -> Scorer:
    """Score frames with a fine-tuned ``model.pt`` (each row answered as its own DXA vendor)."""
    model, norm, mcfg, _ = load_model(bundle)

    def score(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        pred = predict_frame(model, norm, frame, root, mcfg.moe, input_shape=mcfg.input_shape)
        return pred["score"].to_numpy(), pred["bmd_pred"].to_numpy()
    return score


def moe_gates(bundle: Path, root: Path) -> Callable[[pd.DataFrame], dict[str, float]]:
    """Mean gate weight per expert per DXA vendor of a ``model.pt`` on a frame (:func:`gate_metrics`)."""
    model, norm, mcfg, _ = load_model(bundle)

    def gates(frame: pd.DataFrame) -> dict[str, float]:
        pred = predict_frame(model, norm, frame, root, mcfg.moe, input_shape=mcfg.input_shape, gates=True)
        return gate_metrics(pred, frame["device_vendor"] if "device_vendor" in frame.columns
                            else pd.Series(index=frame.index, dtype=object))
    return gates


def _self_training(spec: ExperimentSpec, frames: Frames, out: Path, encoder: Path | None, log: MetricsCallback,
                   resume: bool) -> Fitted:
    """Paper 002 on vertebrae through :func:`osteo_model.companion.self_training`: a supervised round, then
    ``pseudo_rounds`` rounds that add confident pseudo-BMDs of the unlabeled vertebrae (all levels of train
    patients without DXA) and train with Eq. 4 + adaptive triplet.

    The prediction spread per vertebra comes from two passes (the pool and its left-right mirror).
    """
    cc = spec.model.companion
    objective = TripletMultiTaskObjective(spec.model.moe, cc, spec.finetune.seed)
    unl = frames.unlabeled.assign(who_class=-1, t_score=np.nan)
    rounds = [0]

    def train_round(pseudo: PseudoLabels | None) -> Path:
        train = frames.train
        if pseudo is not None:
            keep = pseudo.confident
            log(rounds[0] - 1, {"pseudo_confident_share": float(keep.mean())})
            train = pd.concat([frames.train, unl.loc[keep].assign(bmd_g_cm2=pseudo.bmd[keep])], ignore_index=True)
        res = run_finetune(spec, train, frames.root, out / f"round{rounds[0]}", init_encoder=encoder,
                           log_metrics=log, resume=resume, objective=objective)
        rounds[0] += 1
        return res.bundle

    def predict_unlabeled(bundle: Path) -> np.ndarray:
        model, norm, m, _ = load_model(bundle)
        a = predict_frame(model, norm, unl, frames.root, m.moe, input_shape=m.input_shape)["bmd_pred"].to_numpy()
        return np.stack([a, _mirrored_bmd(model, norm, unl, frames.root, m)])    # (2, U): same rows, mirrored pools

    n_rounds = 0 if unl.empty else cc.pseudo_rounds
    last, _ = self_training(n_rounds, train_round, predict_unlabeled, cc.pseudo_max_std, cc.pseudo_momentum)
    final = out / "model.pt"
    shutil.copyfile(last, final)
    return Fitted(moe_scorer(final, frames.root), final)


@torch.no_grad()
def _mirrored_bmd(model: torch.nn.Module, norm: Any, frame: pd.DataFrame, root: Path, mcfg: ModelConfig) -> np.ndarray:
    from torch.utils.data import DataLoader

    from osteo_model.data import TexturePoolDataset
    from osteo_model.moe import decode_outputs
    ds = TexturePoolDataset(frame, root, norm, device_vendors=mcfg.moe.device_vendors, input_shape=mcfg.input_shape,
                            descriptors=mcfg.moe.descriptors)
    out = []
    for batch in DataLoader(ds, batch_size=32):
        pool = torch.flip(batch["pool"], dims=[2])                             # (B, 5, X, Y, Z), x mirrored
        # the descriptors (sizes, AP projection) do not change under a left-right mirror
        out.append(decode_outputs(model(pool, batch["device"], contrast=batch["contrast"],
                                        descriptors=batch.get("descriptors")), mcfg.moe)["bmd_g_cm2"].numpy())
    return np.concatenate(out)
