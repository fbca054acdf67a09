"""Sinkhorn-Knopp codes for SwAV (Caron et al. 2020, §3.1; Cuturi 2013).

Given prototype scores ``z_b . c_k`` for a batch of B embeddings and K
prototypes, SwAV looks for codes Q (here B x K) that solve the entropy
regularised transport problem

    max_Q  Tr(Q^T S) + eps * H(Q)   s.t.  Q 1_K = 1/B 1_B,   Q^T 1_B = 1/K 1_K

i.e. on the transportation polytope where **every sample carries mass 1/B**
(rows sum to 1/B) and **every prototype is used equally** (columns sum to 1/K),
which forbids the trivial solution where all samples fall into one cluster. The
solution has the form Q = diag(u) exp(S/eps) diag(v); Sinkhorn-Knopp finds u, v
by alternately rescaling columns and rows. The codes returned are ``B * Q``,
so each row is a probability distribution over prototypes (rows sum to 1).

Under ``torch.distributed`` the batch is the union of all ranks' batches: the
column sums and the total mass are all-reduced so that equipartition holds over
the global batch (the guard keeps the function usable in a single process).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op: "dist.ReduceOp" = None) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=op if op is not None else dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, n_iters: int, epsilon: float) -> torch.Tensor:
    """SwAV codes by Sinkhorn-Knopp.

    Args:
        scores: (B, K) prototype scores ``z . c_k`` of this rank's batch (cosines in SwAV).
        n_iters: number of (column, row) normalisation rounds (SwAV: 3).
        epsilon: entropic regularisation (SwAV: 0.05); smaller -> harder assignments.

    Returns:
        Q: (B, K) codes, rows summing to 1 exactly; over the global batch each
        column sums to B_global / K as the iterations converge. No gradient.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    if n_iters < 1 or epsilon <= 0:
        raise ValueError(f"need n_iters >= 1 and epsilon > 0, got {n_iters}, {epsilon}")
    s = scores.detach().double() / epsilon                     # (B, K), float64 for the exp
    s_max = s.max().reshape(1)
    _all_reduce(s_max, dist.ReduceOp.MAX if _distributed() else None)
    Q = torch.exp(s - s_max)                                   # (B, K); the global shift cancels below
    B_local, K = Q.shape
    B = torch.tensor([float(B_local)], dtype=Q.dtype, device=Q.device)
    _all_reduce(B)                                             # global batch size
    total = Q.sum().reshape(1)
    Q /= _all_reduce(total)                                    # total mass 1
    for _ in range(n_iters):
        col = Q.sum(dim=0, keepdim=True)                       # (1, K) mass per prototype (global)
        Q /= _all_reduce(col)
        Q /= K                                                 # columns sum to 1/K: prototypes equally used
        row = Q.sum(dim=1, keepdim=True)                       # (B, 1) mass per sample (local rows)
        Q /= row
        Q /= B                                                 # rows sum to 1/B: every sample counts once
    return (Q * B).to(scores.dtype)                            # rows sum to 1: codes are distributions
