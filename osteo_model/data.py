"""Texture-pool dataset: one vertebra per item, read from ``texture/<sha[:2]>/<sha>.npy``.

The frame is a per-vertebra table (texture.parquet joined with vertebrae and,
when labeled, dxa rows; see docs/data_contract.md §2-3). Columns used:

| column | required | meaning |
|---|---|---|
| ``pool_path`` | yes | pool file relative to ``root`` (float32 (5, x, y, z)) |
| ``pool_sha256`` | for ``verify`` | SHA-256 of the array bytes (or of the file) |
| ``level`` | no | 1-18 (0 / missing = unknown) |
| ``device_vendor`` | no | DXA vendor -> device index (``unknown`` / missing -> last index; any other name not in ``device_vendors`` is an :class:`UnknownVendorError` at construction) |
| ``contrast`` | no | IV contrast 0/1 -> contrast index (missing -> 2 = unknown) |
| ``who_class`` | no | 0/1/2 (missing -> -1) |
| ``bmd_g_cm2`` | no | areal BMD (missing -> NaN) |
| ``t_score`` | no | DXA T-score (missing -> NaN) |

Items are dicts of tensors so the default collate works with DataLoader
workers; the dataset holds no open file handles (each worker re-opens files).

``input_shape`` (``model.input_shape``): after normalisation (so NaN fill values
are already 0) the pool is trilinearly resampled to this grid, e.g. a 48x48x32
ROI at 1 mm to 24x24x16 (2 mm voxels, same field of view): the CPU profiles
trade texture resolution for ~6x fewer voxels. ``cache=True`` keeps the
prepared (normalised, resampled) pools in memory after their first read, which
makes every epoch after the first free of disk I/O (per process; with
``train.num_workers > 0`` the loader's workers are persistent, so each worker's
cache survives the epochs, see :func:`osteo_model.train.fit`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from osteo_config.model import UnknownVendorError, device_index
from osteo_model.config import POOL_CHANNELS
from osteo_model.errors import PoolIntegrityError
from osteo_model.moe import contrast_index
from osteo_model.norm import ChannelNorm



def resample_pool(pool: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    """Trilinear resampling of a (C, X, Y, Z) pool to (C, *shape); identity when ``shape`` is None or equal."""
    if shape is None or tuple(pool.shape[1:]) == tuple(shape):
        return pool
    t = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))[None]        # (1, C, X, Y, Z)
    out = F.interpolate(t, size=tuple(int(v) for v in shape), mode="trilinear", align_corners=False)
    return out[0].numpy()                                                              # (C, *shape)


def _flag(row: pd.Series, key: str) -> int | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else int(value)


def _num(row: pd.Series, key: str, default: float) -> float:
    value = row.get(key, default)
    return default if value is None or pd.isna(value) else float(value)


class TexturePoolDataset(Dataset):
    """Vertebra texture pools with labels.

    Args:
        frame: per-vertebra table (columns above).
        root: folder that ``pool_path`` is relative to (the texture stage output folder).
        norm: channel normaliser fitted on the training split (None: raw values).
        device_vendors: vendor names in device-index order (``model.moe.device_vendors``).
        verify: check ``pool_sha256`` the first time each file is read (per worker process).
        input_shape: (x, y, z) grid the normalised pool is resampled to (None: keep the file's grid).
        cache: keep prepared pools in memory after the first read (per process).

    Each item: ``pool`` (C, X, Y, Z) float32, ``device`` long, ``contrast`` long, ``who_class``
    long (-1 unknown), ``bmd`` float (NaN unknown), ``t_score`` float (NaN
    unknown), ``level`` long (0 unknown), ``index`` long (row position).
    """

    def __init__(self, frame: pd.DataFrame, root: Path, norm: ChannelNorm | None = None,
                 device_vendors: Sequence[str] = ("Hologic", "GE Lunar", "MEDIX"), verify: bool = False,
                 input_shape: Sequence[int] | None = None, cache: bool = False) -> None:
        if "pool_path" not in frame.columns:
            raise KeyError("frame needs a 'pool_path' column (texture.parquet); join it before building the dataset")
        self.frame = frame.reset_index(drop=True)
        self.root = Path(root)
        self.norm = norm
        self.device_vendors = tuple(device_vendors)
        self.verify = verify
        self._verified: set[str] = set()
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        if "device_vendor" in self.frame.columns:
            bad = self.frame["device_vendor"].dropna()
            bad = bad[~bad.isin([*self.device_vendors, "unknown"])]
            if len(bad):
                counts = bad.value_counts().to_dict()
                raise UnknownVendorError(f"{len(bad)} vertebrae have a DXA vendor the model does not know {counts}: "
                                         f"use one of {list(self.device_vendors)} (model.moe.device_vendors), "
                                         "or 'unknown' when the vendor is not known")

    def __len__(self) -> int:
        return len(self.frame)

    def load_pool(self, i: int) -> np.ndarray:
        """The raw (un-normalised) pool of row ``i``, shape-checked and optionally SHA-verified."""
        row = self.frame.iloc[i]
        path = self.root / str(row["pool_path"])
        try:
            pool = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PoolIntegrityError(str(path), f"cannot read the pool ({exc})") from exc
        if pool.ndim != 4 or pool.shape[0] != len(POOL_CHANNELS):
            raise PoolIntegrityError(str(path), f"shape {pool.shape} is not ({len(POOL_CHANNELS)}, x, y, z)")
        if self.verify and str(path) not in self._verified:
            expected = str(row.get("pool_sha256", ""))
            # Contract: the name is the SHA-256 of the array bytes; a file-bytes digest is accepted too.
            digests = {hashlib.sha256(np.ascontiguousarray(pool).tobytes()).hexdigest(),
                       hashlib.sha256(path.read_bytes()).hexdigest()}
            if expected not in digests:
                raise PoolIntegrityError(str(path), f"SHA-256 differs from pool_sha256 {expected[:12]}...")
            self._verified.add(str(path))
        return pool.astype(np.float32, copy=False)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.frame.iloc[i]
        pool = self._cache.get(i)
        if pool is None:
            pool = self.load_pool(i)                               # (5, X, Y, Z)
            if self.norm is not None:
                pool = self.norm.transform(pool)
            pool = resample_pool(pool, self.input_shape)           # (5, *input_shape)
            if self.cache:
                self._cache[i] = pool
        vendor = row.get("device_vendor")
        device = device_index(self.device_vendors, vendor)
        return {
            "pool": torch.from_numpy(np.ascontiguousarray(pool)),
            "device": torch.tensor(device, dtype=torch.long),
            "contrast": torch.tensor(contrast_index(_flag(row, "contrast")), dtype=torch.long),
            "who_class": torch.tensor(int(_num(row, "who_class", -1)), dtype=torch.long),
            "bmd": torch.tensor(_num(row, "bmd_g_cm2", float("nan")), dtype=torch.float32),
            "t_score": torch.tensor(_num(row, "t_score", float("nan")), dtype=torch.float32),
            "level": torch.tensor(int(_num(row, "level", 0)), dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }

    def iter_raw_pools(self):
        """Yield raw pools in row order (for :meth:`ChannelNorm.fit` on the training split)."""
        for i in range(len(self)):
            yield self.load_pool(i)
