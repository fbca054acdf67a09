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
| descriptors | with ``descriptors`` | the ``model.moe.descriptors`` columns of vertebrae.parquet (``features.roi.dxa_descriptors``), finite, never imputed |

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

``augment`` (``model.augment``, fine-tuning only): with probability ``p`` per item and epoch the raw
pool is re-imaged as another scanner would have produced it and its maps recomputed
(:mod:`osteo_model.augment`), then normalised and resampled like any pool. The draw is a pure
function of ``(seed, epoch, row)``: such a dataset is ``epoch_keyed``, :func:`osteo_model.train.fit`
feeds it keys ``row + epoch * len(dataset)``, so a resumed run and every DataLoader worker draw
exactly the augmentations of an uninterrupted run. With ``cache`` it keeps each row's raw HU and
body mask beside the prepared pool (a re-imaged item is never cached). A plain integer ``row`` is
epoch 0.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from osteo_config.model import AugmentConfig, MoEConfig, UnknownVendorError, device_index
from osteo_config.texture import GLCMSettings
from osteo_model.augment import check_fill_value, draw_reimaging, pool_mask, reimaged_pool
from osteo_model.config import POOL_CHANNELS
from osteo_model.errors import AugmentationError, DescriptorInputError, PoolIntegrityError
from osteo_model.moe import contrast_index
from osteo_model.norm import ChannelNorm



def resample_pool(pool: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    """Trilinear resampling of a (C, X, Y, Z) pool to (C, *shape); identity when ``shape`` is None or equal."""
    if shape is None or tuple(pool.shape[1:]) == tuple(shape):
        return pool
    t = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))[None]        # (1, C, X, Y, Z)
    out = F.interpolate(t, size=tuple(int(v) for v in shape), mode="trilinear", align_corners=False)
    return out[0].numpy()                                                              # (C, *shape)


def descriptor_matrix(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(rows, k) float32 of the descriptor columns ``names`` (``model.moe.descriptors``).

    Raises:
        DescriptorInputError: a column is missing or a value is not finite (named with the vertebrae;
            never imputed: re-run ingestion, which writes them for every vertebra).
    """
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DescriptorInputError(f"the vertebra table lacks the descriptor columns {missing} the model uses "
                                   "(model.moe.descriptors): re-run `osteo ingest` (features.roi.dxa_descriptors)")
    values = frame[list(names)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        keys = [c for c in ("patient_id", "study_id", "level") if c in frame.columns]
        where = frame.loc[bad, keys].head(3).to_dict("records") if keys else int(bad.sum())
        raise DescriptorInputError(f"{int(bad.sum())} vertebrae have a missing or non-finite descriptor "
                                   f"({list(names)}), e.g. {where}: re-run `osteo ingest`")
    return values.astype(np.float32)


def _flag(row: Mapping[str, Any], key: str) -> int | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else int(value)


def _num(row: Mapping[str, Any], key: str, default: float) -> float:
    value = row.get(key, default)
    return default if value is None or pd.isna(value) else float(value)


def wide_inputs(frame: pd.DataFrame, moe: MoEConfig) -> dict[str, np.ndarray]:
    """Arguments of :meth:`osteo_model.moe.MoEHead.init_wide` for the rows of ``frame``, mapped as the
    dataset maps them: raw descriptors, device and contrast indices, BMD (NaN unknown) and the
    osteoporosis label (1 = who_class 2, 0 = other class, -1 unknown)."""
    rows = [row for _, row in frame.iterrows()]
    who = np.array([int(_num(r, "who_class", -1)) for r in rows], dtype=np.int64)
    return {
        "descriptors": descriptor_matrix(frame, moe.descriptors),
        "device": np.array([device_index(moe.device_vendors, r.get("device_vendor")) for r in rows], dtype=np.int64),
        "contrast": np.array([contrast_index(_flag(r, "contrast")) for r in rows], dtype=np.int64),
        "bmd_g_cm2": np.array([_num(r, "bmd_g_cm2", float("nan")) for r in rows], dtype=np.float64),
        "osteoporotic": np.where(who < 0, -1, (who == 2).astype(np.int64)),
    }


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
        descriptors: ``model.moe.descriptors`` columns added to each item as ``descriptors``.
        augment: ``model.augment`` (None or ``p = 0``: off); needs ``glcm`` and ``spacing_mm``.
        glcm: the texture engine settings the pools were made with (``texture:``).
        spacing_mm: the pools' voxel size (``ingest.spacing_mm``).
        hu_window: ``ingest.hu_window``, the clip of re-imaged HU (None: no clip).
        seed: with ``(epoch, row)`` seeds each item's draw (``train.seed``).

    Each item: ``pool`` (C, X, Y, Z) float32, ``device`` long, ``contrast`` long, ``who_class``
    long (-1 unknown), ``bmd`` float (NaN unknown), ``t_score`` float (NaN
    unknown), ``level`` long (0 unknown), ``index`` long (row position).
    """

    def __init__(self, frame: pd.DataFrame, root: Path, norm: ChannelNorm | None = None,
                 device_vendors: Sequence[str] = ("Hologic", "GE Lunar", "MEDIX"), verify: bool = False,
                 input_shape: Sequence[int] | None = None, cache: bool = False,
                 descriptors: Sequence[str] = (), augment: AugmentConfig | None = None,
                 glcm: GLCMSettings | None = None, spacing_mm: Sequence[float] | None = None,
                 hu_window: Sequence[float] | None = None, seed: int = 0) -> None:
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
        self.descriptors = tuple(descriptors)
        self._desc = descriptor_matrix(self.frame, self.descriptors) if self.descriptors else None
        self.augment = augment if augment is not None and augment.enabled else None
        # a re-imaged scan changes the HU-linear descriptors exactly as ingestion would have measured them
        self._path = (descriptor_matrix(self.frame, ["proj_path_mm"])[:, 0]
                      if self.augment is not None and "proj_hu_mm" in self.descriptors else None)
        if self.augment is not None and (glcm is None or spacing_mm is None):
            raise AugmentationError("model.augment.p > 0 needs the texture settings (glcm) and the pools' spacing_mm "
                                    "to recompute the maps: pass spec.glcm and spec.geometry['spacing_mm']")
        if self.augment is not None:
            check_fill_value(glcm.fill_value)
        self.glcm = glcm
        self.spacing_mm = None if spacing_mm is None else tuple(float(v) for v in spacing_mm)
        self.hu_window = None if hu_window is None else tuple(float(v) for v in hu_window)
        self.seed = int(seed)
        self._raw: dict[int, tuple[np.ndarray, np.ndarray]] = {}    # row -> (HU (X, Y, Z), body mask), augmenting
        # what an item reads of its row, read once (a pandas row look-up per item cost ~0.4 ms, ~3 s per demo
        # fine-tuning); the frame's values, converted as _flag / _num convert them
        self._rows = self.frame.to_dict("records")
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
        row = self._rows[i]
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

    @property
    def epoch_keyed(self) -> bool:
        """True when items depend on the epoch (augmentation on): keys are ``row + epoch * len(self)``."""
        return self.augment is not None

    @property
    def multiprocessing_context(self) -> str | None:
        """``spawn`` when augmenting: the maps are recomputed with numba, whose GNU OpenMP thread pool kills a
        forked child of a process that already used it ("fork() called from a process already using GNU
        OpenMP"); fresh worker processes are safe whatever the parent ran. None: the loader's default."""
        return "spawn" if self.augment is not None else None

    def item_rng(self, epoch: int, i: int) -> np.random.Generator:
        """The generator of row ``i``'s augmentation draw in ``epoch``: a function of (seed, epoch, row) only."""
        return np.random.default_rng([self.seed % 2**63, int(epoch), int(i)])

    def _prepare(self, raw: np.ndarray) -> np.ndarray:
        pool = raw if self.norm is None else self.norm.transform(raw)
        return resample_pool(pool, self.input_shape)               # (5, *input_shape)

    def _descriptors(self, i: int, draw) -> np.ndarray:
        """Row ``i``'s descriptors; under a re-imaging draw HU' = a HU + b, the HU-linear ones follow it:
        ``shell_hu' = a shell_hu + b`` and ``proj_hu_mm' = a proj_hu_mm + b proj_path_mm``
        (:func:`features.roi.dxa_descriptors`); sizes do not change, and blur and zero-mean noise leave
        these means unchanged to first order."""
        d = self._desc[i]
        if draw is None or (draw.hu_slope == 1.0 and draw.hu_offset_hu == 0.0):
            return d
        d = d.copy()
        a, b = np.float32(draw.hu_slope), np.float32(draw.hu_offset_hu)
        for k, name in enumerate(self.descriptors):
            if name == "shell_hu":
                d[k] = a * d[k] + b
            elif name == "proj_hu_mm":
                d[k] = a * d[k] + b * self._path[i]
        return d

    def _hu_mask(self, i: int, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i``'s raw HU (X, Y, Z) and the body mask recovered from its maps (cached with ``cache``)."""
        hit = self._raw.get(i)
        if hit is None:
            raw = self.load_pool(i) if raw is None else raw
            hit = (np.ascontiguousarray(raw[0]), pool_mask(raw, self.glcm.fill_value))
            if self.cache:                                         # what a re-imaging needs, not the maps
                self._raw[i] = hit
        return hit

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(key), len(self)) if self.epoch_keyed else (0, int(key))
        row = self._rows[i]
        pool, raw = self._cache.get(i), None
        if pool is None:
            raw = self.load_pool(i)                                # (5, X, Y, Z)
            pool = self._prepare(raw)
            if self.cache:
                self._cache[i] = pool
        draw = None if self.augment is None else draw_reimaging(self.augment, self.item_rng(epoch, i))
        if draw is not None:
            hu, mask = self._hu_mask(i, raw)
            pool = self._prepare(reimaged_pool(hu, mask, self.spacing_mm, draw, self.glcm, self.hu_window))
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
            **({} if self._desc is None else {"descriptors": torch.from_numpy(self._descriptors(i, draw))}),
        }

    def iter_raw_pools(self):
        """Yield raw pools in row order (for :meth:`ChannelNorm.fit` on the training split)."""
        for i in range(len(self)):
            yield self.load_pool(i)
