"""SwAV and TP-SwAV pretraining: projection head, prototypes, swapped prediction (paper Eq. 1).

Notation of paper 001 §2.1: P_s, P_t are L2-normalised embeddings of two views
of one vertebra, C_1..C_K the prototypes, Q_s, Q_t the Sinkhorn codes, tau the
temperature. Both views go through the same encoder and projection head.

Clustering regularisation ("a clustering regularization term ensures
prototype diversity", §2.1; the paper gives no formula). We use the
**uniformity** of the prototypes on the unit sphere (Wang & Isola, 2020):

    L_div = log( 1/(K(K-1)) * sum_{i != j} exp(-t * ||C_i - C_j||^2) ),  t = 2

It is smallest when prototypes spread evenly over the sphere, is defined for
any K (also K > dimension, where orthogonality is impossible) and acts on the
prototypes directly, whereas Sinkhorn's equipartition only acts on the codes.
Total pretraining loss: ``L_ssl + diversity_weight * L_div``.

Queue (SwAV §4 / reference code, "small batches"). Sinkhorn's equipartition
makes every prototype carry 1/K of the batch's mass, so with a batch B < K no
code can put more than B/K on one prototype: the targets are forced to be
diffuse. With ``queue_length = L > 0`` the projections of the last L samples of
each view (no gradient, scored against the *current* prototypes) join the
batch inside Sinkhorn, the codes are read for the batch rows only, and a code
may then reach min(1, (B + L)/K). The queue is per process and is not part of
the checkpoint: a resumed run refills it (SwAV's reference code does the same
within an epoch's start).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from osteo_model.backbones import Encoder
from osteo_model.config import SwAVConfig
from osteo_model.sinkhorn import sinkhorn
from osteo_model.views import crop_views, step_generator, tp_views


def swapped_prediction_loss(scores_s: torch.Tensor, scores_t: torch.Tensor, q_s: torch.Tensor,
                            q_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1, averaged over the batch.

    L_ssl = - sum_k Q_s^(k) log softmax_k(P_t^T C / tau) - sum_k Q_t^(k) log softmax_k(P_s^T C / tau)

    Args:
        scores_s, scores_t: (B, K) prototype scores P^T C_k of views s and t.
        q_s, q_t: (B, K) codes of views s and t (targets, no gradient).
        temperature: tau.

    Returns:
        Scalar loss: the sum of both swapped terms (as written in Eq. 1; the SwAV
        reference code averages the two, a constant factor 1/2).
    """
    log_p_t = F.log_softmax(scores_t / temperature, dim=1)     # (B, K)
    log_p_s = F.log_softmax(scores_s / temperature, dim=1)     # (B, K)
    return -(q_s * log_p_t).sum(dim=1).mean() - (q_t * log_p_s).sum(dim=1).mean()


def prototype_uniformity(prototypes: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Clustering regulariser L_div (module doc): log of the mean Gaussian potential between prototypes.

    Args:
        prototypes: (K, D) prototype vectors (rows unit-norm in SwAV).
        t: potential sharpness (Wang & Isola use 2).
    """
    K = prototypes.shape[0]
    sq = (prototypes * prototypes).sum(dim=1)                  # (K,)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * prototypes @ prototypes.T).clamp_min(0)  # (K, K)
    off = ~torch.eye(K, dtype=torch.bool, device=prototypes.device)
    return torch.logsumexp(-t * d2[off], dim=0) - math.log(K * (K - 1))


class ProjectionHead(nn.Module):
    """MLP from the encoder embedding to the prototype space; output L2-normalised."""

    def __init__(self, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)                  # (B, out_dim), ||P|| = 1


class SwAVModel(nn.Module):
    """Encoder + projection head + K prototypes (a bias-free linear layer, rows kept unit-norm).

    Training hooks called by :func:`osteo_model.train.fit`:
    ``on_after_backward(step)`` drops prototype gradients while ``step <
    freeze_prototypes_steps`` (SwAV's trick against early collapse; a ``None``
    gradient also skips AdamW's weight decay, so frozen prototypes stay
    bit-identical), and ``on_step_end(step)`` re-normalises prototype rows after
    every step in which they were updated.
    """

    def __init__(self, encoder: Encoder, cfg: SwAVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = ProjectionHead(encoder.embed_dim, cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.n_prototypes, bias=False)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight                              # (K, D)
        w.copy_(F.normalize(w, dim=1))

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (N, C, X, Y, Z), channel_ids (N, C). Returns scores (N, K) = P^T C_k and P (N, D)."""
        p = self.projector(self.encoder(x, channel_ids))       # (N, D)
        return self.prototypes(p), p                           # (N, K), (N, D)

    def on_after_backward(self, step: int) -> None:
        if step < self.cfg.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def on_step_end(self, step: int) -> None:
        if step >= self.cfg.freeze_prototypes_steps:
            self.normalize_prototypes()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def queued_codes(scores: torch.Tensor, queue_scores: torch.Tensor | None, n_iters: int, epsilon: float) -> torch.Tensor:
    """Sinkhorn codes of the batch rows, with the queue's rows joining the transport problem.

    Args:
        scores: (B, K) prototype scores of the batch.
        queue_scores: (L, K) scores of queued projections against the current prototypes, or None.

    Returns:
        (B, K) codes, rows summing to 1.
    """
    if queue_scores is None or queue_scores.shape[0] == 0:
        return sinkhorn(scores, n_iters, epsilon)
    L = queue_scores.shape[0]
    return sinkhorn(torch.cat([queue_scores.to(scores.dtype), scores.detach()]), n_iters, epsilon)[L:]


class SwAVObjective:
    """Pretraining loss object for :func:`osteo_model.train.fit` (TP-SwAV or the SwAV baseline).

    Args:
        cfg: ``model.swav`` section.
        method: ``tp_swav`` (texture-pool views) or ``swav`` (large random crops of the 5-channel pool).
        seed: base seed of the view sampling (combined with the step and rank).
        hu_std: standard deviation of HU in the pool normaliser (``ChannelNorm.std[0]``, HU), to turn
            ``view_noise_hu`` (HU) into normalised units; None = no noise.
    """

    def __init__(self, cfg: SwAVConfig, method: str = "tp_swav", seed: int = 0, hu_std: float | None = None) -> None:
        if method not in ("tp_swav", "swav"):
            raise ValueError(f"unknown pretraining method {method!r}: use tp_swav | swav")
        self.cfg, self.method, self.seed = cfg, method, seed
        self.noise_std = 0.0 if not hu_std else cfg.view_noise_hu / hu_std   # normalised units
        self.queue: torch.Tensor | None = None                  # (2, L, D) past projections per view, newest first
        self.queue_filled = 0

    def _queue_scores(self, view: int, prototypes: torch.Tensor) -> torch.Tensor | None:
        if self.queue is None or self.queue_filled == 0:
            return None
        return self.queue[view, :self.queue_filled] @ prototypes.detach().T    # (L', K)

    @torch.no_grad()
    def _enqueue(self, p_s: torch.Tensor, p_t: torch.Tensor) -> None:
        L = self.cfg.queue_length
        if L <= 0:
            return
        if self.queue is None:
            self.queue = torch.zeros(2, L, p_s.shape[1], device=p_s.device)
        new = torch.stack([p_s, p_t]).float()                    # (2, B, D)
        self.queue = torch.cat([new, self.queue], dim=1)[:, :L]  # newest first, oldest dropped
        self.queue_filled = min(L, self.queue_filled + new.shape[1])

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pool = batch["pool"]                                    # (B, C, X, Y, Z)
        B = pool.shape[0]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g = step_generator(self.seed, step, rank)
        if self.method == "tp_swav":
            views, ids = tp_views(pool, g, self.cfg.tp_pairs, self.cfg.tp_crop_scale, self.cfg.flip,
                                  self.noise_std)               # (2B, 1, X, Y, Z), (2B, 1)
        else:
            views, ids = crop_views(pool, g, self.cfg.crop_scale, self.cfg.flip, self.noise_std)  # (2B, 5, ...)
        scores, p = model(views, ids)                           # (2B, K), (2B, D)
        scores = scores.float()
        scores_s, scores_t = scores[:B], scores[B:]             # (B, K) each
        prototypes = _unwrap(model).prototypes.weight.float()   # (K, D)
        it, eps = self.cfg.sinkhorn_iters, self.cfg.sinkhorn_eps
        q_s = queued_codes(scores_s, self._queue_scores(0, prototypes), it, eps)
        q_t = queued_codes(scores_t, self._queue_scores(1, prototypes), it, eps)
        self._enqueue(p[:B].detach(), p[B:].detach())
        l_ssl = swapped_prediction_loss(scores_s, scores_t, q_s, q_t, self.cfg.temperature)
        loss = l_ssl
        metrics = {"loss_ssl": float(l_ssl.detach())}
        if self.cfg.diversity_weight > 0:
            l_div = prototype_uniformity(_unwrap(model).prototypes.weight.float())
            loss = loss + self.cfg.diversity_weight * l_div
            metrics["loss_div"] = float(l_div.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics
