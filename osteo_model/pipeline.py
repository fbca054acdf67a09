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

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from osteo_config.experiment import ExperimentSpec
from osteo_model.backbones import build_backbone
import torch.nn.functional as F

from osteo_model.companion import ScreeningModel, ScreeningObjective, adaptive_triplet_loss, batch_triplets
from osteo_model.config import POOL_CHANNELS, BackboneConfig, CompanionConfig, ModelConfig, MoEConfig, TrainConfig
from osteo_model.data import TexturePoolDataset
from osteo_model.moe import MultiTaskModel, MultiTaskObjective, decode_outputs, unified_loss
from osteo_model.norm import ChannelNorm
from osteo_model.operating_point import OperatingPoint, operating_point_path
from osteo_model.swav import SwAVModel, SwAVObjective
from osteo_model.train import MetricsCallback, Objective, fit, resolve_device, seed_everything

# Feast FeatureService whose texture pools the model reads: the contract between features/ and osteo_model/
SCREENING_FEATURE_SERVICE = "osteo_screening_v1"

IO_CONTRACT = {
    "modality": "CT", "unit": "vertebra", "orientation": "RAS", "feature_service": SCREENING_FEATURE_SERVICE,
    "input": f"texture pool float32 (5, x, y, z) in raw units, channels {list(POOL_CHANNELS)} "
             "(HU clipped to hu_window, then the 4 GLCM maps); the model normalises and resamples it",
    "channels": list(POOL_CHANNELS),
    "device_input": "DXA vendor index (model.moe.device_vendors; last index = unknown)",
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


def _dataset(frame: pd.DataFrame, root: Path, norm: ChannelNorm, mcfg: ModelConfig, cache: bool = True) -> TexturePoolDataset:
    """Training dataset: normalised, resampled to ``model.input_shape``, cached after the first epoch."""
    return TexturePoolDataset(frame, root, norm, device_vendors=mcfg.moe.device_vendors,
                              input_shape=mcfg.input_shape, cache=cache)


def run_pretrain(spec: ExperimentSpec, frame: pd.DataFrame, interim_dir: Path, out_dir: Path,
                 method: str = "tp_swav", log_metrics: MetricsCallback | None = None, resume: bool = True) -> StageResult:
    """Self-supervised pretraining (``tp_swav`` or the ``swav`` baseline) on the training split's vertebrae.

    The ChannelNorm is fitted here, on ``frame`` (training split only), and travels in the bundle.
    """
    mcfg, tcfg = spec.model, spec.pretrain
    norm = ChannelNorm.fit(TexturePoolDataset(frame, interim_dir).iter_raw_pools())
    dataset = _dataset(frame, interim_dir, norm, mcfg)
    seed_everything(tcfg.seed)
    model = SwAVModel(build_backbone(mcfg.backbone), mcfg.swav)
    res = fit(model, SwAVObjective(mcfg.swav, method, tcfg.seed), dataset, tcfg, Path(out_dir),
              params_digest=_digest(spec, method), extra_state={"norm": norm.state_dict(), "method": method},
              log_metrics=log_metrics, resume=resume)
    bundle = Path(out_dir) / "encoder.pt"
    torch.save({"encoder": res.model.encoder.state_dict(), "norm": norm.state_dict(), "method": method,
                "model_config": mcfg.to_dict(), "steps": res.steps}, bundle)
    return StageResult(bundle, res.steps, res.last_metrics)


def run_finetune(spec: ExperimentSpec, train_frame: pd.DataFrame, interim_dir: Path, out_dir: Path,
                 init_encoder: Path | None = None, log_metrics: MetricsCallback | None = None, resume: bool = True,
                 objective: Objective | None = None) -> StageResult:
    """MoE multi-task fine-tuning (Eq. 4) on labeled training vertebrae, from scratch or a pretrained encoder.

    With ``init_encoder`` the pretraining bundle's ChannelNorm is reused (the encoder was trained on it);
    otherwise it is fitted on ``train_frame``. ``objective`` replaces the Eq. 4 loss (e.g. Eq. 4 + the
    adaptive triplet term of paper 002). The operating point is chosen by the caller on validation data
    (:func:`osteo_model.operating_point.choose_operating_point`) and stored beside ``model.pt``.
    """
    mcfg, tcfg = spec.model, spec.finetune
    init = torch.load(init_encoder, map_location="cpu", weights_only=False) if init_encoder else None
    norm = (ChannelNorm.from_state_dict(init["norm"]) if init
            else ChannelNorm.fit(TexturePoolDataset(train_frame, interim_dir).iter_raw_pools()))
    dataset = _dataset(train_frame, interim_dir, norm, mcfg)
    seed_everything(tcfg.seed)
    model = MultiTaskModel(build_backbone(mcfg.backbone), mcfg.moe)
    if init:
        model.encoder.load_state_dict(init["encoder"])       # raises on an architecture mismatch
    tag = f"finetune:{init['method'] if init else 'scratch'}"
    res = fit(model, objective or MultiTaskObjective(mcfg.moe), dataset, tcfg, Path(out_dir), params_digest=_digest(spec, tag),
              extra_state={"norm": norm.state_dict(), "init": tag}, log_metrics=log_metrics, resume=resume)
    bundle = Path(out_dir) / "model.pt"
    torch.save({"state_dict": res.model.state_dict(), "norm": norm.state_dict(), "model_config": mcfg.to_dict(),
                "init": tag, "io": io_contract(spec.geometry), "steps": res.steps}, bundle)
    return StageResult(bundle, res.steps, res.last_metrics)


class TripletMultiTaskObjective(MultiTaskObjective):
    """Eq. 4 plus paper 002's adaptive triplet loss on the L2-normalised image embeddings.

    Triplets come from the batch's (pseudo-)BMDs (:func:`~osteo_model.companion.batch_triplets`);
    margin = ``triplet_margin + triplet_margin_per_bmd * |dBMD|``.
    """

    def __init__(self, cfg: MoEConfig, companion: CompanionConfig) -> None:
        super().__init__(cfg)
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
    res = fit(model, ScreeningObjective(mcfg.companion.tscore_weight), _dataset(train_frame, interim_dir, norm, mcfg),
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
    mcfg = ModelConfig(backbone=BackboneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict["backbone"].items()}),
                       moe=MoEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict["moe"].items()}),
                       companion=CompanionConfig(**cfg_dict["companion"]),
                       input_shape=None if cfg_dict.get("input_shape") is None else tuple(cfg_dict["input_shape"]))
    model = MultiTaskModel(build_backbone(mcfg.backbone), mcfg.moe)
    model.load_state_dict(state["state_dict"])
    return model.eval(), ChannelNorm.from_state_dict(state["norm"]), mcfg, state


@torch.no_grad()
def predict_frame(model: MultiTaskModel, norm: ChannelNorm, frame: pd.DataFrame, interim_dir: Path, moe_cfg: MoEConfig,
                  vendor: str | None = None, batch_size: int = 16, device: str = "auto",
                  input_shape: tuple[int, int, int] | None = None) -> pd.DataFrame:
    """Score every vertebra of ``frame``: ``score``, ``bmd_pred`` (g/cm2), ``level_pred``, one row per input row.

    Args:
        vendor: answer as this DXA vendor for every row ("what would a Hologic say");
            None uses each row's ``device_vendor``.
        input_shape: ``model.input_shape`` of the model (pools are resampled to it, as in training).
    """
    rows = frame if vendor is None else frame.assign(device_vendor=vendor)
    ds = TexturePoolDataset(rows, interim_dir, norm, device_vendors=moe_cfg.device_vendors, input_shape=input_shape)
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    parts = {"score": [], "bmd_pred": [], "level_pred": []}
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        dec = decode_outputs(model(batch["pool"].to(dev), batch["device"].to(dev)), moe_cfg)
        parts["score"].append(dec["score"].cpu().numpy())
        parts["bmd_pred"].append(dec["bmd_g_cm2"].cpu().numpy())
        parts["level_pred"].append(dec["level"].cpu().numpy())
    model.train(was_training)
    return pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()}, index=frame.index)
