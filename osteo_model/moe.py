"""Mixture-of-Experts multi-task fine-tuning (paper 001 §2.2-2.3, Eqs. 2-4).

Image embedding P_I (encoder) plus a learned embedding D_I of the DXA device
(one per vendor, an extra index for "unknown") drive a dense softmax gate over
N experts (Eq. 2); the experts see the image embedding and their outputs are
mixed by the gate weights (Eq. 3). Three task heads read the mixture:
osteoporosis class (2 logits, cross-entropy), areal BMD (MSE) and vertebra
position 1-18 (cross-entropy). The unified loss is Eq. 4:
L = alpha L_class + beta L_BMD + gamma L_position.

Departures from the paper, each explicit:

* **Contrast** (``use_contrast``): a learned embedding C_I of the study's IV-contrast
  flag (0 no, 1 yes, 2 unknown) is added to P_I before the experts and the gate, as
  D_I is added for the gate: contrast raises trabecular HU by ~15-20 HU, a shift the
  network must not read as denser bone.
* **Descriptors** (``descriptors``, issue 11.2): what an AP DXA scan integrates and the
  texture pool cannot show — the body's size and shell and the HU projected through the
  whole vertebra, posterior elements included (:func:`features.roi.dxa_descriptors`).
  Standardised with the training split's mean/SD (buffers in the state dict), mapped
  by a 2-layer MLP G_I and added to P_I like C_I. DXA aBMD = BMC / projected area:
  without them the model sees only the density of the trabecular core, which caps its
  BMD correlation near that of trabecular vBMD with DXA (docs/results.md).
* **Wide path** (``wide``): [standardised descriptors, one-hot device, one-hot contrast] map linearly
  onto the osteoporosis logit and the BMD z, added to the heads' outputs (wide & deep). Fitted in
  closed form on the labelled training rows (:meth:`MoEHead.init_wide`: ridge / L2 logistic) before
  fine-tuning, then trained with the rest, so the network learns the residual of a linear model.
* **Unknown device / contrast** rows are trained by dropout (``vendor_dropout``,
  ``contrast_dropout``): each training vertebra's index is replaced by "unknown" with
  that probability (a deterministic function of seed, step and dataset index, so DDP
  and resume are exact); otherwise the "unknown" rows would never see a gradient.
* **L_BMD is the MSE in (g/cm2)^2**, as in the paper, so beta keeps the paper's
  meaning; the head predicts the standardised value z = (BMD - bmd_center) / bmd_scale
  only for conditioning, and the loss de-standardises it first.

Because the device enters through the gate, the model answers "what would this
vendor's DXA say" (METHOD.md §4): predict once per vendor index to compare.

Ablations: ``use_moe=False`` -> one expert, no gate and no device input
(Table 2 "ResNet34 TP-SwAV unified"); ``class_only=True`` -> beta = gamma = 0.

Targets may be missing per vertebra (``who_class = -1``, ``bmd = NaN``,
``level = 0``): each term averages over the vertebrae that have its label and
is 0 when none does, so unlabeled vertebrae can still feed L_position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osteo_model.backbones import Encoder
from osteo_model.config import MoEConfig
from osteo_model.errors import DescriptorInputError

OSTEOPOROSIS = 2  # who_class of osteoporosis; the class head predicts who_class == 2 (METHOD.md §4)


def gate_weights(p_i: torch.Tensor, d_i: torch.Tensor, f_g: nn.Module) -> torch.Tensor:
    """Eq. 2: alpha = softmax(f_g(P_I + D_I)); (B, E) + (B, E) -> (B, N), rows sum to 1."""
    return F.softmax(f_g(p_i + d_i), dim=-1)


def mix_experts(expert_out: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 3: Output = sum_i alpha_i E_i; (B, N, F) x (B, N) -> (B, F)."""
    return (alpha.unsqueeze(-1) * expert_out).sum(dim=1)


N_CONTRAST = 3       # contrast index: 0 no IV contrast, 1 contrast-enhanced, 2 unknown
UNKNOWN_CONTRAST = 2


def contrast_index(value) -> int:
    """Study contrast flag (0/1, bool, None/NaN) -> contrast index (0, 1, or 2 = unknown)."""
    if value is None or (isinstance(value, float) and value != value):
        return UNKNOWN_CONTRAST
    if value in (0, 1):
        return int(value)
    raise ValueError(f"contrast flag {value!r} is not 0/1: fix the vertebra table (data contract: contrast 0/1)")


def wide_width(cfg: MoEConfig) -> int:
    """Inputs of the wide path: k descriptors, n_devices vendor indicators, N_CONTRAST contrast indicators."""
    return len(cfg.descriptors) + cfg.n_devices + N_CONTRAST


def wide_features(z: torch.Tensor, device: torch.Tensor, contrast: torch.Tensor, cfg: MoEConfig) -> torch.Tensor:
    """(B, wide_width) = [standardised descriptors, one-hot device index, one-hot contrast index].

    The device columns are 0 when the model takes no device (``use_moe: false``, the "no MoE" ablation) and
    the contrast columns 0 when it takes no contrast (``use_contrast: false``): the wide path never adds an
    input the configuration leaves out.
    """
    dev = F.one_hot(device.long(), cfg.n_devices).float()
    con = F.one_hot(contrast.long(), N_CONTRAST).float()
    return torch.cat([z.float(), dev if cfg.use_moe else torch.zeros_like(dev),
                      con if cfg.use_contrast else torch.zeros_like(con)], dim=1)


class MoEHead(nn.Module):
    """Device-aware gate, N experts and the three task heads (plus the optional contrast embedding)."""

    def __init__(self, embed_dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_experts = cfg.n_experts if cfg.use_moe else 1
        if cfg.use_moe:
            self.device_embed = nn.Embedding(cfg.n_devices, embed_dim)       # D_I
            nn.init.normal_(self.device_embed.weight, std=0.1)
            self.f_g = nn.Linear(embed_dim, n_experts)                        # gating function
        if cfg.use_contrast:
            self.contrast_embed = nn.Embedding(N_CONTRAST, embed_dim)         # C_I
            nn.init.normal_(self.contrast_embed.weight, std=0.1)
        if cfg.descriptors:
            k = len(cfg.descriptors)
            # standardisation of the raw descriptors, fitted on the training split (set_descriptor_stats);
            # buffers, so they travel in the state dict with the weights
            self.register_buffer("desc_mean", torch.zeros(k))
            self.register_buffer("desc_std", torch.ones(k))
            self.desc_mlp = nn.Sequential(nn.Linear(k, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))  # G_I
        if cfg.wide:
            # wide path: [z descriptors, one-hot device, one-hot contrast] -> [osteoporosis logit, BMD z];
            # zero until init_wide fits it in closed form on the training split
            self.wide = nn.Linear(wide_width(cfg), 2)
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, cfg.expert_hidden), nn.ReLU()) for _ in range(n_experts)
        )
        self.class_head = nn.Linear(cfg.expert_hidden, 2)
        self.bmd_head = nn.Linear(cfg.expert_hidden, 1)
        self.level_head = nn.Linear(cfg.expert_hidden, cfg.n_levels)

    def set_descriptor_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardisation of the descriptors (training-split mean and SD per column; SD 0 -> 1)."""
        std = np.where(np.asarray(std, dtype=np.float64) > 0, std, 1.0)
        self.desc_mean.copy_(torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.desc_std.copy_(torch.as_tensor(np.asarray(std, dtype=np.float32)))

    def standardise(self, descriptors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw descriptors (B, k) -> z with the training split's mean/SD (the buffers)."""
        d = torch.as_tensor(descriptors, dtype=self.desc_mean.dtype, device=self.desc_mean.device)
        return (d - self.desc_mean) / self.desc_std

    @torch.no_grad()
    def init_wide(self, descriptors: np.ndarray, device: np.ndarray, contrast: np.ndarray,
                  bmd_g_cm2: np.ndarray, osteoporotic: np.ndarray) -> dict[str, float]:
        """Fit the wide path in closed form on labelled training rows (after :meth:`set_descriptor_stats`).

        BMD z: ridge regression (``wide_ridge``) on the rows with a finite BMD; the osteoporosis logit:
        L2 logistic regression (``wide_logistic_c``) on the rows with a class (``osteoporotic`` 0/1, -1
        unknown). Unpenalised intercepts; deterministic. The deep part then fine-tunes on top of it.

        Returns the training fit of each part (``bmd_r``, ``class_rows``, ``bmd_rows``) for the run's log.
        """
        from sklearn.linear_model import LogisticRegression, Ridge

        x = wide_features(self.standardise(descriptors), torch.as_tensor(device), torch.as_tensor(contrast),
                          self.cfg).cpu().numpy().astype(np.float64)
        y = (np.asarray(bmd_g_cm2, dtype=np.float64) - self.cfg.bmd_center) / self.cfg.bmd_scale
        c = np.asarray(osteoporotic)
        has_b, has_c = np.isfinite(y), c >= 0
        out = {"bmd_rows": float(has_b.sum()), "class_rows": float(has_c.sum()), "bmd_r": float("nan")}
        if has_b.sum() >= 2:
            r = Ridge(alpha=self.cfg.wide_ridge).fit(x[has_b], y[has_b])
            self.wide.weight[1].copy_(torch.as_tensor(r.coef_, dtype=self.wide.weight.dtype))
            self.wide.bias[1] = float(r.intercept_)
            out["bmd_r"] = float(np.corrcoef(r.predict(x[has_b]), y[has_b])[0, 1])
        if has_c.sum() >= 2 and len(np.unique(c[has_c])) == 2:
            lr = LogisticRegression(C=self.cfg.wide_logistic_c, max_iter=5000).fit(x[has_c], c[has_c])
            self.wide.weight[0].copy_(torch.as_tensor(lr.coef_[0], dtype=self.wide.weight.dtype))
            self.wide.bias[0] = float(lr.intercept_[0])
        return out

    def forward(self, p_i: torch.Tensor, device: torch.Tensor,
                contrast: torch.Tensor | None = None, descriptors: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: p_i (B, E) image embedding; device (B,) vendor indices; contrast (B,) indices (None: unknown);
        descriptors (B, k) raw ``cfg.descriptors`` values (required when the model has descriptors).

        Returns logits, BMD z and gates.

        Raises:
            DescriptorInputError: the model was trained with descriptors and none were given.
        """
        if self.cfg.descriptors:
            if descriptors is None or descriptors.shape[-1] != len(self.cfg.descriptors):
                raise DescriptorInputError(
                    f"this model needs the descriptors {list(self.cfg.descriptors)} per vertebra (vertebrae.parquet "
                    f"columns written by ingestion), got {None if descriptors is None else tuple(descriptors.shape)}")
            z = (descriptors.to(p_i.dtype) - self.desc_mean) / self.desc_std
            p_i = p_i + self.desc_mlp(z)                                      # (B, E)
        if contrast is None:
            contrast = torch.full_like(device, UNKNOWN_CONTRAST)
        if self.cfg.use_contrast:
            p_i = p_i + self.contrast_embed(contrast)                          # (B, E)
        e = torch.stack([expert(p_i) for expert in self.experts], dim=1)      # (B, N, F)
        if self.cfg.use_moe:
            alpha = gate_weights(p_i, self.device_embed(device), self.f_g)   # (B, N)
        else:
            alpha = torch.ones(p_i.shape[0], 1, device=p_i.device, dtype=e.dtype)  # (B, 1)
        h = mix_experts(e, alpha)                                             # (B, F)
        class_logits, bmd_z = self.class_head(h), self.bmd_head(h).squeeze(-1)
        if self.cfg.wide:
            w = self.wide(wide_features(z, device, contrast, self.cfg).to(h.dtype))  # (B, 2)
            class_logits = class_logits + F.pad(w[:, :1], (1, 0))             # adds to the osteoporosis logit
            bmd_z = bmd_z + w[:, 1]
        return {
            "class_logits": class_logits,                                     # (B, 2)
            "bmd_z": bmd_z,                                                   # (B,)
            "level_logits": self.level_head(h),                               # (B, n_levels)
            "gate": alpha,                                                    # (B, N)
        }


class MultiTaskModel(nn.Module):
    """Encoder + MoE head: the fine-tuned osteoporosis model."""

    def __init__(self, encoder: Encoder, cfg: MoEConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MoEHead(encoder.embed_dim, cfg)

    def forward(self, pool: torch.Tensor, device: torch.Tensor, channel_ids: torch.Tensor | None = None,
                contrast: torch.Tensor | None = None, descriptors: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: pool (B, 5, X, Y, Z) normalised; device (B,); contrast (B,); descriptors (B, k) raw.
        Returns the head outputs plus ``embedding``."""
        p_i = self.encoder(pool, channel_ids)                                  # (B, E)
        return {**self.head(p_i, device, contrast, descriptors), "embedding": p_i}


def unit_hash(index: torch.Tensor, step: int, seed: int, salt: int = 0) -> torch.Tensor:
    """A uniform number in [0, 1) per (dataset index, step, seed, salt): the same on every rank and after resume."""
    m = 2_147_483_648                                                         # 2^31: products stay < 2^63 in int64
    x = (index.long() * 1_103_515_245 + step * 40_503 + seed * 97 + salt * 1_000_003 + 12_345) % m
    x = (x ^ (x >> 15)) * 2_246_822_519 % m
    x = (x ^ (x >> 13)) * 3_266_489_917 % m
    x = x ^ (x >> 16)
    return x.double() / m


def drop_to_unknown(values: torch.Tensor, index: torch.Tensor, unknown: int, p: float, step: int, seed: int,
                    salt: int) -> torch.Tensor:
    """Replace each value by ``unknown`` with probability ``p`` (deterministic per index and step)."""
    if p <= 0:
        return values
    drop = unit_hash(index.cpu(), step, seed, salt).to(values.device) < p
    return torch.where(drop, torch.full_like(values, unknown), values)


@dataclass(frozen=True)
class LossWeights:
    """alpha, beta, gamma of Eq. 4 (paper: 1.0, 1.0, 0.5)."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.5

    @classmethod
    def from_config(cls, cfg: MoEConfig) -> "LossWeights":
        if cfg.class_only:
            return cls(cfg.alpha, 0.0, 0.0)
        return cls(cfg.alpha, cfg.beta, cfg.gamma)


def _masked_mean_zero(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean of values, or a graph-connected 0 when there is nothing to average."""
    return values.mean() if values.numel() else anchor.sum() * 0.0


def unified_loss(out: dict[str, torch.Tensor], who_class: torch.Tensor, bmd: torch.Tensor, level: torch.Tensor,
                 weights: LossWeights, bmd_center: float, bmd_scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 4 with per-term label masks.

    Args:
        out: :class:`MoEHead` outputs.
        who_class: (B,) 0 normal / 1 osteopenia / 2 osteoporosis, -1 unknown.
        bmd: (B,) areal BMD in g/cm2, NaN unknown.
        level: (B,) 1-18, 0 unknown.
        weights: alpha, beta, gamma.
        bmd_center, bmd_scale: BMD standardisation of the head, z = (bmd - center) / scale; the
            BMD term is computed in g/cm2 (MSE in (g/cm2)^2), so it does not depend on them.

    Returns:
        total loss and the parts ``class``, ``bmd`` ((g/cm2)^2), ``position`` (unweighted).
    """
    logits = out["class_logits"].float()
    has_c = who_class >= 0
    l_class = _masked_mean_zero(
        F.cross_entropy(logits[has_c], (who_class[has_c] == OSTEOPOROSIS).long(), reduction="none"), logits)
    pred_z = out["bmd_z"].float()
    has_b = torch.isfinite(bmd)
    pred_g = pred_z[has_b] * bmd_scale + bmd_center                     # g/cm2: the paper's MSE, beta as in the paper
    l_bmd = _masked_mean_zero((pred_g - bmd[has_b].float()) ** 2, pred_z)
    lvl_logits = out["level_logits"].float()
    has_l = level >= 1
    l_pos = _masked_mean_zero(F.cross_entropy(lvl_logits[has_l], level[has_l] - 1, reduction="none"), lvl_logits)
    total = weights.alpha * l_class + weights.beta * l_bmd + weights.gamma * l_pos
    return total, {"class": l_class, "bmd": l_bmd, "position": l_pos}


def decode_outputs(out: dict[str, torch.Tensor], cfg: MoEConfig) -> dict[str, torch.Tensor]:
    """Head outputs -> osteoporosis score in [0, 1], BMD in g/cm2, predicted level 1-18."""
    return {
        "score": F.softmax(out["class_logits"].float(), dim=-1)[:, 1],
        "bmd_g_cm2": out["bmd_z"].float() * cfg.bmd_scale + cfg.bmd_center,
        "level": out["level_logits"].argmax(dim=-1) + 1,
    }


class MultiTaskObjective:
    """Fine-tuning loss object for :func:`osteo_model.train.fit` (Eq. 4), with vendor / contrast dropout.

    Args:
        cfg: ``model.moe``.
        seed: seed of the dropout draws (``train.seed``).
    """

    def __init__(self, cfg: MoEConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.weights = LossWeights.from_config(cfg)

    def extra_terms(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms added to Eq. 4 (none here; e.g. paper 002's adaptive triplet in a subclass)."""
        return {}

    def inputs(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Device and contrast indices after dropout to "unknown" (training only)."""
        index = batch.get("index", torch.arange(batch["device"].shape[0]))
        device = drop_to_unknown(batch["device"], index, self.cfg.n_devices - 1, self.cfg.vendor_dropout,
                                 step, self.seed, salt=1)
        contrast = batch.get("contrast")
        if contrast is not None:
            contrast = drop_to_unknown(contrast, index, UNKNOWN_CONTRAST, self.cfg.contrast_dropout, step, self.seed,
                                       salt=2)
        return device, contrast

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device, contrast = self.inputs(batch, step)
        out = model(batch["pool"], device, contrast=contrast, descriptors=batch.get("descriptors"))
        total, parts = unified_loss(out, batch["who_class"], batch["bmd"], batch["level"],
                                    self.weights, self.cfg.bmd_center, self.cfg.bmd_scale)
        for name, term in self.extra_terms(out, batch).items():
            parts[name] = term
            total = total + term
        metrics = {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
        metrics["loss"] = float(total.detach())
        return total, metrics
