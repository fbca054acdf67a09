"""Per-channel normalisation of the texture pool, fitted on the training split only.

The five pool members live on very different scales (HU in hundreds,
Autocorrelation in thousands of gray-level units, DifferenceAverage in single
digits), so each channel is standardised with its own mean and standard
deviation. The statistics must come from the **training split only** (fitting
on validation/test data leaks their distribution into the model); they are
saved with every checkpoint and model so inference applies the same transform.
Non-finite voxels (e.g. a NaN fill value outside the body mask) are ignored by
``fit`` and mapped to 0 (= the channel mean) by ``transform``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from osteo_model.config import POOL_CHANNELS
from osteo_model.errors import NotFittedError

STD_FLOOR = 1e-6


@dataclass(frozen=True)
class ChannelNorm:
    """Per-channel standardisation ``(x - mean_c) / std_c``.

    Attributes:
        mean: (C,) channel means over finite voxels of the training pools.
        std: (C,) channel standard deviations (floored at 1e-6).
        channels: channel names, in pool order.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: tuple[str, ...] = POOL_CHANNELS

    @classmethod
    def fit(cls, pools: Iterable[np.ndarray], channels: tuple[str, ...] = POOL_CHANNELS) -> "ChannelNorm":
        """Fit on an iterable of (C, X, Y, Z) pools (streamed: combines per-pool moments, Chan et al.).

        Raises:
            NotFittedError: no pool, or a channel without any finite voxel.
        """
        n = mean = m2 = None
        for pool in pools:
            x = np.asarray(pool, dtype=np.float64).reshape(len(channels), -1)   # (C, V)
            finite = np.isfinite(x)
            nb = finite.sum(axis=1).astype(np.float64)                        # (C,)
            xs = np.where(finite, x, 0.0)
            mb = np.divide(xs.sum(axis=1), nb, out=np.zeros_like(nb), where=nb > 0)
            m2b = (np.where(finite, x - mb[:, None], 0.0) ** 2).sum(axis=1)
            if n is None:
                n, mean, m2 = nb, mb, m2b
                continue
            tot = n + nb
            delta = mb - mean
            safe = np.where(tot > 0, tot, 1.0)
            mean = mean + delta * nb / safe
            m2 = m2 + m2b + delta**2 * n * nb / safe
            n = tot
        if n is None or (n == 0).any():
            raise NotFittedError("ChannelNorm.fit saw no pools or a channel with no finite voxel; check the training split")
        std = np.sqrt(np.maximum(m2 / n, 0.0))
        return cls(tuple(float(v) for v in mean), tuple(float(max(v, STD_FLOOR)) for v in std), tuple(channels))

    def transform(self, pool: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Standardise a (C, X, Y, Z) or (B, C, X, Y, Z) pool; returns float32 of the same kind."""
        c_axis = pool.ndim - 4
        shape = [1] * pool.ndim
        shape[c_axis] = len(self.mean)
        if pool.shape[c_axis] != len(self.mean):
            raise ValueError(f"pool has {pool.shape[c_axis]} channels, the normaliser {len(self.mean)}")
        if isinstance(pool, torch.Tensor):
            m = torch.tensor(self.mean, dtype=torch.float32, device=pool.device).reshape(shape)
            s = torch.tensor(self.std, dtype=torch.float32, device=pool.device).reshape(shape)
            out = (pool.float() - m) / s
            return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        m = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        s = np.asarray(self.std, dtype=np.float32).reshape(shape)
        out = ((np.asarray(pool, dtype=np.float32) - m) / s).astype(np.float32, copy=False)
        out[~np.isfinite(out)] = 0.0      # = nan_to_num(nan=0, posinf=0, neginf=0), ~5x cheaper per pool
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain-python state for checkpoints and model bundles."""
        return {"mean": list(self.mean), "std": list(self.std), "channels": list(self.channels)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ChannelNorm":
        return cls(tuple(state["mean"]), tuple(state["std"]), tuple(state["channels"]))
