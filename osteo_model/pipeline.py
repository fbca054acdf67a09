"""Entry points: pretrain, fine-tune, load and predict, from a typed :class:`~osteo_config.ExperimentSpec`.

These are what the CLI (``osteo pretrain`` / ``osteo finetune``), DVC stages
and Prefect tasks call. The caller passes per-vertebra frames that are already
restricted to one split (see :mod:`osteo_model.data` for the columns) and the
interim root the ``pool_path`` values are relative to.

Artefacts written to ``out_dir``:

* ``last.pt``: the resumable training checkpoint (see :mod:`osteo_model.checkpoint`);
* ``encoder.pt`` (pretraining) / ``model.pt`` (fine-tuning): a bundle with the
  weights, the ``model:`` config, the ChannelNorm state and the I/O contract
  (:func:`io_contract`: modality, channels, HU window, spacing, ROI shape, feature
  service, intended use). A bundle is written once and never rewritten: the validation
  operating point lives beside it (:mod:`osteo_model.operating_point`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import logging

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import torch.nn.functional as F

from osteo_config.experiment import ExperimentSpec
from osteo_config.model import ModelConfigError
from osteo_model.backbones import build_backbone

from osteo_model.companion import ScreeningModel, ScreeningObjective, adaptive_triplet_loss, batch_triplets
from osteo_model.config import POOL_CHANNELS, BackboneConfig, CompanionConfig, ModelConfig, MoEConfig, TrainConfig
from osteo_model.data import TexturePoolDataset, descriptor_matrix, wide_inputs
from osteo_model.moe import MultiTaskModel, MultiTaskObjective, decode_outputs, unified_loss
from osteo_model.norm import ChannelNorm
from osteo_model.operating_point import OperatingPoint, operating_point_path
from osteo_model.swav import SwAVModel, SwAVObjective
from osteo_model.train import (MetricsCallback, Objective, barrier, fit, rank, resolve_device, seed_everything,
                               world_size)

log = logging.getLogger(__name__)

# Feast FeatureService whose texture pools the model reads: the contract between features/ and osteo_model/
SCREENING_FEATURE_SERVICE = "osteo_screening_v1"

IO_CONTRACT = {
    "modality": "CT", "unit": "vertebra", "orientation": "RAS", "feature_service": SCREENING_FEATURE_SERVICE,
    "input": f"texture pool float32 (5, x, y, z) in raw units, channels {list(POOL_CHANNELS)} "
             "(HU clipped to hu_window, then the 4 GLCM maps); the model normalises and resamples it",
    "channels": list(POOL_CHANNELS),
    "device_input": "DXA vendor (model.moe.device_vendors, or 'unknown' = the last index, trained by vendor dropout); "
                    "any other name is refused (UnknownVendorError)",
    "contrast_input": "IV contrast of the study: 0 no, 1 yes, missing = unknown (model.moe.use_contrast)",
    "outputs": {"score": "P(osteoporosis, WHO T <= -2.5) in [0, 1]", "bmd_g_cm2": "areal BMD as the vendor's DXA",
                "level": "vertebra position 1-18"},
    "intended_use": "research: opportunistic osteoporosis screening from routine CT; not a diagnostic device",
}


def io_contract(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`IO_CONTRACT` completed with the geometry the model was trained on (MONAI-bundle style).

    ``geometry`` (:meth:`osteo_config.Config.io_geometry`) holds the ingest grid (``spacing_mm`` mm,
    ``roi_shape`` voxels, ``hu_window`` HU), the texture discretisation (``bin_width`` HU or
    ``bin_count``, ``kernel_radius`` voxels) and ``model_input_shape``: a caller producing pools any
    other way gets a different model.
    """
    return {**IO_CONTRACT, **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in geometry.items()}}


@dataclass(frozen=True)
class StageResult:
    bundle: Path
    steps: int
    last_metrics: dict[str, float]


def _digest(spec: ExperimentSpec, tag: str) -> str:
    return f"{tag}:{spec.model_digest}"


def _dataset(frame: pd.DataFrame, root: Path, norm: ChannelNorm, mcfg: ModelConfig, cache: bool = True,
             descriptors: bool = True, augmentation: Mapping[str, Any] | None = None) -> TexturePoolDataset:
    """Training dataset: normalised, resampled to ``model.input_shape``, cached after the first epoch; with the
    ``model.moe.descriptors`` columns when ``descriptors`` (fine-tuning; pretraining sees pools only) and the
    re-imaging of :func:`finetune_augmentation` when given."""
    return TexturePoolDataset(frame, root, norm, device_vendors=mcfg.moe.device_vendors,
                              input_shape=mcfg.input_shape, cache=cache,
                              descriptors=mcfg.moe.descriptors if descriptors else (), **(augmentation or {}))


def finetune_augmentation(spec: ExperimentSpec) -> dict[str, Any]:
    """:class:`TexturePoolDataset` arguments of ``model.augment`` (physics re-imaging, :mod:`osteo_model.augment`).

    Fine-tuning training sets only: never validation, test or prediction sets (a threshold or a metric
    must see the scans as they are), and not pretraining: TP-SwAV / SwAV views have their own
    augmentation (crops, flips, HU view noise; ``model.swav``) and the swapped-assignment objective
    needs two views of the same pool, which one re-imaging per item would not give. The maps are
    recomputed with the settings the pools were made with (``spec.glcm``) on the ingest grid.
    """
    g = spec.geometry
    return {"augment": spec.model.augment, "glcm": spec.glcm, "spacing_mm": tuple(g["spacing_mm"]),
            "hu_window": tuple(g["hu_window"]), "seed": spec.finetune.seed}


def check_queue(n_prototypes: int, queue_length: int, batch_size: int) -> None:
    """Refuse a SwAV configuration whose Sinkhorn batch (batch x processes + queue) is smaller than K.

    With fewer rows than prototypes no code can exceed (rows / K) on any prototype: the swapped
    targets stay diffuse and pretraining learns little (see :mod:`osteo_model.swav`).

    Raises:
        ModelConfigError: ``batch_size * world + queue_length < n_prototypes``.
    """
    rows = batch_size * world_size() + queue_length
    if rows < n_prototypes:
        raise ModelConfigError(f"SwAV: batch {batch_size} x {world_size()} processes + queue {queue_length} = {rows} "
                               f"rows < n_prototypes {n_prototypes}: set model.swav.queue_length >= "
                               f"{n_prototypes - batch_size * world_size()} in params.yaml")


def position_rows(position_frame: pd.DataFrame | None, n_labelled: int, extra: float, seed: int) -> pd.DataFrame:
    """Unlabelled vertebrae (all levels) that join fine-tuning for L_position only.

    DXA labels exist for L1-L4 alone, so on labelled data alone the 18-way position head sees 4
    classes. ``round(extra * n_labelled)`` vertebrae of the pretraining set (training patients, every
    level, no DXA) are drawn without replacement (seeded); their class and BMD targets are unknown,
    so they feed L_position only (Eq. 4's masked terms).
    """
    if position_frame is None or position_frame.empty or extra <= 0:
        return pd.DataFrame()
    n = min(len(position_frame), round(extra * n_labelled))
    rows = position_frame.sample(n=n, random_state=seed % 2**32) if n < len(position_frame) else position_frame
    return rows.drop(columns=[c for c in ("who_class", "bmd_g_cm2", "t_score") if c in rows.columns])


def run_pretrain(spec: ExperimentSpec, frame: pd.DataFrame, interim_dir: Path, out_dir: Path,
                 method: str = "tp_swav", log_metrics: MetricsCallback | None = None, resume: bool = True) -> StageResult:
    """Self-supervised pretraining (``tp_swav`` or the ``swav`` baseline) on the training split's vertebrae.

    The ChannelNorm is fitted here, on ``frame`` (training split only), and travels in the bundle.
    """
    mcfg, tcfg = spec.model, spec.pretrain
    check_queue(mcfg.swav.n_prototypes, mcfg.swav.queue_length, tcfg.batch_size)
    norm = ChannelNorm.fit(TexturePoolDataset(frame, interim_dir).iter_raw_pools())
    dataset = _dataset(frame, interim_dir, norm, mcfg, descriptors=False)
    seed_everything(tcfg.seed)
    model = SwAVModel(build_backbone(mcfg.backbone), mcfg.swav)
    objective = SwAVObjective(mcfg.swav, method, tcfg.seed, hu_std=norm.std[0])
    res = fit(model, objective, dataset, tcfg, Path(out_dir),
              params_digest=_digest(spec, method), extra_state={"norm": norm.state_dict(), "method": method},
              log_metrics=log_metrics, resume=resume)
    bundle = Path(out_dir) / "encoder.pt"
    if rank() == 0:                                           # under DDP every rank holds the same weights
        torch.save({"encoder": res.model.encoder.state_dict(), "norm": norm.state_dict(), "method": method,
                    "model_config": mcfg.to_dict(), "steps": res.steps}, bundle)
    barrier()                                                 # the other ranks may read it next
    return StageResult(bundle, res.steps, res.last_metrics)


def run_finetune(spec: ExperimentSpec, train_frame: pd.DataFrame, interim_dir: Path, out_dir: Path,
                 init_encoder: Path | None = None, log_metrics: MetricsCallback | None = None, resume: bool = True,
                 objective: Objective | None = None, position_frame: pd.DataFrame | None = None) -> StageResult:
    """MoE multi-task fine-tuning (Eq. 4) on labeled training vertebrae, from scratch or a pretrained encoder.

    With ``init_encoder`` the pretraining bundle's ChannelNorm is reused (the encoder was trained on it);
    otherwise it is fitted on ``train_frame``. ``objective`` replaces the Eq. 4 loss (e.g. Eq. 4 + the
    adaptive triplet term of paper 002). ``position_frame`` (the pretraining set's unlabelled vertebrae)
    supplies ``model.moe.position_extra`` x len(train_frame) rows for L_position (:func:`position_rows`).
    Every training row is re-imaged with probability ``model.augment.p`` per epoch (:func:`finetune_augmentation`).
    The operating point is chosen by the caller on validation data
    (:func:`osteo_model.operating_point.choose_operating_point`) and stored beside ``model.pt``.
    """
    mcfg, tcfg = spec.model, spec.finetune
    init = torch.load(init_encoder, map_location="cpu", weights_only=False) if init_encoder else None
    norm = (ChannelNorm.from_state_dict(init["norm"]) if init
            else ChannelNorm.fit(TexturePoolDataset(train_frame, interim_dir).iter_raw_pools()))
    extra = position_rows(position_frame, len(train_frame), mcfg.moe.position_extra, tcfg.seed)
    frame = pd.concat([train_frame, extra], ignore_index=True) if len(extra) else train_frame
    dataset = _dataset(frame, interim_dir, norm, mcfg, augmentation=finetune_augmentation(spec))
    seed_everything(tcfg.seed)
    model = MultiTaskModel(build_backbone(mcfg.backbone), mcfg.moe)
    if mcfg.moe.descriptors:                                 # standardised on the fine-tuning rows
        d = descriptor_matrix(frame, mcfg.moe.descriptors)
        model.head.set_descriptor_stats(d.mean(axis=0), d.std(axis=0))
    if mcfg.moe.wide:                                        # closed-form wide path on the labelled rows
        fit_wide = model.head.init_wide(**wide_inputs(train_frame, mcfg.moe))
        log.info("wide path fitted on %d BMD / %d class rows (training BMD r %.3f)",
                 fit_wide["bmd_rows"], fit_wide["class_rows"], fit_wide["bmd_r"])
    if init:
        model.encoder.load_state_dict(init["encoder"])       # raises on an architecture mismatch
    tag = f"finetune:{init['method'] if init else 'scratch'}"
    res = fit(model, objective or MultiTaskObjective(mcfg.moe, tcfg.seed), dataset, tcfg, Path(out_dir), params_digest=_digest(spec, tag),
              extra_state={"norm": norm.state_dict(), "init": tag}, log_metrics=log_metrics, resume=resume)
    bundle = Path(out_dir) / "model.pt"
    if rank() == 0:
        torch.save({"state_dict": res.model.state_dict(), "norm": norm.state_dict(), "model_config": mcfg.to_dict(),
                    "init": tag, "io": io_contract(spec.geometry), "steps": res.steps}, bundle)
    barrier()
    return StageResult(bundle, res.steps, res.last_metrics)


class TripletMultiTaskObjective(MultiTaskObjective):
    """Eq. 4 plus paper 002's adaptive triplet loss on the L2-normalised image embeddings.

    Triplets come from the batch's (pseudo-)BMDs (:func:`~osteo_model.companion.batch_triplets`);
    margin = ``triplet_margin + triplet_margin_per_bmd * |dBMD|``.
    """

    def __init__(self, cfg: MoEConfig, companion: CompanionConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.companion = companion

    def extra_terms(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, pos, neg = batch_triplets(batch["bmd"])
        emb = F.normalize(out["embedding"].float(), dim=1)                    # (B, E), distances in [0, 2]
        return {"triplet": adaptive_triplet_loss(emb[a], emb[pos], emb[neg], batch["bmd"][a], batch["bmd"][neg],
                                                 self.companion.triplet_margin, self.companion.triplet_margin_per_bmd)}


def run_screening(spec: ExperimentSpec, train_frame: pd.DataFrame, interim_dir: Path, out_dir: Path,
                  init_encoder: Path | None = None, log_metrics: MetricsCallback | None = None,
                  resume: bool = True) -> StageResult:
    """Paper 003: screening / severity / T-score heads on the encoder (``fit`` with ScreeningObjective).

    Writes ``screening.pt`` (weights, norm, config); the threshold is chosen by the caller on validation data.
    """
    mcfg, tcfg = spec.model, spec.finetune
    init = torch.load(init_encoder, map_location="cpu", weights_only=False) if init_encoder else None
    norm = (ChannelNorm.from_state_dict(init["norm"]) if init
            else ChannelNorm.fit(TexturePoolDataset(train_frame, interim_dir).iter_raw_pools()))
    seed_everything(tcfg.seed)
    model = ScreeningModel(build_backbone(mcfg.backbone))
    if init:
        model.encoder.load_state_dict(init["encoder"])
    tag = f"screening:{init['method'] if init else 'scratch'}"
    res = fit(model, ScreeningObjective(mcfg.companion.tscore_weight),
              _dataset(train_frame, interim_dir, norm, mcfg, descriptors=False,   # paper 003's heads read the image only
                       augmentation=finetune_augmentation(spec)),
              tcfg, Path(out_dir), params_digest=_digest(spec, tag), extra_state={"norm": norm.state_dict()},
              log_metrics=log_metrics, resume=resume)
    bundle = Path(out_dir) / "screening.pt"
    torch.save({"state_dict": res.model.state_dict(), "norm": norm.state_dict(), "model_config": mcfg.to_dict(),
                "init": tag, "kind": "screening", "io": io_contract(spec.geometry), "steps": res.steps}, bundle)
    return StageResult(bundle, res.steps, res.last_metrics)


@torch.no_grad()
def predict_screening(bundle: Path, frame: pd.DataFrame, interim_dir: Path, batch_size: int = 16,
                      device: str = "auto") -> pd.DataFrame:
    """Score ``frame`` with a ``screening.pt``: ``score`` = P(bone loss) x P(osteoporosis | bone loss), ``tscore_pred``."""
    state = torch.load(bundle, map_location="cpu", weights_only=False)
    cfg = state["model_config"]
    backbone = BackboneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["backbone"].items()})
    shape = None if cfg.get("input_shape") is None else tuple(cfg["input_shape"])
    model = ScreeningModel(build_backbone(backbone))
    model.load_state_dict(state["state_dict"])
    dev = resolve_device(device)
    model.to(dev).eval()
    ds = TexturePoolDataset(frame, interim_dir, ChannelNorm.from_state_dict(state["norm"]), input_shape=shape)
    score, tscore = [], []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        out = model(batch["pool"].to(dev))
        score.append((torch.sigmoid(out["screen_logit"]) * torch.sigmoid(out["severity_logit"])).cpu().numpy())
        tscore.append(out["tscore"].cpu().numpy())
    return pd.DataFrame({"score": np.concatenate(score), "tscore_pred": np.concatenate(tscore)}, index=frame.index)


def load_model(bundle: Path, operating_point: Path | None = None
               ) -> tuple[MultiTaskModel, ChannelNorm, ModelConfig, dict[str, Any]]:
    """Rebuild a fine-tuned model from ``model.pt``; returns (model in eval mode, norm, config, bundle dict).

    The bundle dict carries ``threshold`` / ``calibration`` from the operating point stored beside the
    bundle (or at ``operating_point``); both are None while none has been chosen yet.
    """
    state = torch.load(bundle, map_location="cpu", weights_only=False)
    op_path = Path(operating_point) if operating_point else operating_point_path(bundle)
    op = OperatingPoint.load(op_path).to_dict() if op_path.is_file() else {"threshold": None, "calibration": None}
    state.update(op)
    cfg_dict = state["model_config"]
    moe = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict["moe"].items()}
    moe.setdefault("use_contrast", False)                  # bundles from before the contrast input
    mcfg = ModelConfig(backbone=BackboneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict["backbone"].items()}),
                       moe=MoEConfig(**moe), companion=CompanionConfig(**cfg_dict["companion"]),
                       input_shape=None if cfg_dict.get("input_shape") is None else tuple(cfg_dict["input_shape"]))
    model = MultiTaskModel(build_backbone(mcfg.backbone), mcfg.moe)
    weights = dict(state["state_dict"])
    mix = model.encoder.stem.channel_mix
    # Bundles from before the learned member mixing averaged the members: identity mixing is that stem exactly.
    weights.setdefault("encoder.stem.channel_mix", torch.eye(mix.shape[1]).repeat(mix.shape[0], 1, 1))
    model.load_state_dict(weights)
    return model.eval(), ChannelNorm.from_state_dict(state["norm"]), mcfg, state


@torch.no_grad()
def predict_frame(model: MultiTaskModel, norm: ChannelNorm, frame: pd.DataFrame, interim_dir: Path, moe_cfg: MoEConfig,
                  vendor: str | None = None, batch_size: int = 16, device: str = "auto",
                  input_shape: tuple[int, int, int] | None = None, gates: bool = False) -> pd.DataFrame:
    """Score every vertebra of ``frame``: ``score``, ``bmd_pred`` (g/cm2), ``level_pred``, one row per input row.

    Args:
        vendor: answer as this DXA vendor for every row ("what would a Hologic say"; ``"unknown"`` = the
            learned unknown-device embedding); None uses each row's ``device_vendor``.
        input_shape: ``model.input_shape`` of the model (pools are resampled to it, as in training).
        gates: add the gate weights as columns ``gate_0`` .. ``gate_{N-1}``.

    Raises:
        UnknownVendorError: a vendor that is neither in ``moe_cfg.device_vendors`` nor ``"unknown"``.
    """
    rows = frame if vendor is None else frame.assign(device_vendor=vendor)
    ds = TexturePoolDataset(rows, interim_dir, norm, device_vendors=moe_cfg.device_vendors, input_shape=input_shape,
                            descriptors=moe_cfg.descriptors)
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    parts: dict[str, list[np.ndarray]] = {"score": [], "bmd_pred": [], "level_pred": [], "gate": []}
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        desc = batch.get("descriptors")
        out = model(batch["pool"].to(dev), batch["device"].to(dev), contrast=batch["contrast"].to(dev),
                    descriptors=None if desc is None else desc.to(dev))
        dec = decode_outputs(out, moe_cfg)
        parts["score"].append(dec["score"].cpu().numpy())
        parts["bmd_pred"].append(dec["bmd_g_cm2"].cpu().numpy())
        parts["level_pred"].append(dec["level"].cpu().numpy())
        parts["gate"].append(out["gate"].float().cpu().numpy())
    model.train(was_training)
    result = pd.DataFrame({k: np.concatenate(parts[k]) for k in ("score", "bmd_pred", "level_pred")}, index=frame.index)
    if gates:
        g = np.concatenate(parts["gate"])                                       # (N_rows, n_experts)
        for i in range(g.shape[1]):
            result[f"gate_{i}"] = g[:, i]
    return result


def gate_metrics(gate_frame: pd.DataFrame, vendors: pd.Series, split: str = "valid") -> dict[str, float]:
    """Mean gate weight per expert per DXA vendor: ``gate_<split>_<vendor>_e<i>`` (and ``_n`` vertebrae).

    "Experts specialise by device" (paper §2.2) reads as these rows differing between vendors.
    Vendor names are made metric-safe (spaces -> underscores).

    Args:
        gate_frame: :func:`predict_frame` output with ``gates=True``.
        vendors: each row's ``device_vendor`` (same index); missing -> ``unknown``.
    """
    cols = [c for c in gate_frame.columns if c.startswith("gate_")]
    v = vendors.reindex(gate_frame.index).fillna("unknown").astype(str)
    out: dict[str, float] = {}
    for name, rows in gate_frame[cols].groupby(v.to_numpy()):
        key = str(name).replace(" ", "_")
        for c in cols:
            out[f"gate_{split}_{key}_e{c.split('_')[1]}"] = float(rows[c].mean())
        out[f"gate_{split}_{key}_n"] = float(len(rows))
    return out
