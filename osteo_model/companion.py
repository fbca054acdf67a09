"""Companion methods: self-training with pseudo-BMDs + adaptive triplet loss (paper 002) and
sensitivity-constrained screening with severity and T-score heads (paper 003).

Paper 002 (hip X-rays) trains a BMD regressor on labeled images plus unlabeled
images carrying *pseudo-BMDs* produced by the current model and refined over
rounds; an *adaptive triplet loss* pulls embeddings of similar-BMD samples
together, with a margin that grows with the BMD gap to the negative. Here the
unlabeled vertebrae are those without DXA (every level but L1-L4).

Paper 003 (knee radiographs, STR-Net) uses three heads on a shared embedding:
screening (normal vs bone loss), severity (osteopenia vs osteoporosis, only on
bone-loss cases) and T-score regression; the operating threshold of the
screening score is the one with the best specificity among those with
sensitivity >= 0.86 on validation data, and it is stored with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osteo_model.backbones import Encoder
from osteo_model.operating_point import PlattCalibration, ThresholdChoice, patient_max, select_threshold  # noqa: F401  (re-exported)

M = TypeVar("M")


# --- 002: adaptive triplet loss -------------------------------------------------
def adaptive_margin(bmd_anchor: torch.Tensor, bmd_negative: torch.Tensor, base: float, per_bmd: float) -> torch.Tensor:
    """m = base + per_bmd * |BMD_a - BMD_n|: farther negatives (in BMD) must be pushed farther away."""
    return base + per_bmd * (bmd_anchor - bmd_negative).abs()


def adaptive_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                          bmd_anchor: torch.Tensor, bmd_negative: torch.Tensor,
                          base_margin: float, margin_per_bmd: float) -> torch.Tensor:
    """mean_i max(0, ||a_i - p_i|| - ||a_i - n_i|| + m_i) with the adaptive margin m_i.

    Args:
        anchor, positive, negative: (T, E) embeddings of T triplets (positive closer in BMD than negative).
        bmd_anchor, bmd_negative: (T,) BMDs in g/cm2.
        base_margin, margin_per_bmd: margin = base + per_bmd * |dBMD|.
    """
    if anchor.shape[0] == 0:
        return anchor.sum() * 0.0
    d_ap = (anchor - positive).norm(dim=1)                                  # (T,)
    d_an = (anchor - negative).norm(dim=1)                                  # (T,)
    m = adaptive_margin(bmd_anchor, bmd_negative, base_margin, margin_per_bmd)
    return F.relu(d_ap - d_an + m).mean()


def batch_triplets(bmd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All triplets of a batch: positive = the nearest other sample in BMD, negatives = every sample farther.

    Args:
        bmd: (B,) BMDs; NaN entries are never used.

    Returns:
        Index tensors (T,), (T,), (T,) of anchors, positives and negatives.
    """
    valid = torch.isfinite(bmd)
    gap = (bmd[:, None] - bmd[None, :]).abs()                               # (B, B)
    usable = valid[:, None] & valid[None, :] & ~torch.eye(len(bmd), dtype=torch.bool, device=bmd.device)
    gap = torch.where(usable, gap, torch.full_like(gap, float("inf")))
    pos_gap, pos = gap.min(dim=1)                                           # (B,)
    is_neg = usable & (gap > pos_gap[:, None])                              # (B, B)
    a, n = is_neg.nonzero(as_tuple=True)
    return a, pos[a], n


# --- 002: self-training with pseudo-BMDs ------------------------------------------
@dataclass(frozen=True)
class PseudoLabels:
    """Pseudo-BMDs of the unlabeled vertebrae after one round.

    Attributes:
        bmd: (U,) refined pseudo-BMD in g/cm2.
        spread: (U,) standard deviation of this round's predictions (the confidence measure).
        confident: (U,) True where the pseudo-BMD is trusted for training (spread <= max_std).
    """

    bmd: np.ndarray
    spread: np.ndarray
    confident: np.ndarray


def refine_pseudo_bmd(predictions: np.ndarray, previous: PseudoLabels | None, max_std: float,
                      momentum: float) -> PseudoLabels:
    """One self-training round's pseudo-labels.

    Args:
        predictions: (R, U) BMD predictions for U unlabeled vertebrae from R stochastic passes
            (test-time augmentations, dropout samples, ensemble members or vendors); R = 1 allowed.
        previous: last round's pseudo-labels (None in the first round).
        max_std: confidence rule, keep vertebrae whose prediction spread is at most this (g/cm2).
        momentum: weight of the previous pseudo-BMD, new = m * previous + (1 - m) * mean prediction;
            the refinement damps round-to-round oscillation of the pseudo-labels.
    """
    preds = np.atleast_2d(np.asarray(predictions, dtype=np.float64))       # (R, U)
    mean, spread = preds.mean(axis=0), preds.std(axis=0)
    bmd = mean
    if previous is not None:
        if previous.bmd.shape != mean.shape:
            raise ValueError("previous pseudo-labels cover a different set of vertebrae")
        bmd = np.where(np.isfinite(previous.bmd), momentum * previous.bmd + (1 - momentum) * mean, mean)
    confident = (spread <= max_std) & np.isfinite(bmd)
    return PseudoLabels(bmd=bmd, spread=spread, confident=confident)


def self_training(n_rounds: int, train_round: Callable[[PseudoLabels | None], M],
                  predict_unlabeled: Callable[[M], np.ndarray], max_std: float,
                  momentum: float) -> tuple[M, list[PseudoLabels]]:
    """Self-training loop of paper 002: train on labels, pseudo-label, retrain, refine, ...

    Args:
        n_rounds: pseudo-labelling rounds after the supervised round (>= 1).
        train_round: trains a model given the current pseudo-labels (None = labeled data only).
        predict_unlabeled: model -> (R, U) predictions on the unlabeled vertebrae.
        max_std, momentum: see :func:`refine_pseudo_bmd`.

    Returns:
        The last model and the pseudo-labels of every round.
    """
    model = train_round(None)
    history: list[PseudoLabels] = []
    for _ in range(n_rounds):
        pseudo = refine_pseudo_bmd(predict_unlabeled(model), history[-1] if history else None, max_std, momentum)
        history.append(pseudo)
        model = train_round(pseudo)
    return model, history


# --- 003: screening, severity, T-score ----------------------------------------------
class ScreeningHeads(nn.Module):
    """STR-Net-style heads on the image embedding: screening, severity and T-score."""

    def __init__(self, embed_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.neck = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU())
        self.screen = nn.Linear(hidden, 1)       # logit of bone loss (who_class >= 1)
        self.severity = nn.Linear(hidden, 1)     # logit of osteoporosis given bone loss (who_class == 2)
        self.tscore = nn.Linear(hidden, 1)       # T-score (SD units)

    def forward(self, p_i: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.neck(p_i)                                                  # (B, hidden)
        return {"screen_logit": self.screen(h).squeeze(-1), "severity_logit": self.severity(h).squeeze(-1),
                "tscore": self.tscore(h).squeeze(-1)}


class ScreeningModel(nn.Module):
    """Encoder + :class:`ScreeningHeads`; ``device`` is accepted and ignored (same call as the MoE model)."""

    def __init__(self, encoder: Encoder, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = ScreeningHeads(encoder.embed_dim, hidden)

    def forward(self, pool: torch.Tensor, device: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.encoder(pool))


def screening_loss(out: dict[str, torch.Tensor], who_class: torch.Tensor, t_score: torch.Tensor,
                   tscore_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE(screen) on labeled + BCE(severity) on bone-loss cases + w * MSE(T-score) on known T-scores."""
    def masked(values: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return values.mean() if values.numel() else anchor.sum() * 0.0

    has = who_class >= 0
    l_screen = masked(F.binary_cross_entropy_with_logits(
        out["screen_logit"][has].float(), (who_class[has] >= 1).float(), reduction="none"), out["screen_logit"])
    loss_cases = who_class >= 1
    l_sev = masked(F.binary_cross_entropy_with_logits(
        out["severity_logit"][loss_cases].float(), (who_class[loss_cases] == 2).float(), reduction="none"),
        out["severity_logit"])
    has_t = torch.isfinite(t_score)
    l_t = masked((out["tscore"][has_t].float() - t_score[has_t]) ** 2, out["tscore"])
    total = l_screen + l_sev + tscore_weight * l_t
    return total, {"screen": l_screen, "severity": l_sev, "tscore": l_t}


class ScreeningObjective:
    """Loss object for :func:`osteo_model.train.fit` training a :class:`ScreeningModel`."""

    def __init__(self, tscore_weight: float = 1.0) -> None:
        self.tscore_weight = tscore_weight

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = screening_loss(model(batch["pool"], batch.get("device")), batch["who_class"],
                                      batch["t_score"], self.tscore_weight)
        return total, {"loss": float(total.detach()), **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}


# --------------------------------------------------------------------------- operating point helpers


