"""Real texture pools for model tests: small ROIs whose four maps come from the texture engine.

Unlike random arrays, these pools keep the texture stage's contract (HU clipped to the window, maps
>= 1 or NaN inside the body mask, ``fill_value`` outside), so the body mask can be recovered and the
maps recomputed (fine-tuning re-imaging, :mod:`osteo_model.augment`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from features.texture import GLCMSettings, glcm_maps

SETTINGS = GLCMSettings(bin_width=25.0, kernel_radius=1)   # texture settings of these pools
SPACING = (1.0, 1.0, 1.5)                                  # mm (x, y, z)
WINDOW = (-200.0, 1500.0)                                  # HU clip (ingest.hu_window)


def roi(shape: tuple[int, int, int] = (16, 16, 12), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, body bool): an elliptic cylinder of trabecular-like HU in soft tissue, plus one isolated voxel.

    The isolated voxel ``[0, 0, 0]`` has no other mask voxel in its kernel (radius 1), so its maps are NaN.
    """
    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    x, y, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((x - (X - 1) / 2) / (0.38 * X)) ** 2 + ((y - (Y - 1) / 2) / (0.31 * Y)) ** 2 <= 1
    body[:, :, :2] = body[:, :, Z - 2:] = False
    body[0, 0, 0] = True
    hu = np.where(body, rng.normal(250, 120, shape), rng.normal(40, 20, shape))
    return np.clip(hu, *WINDOW).astype(np.float32), body


def pool(hu: np.ndarray, body: np.ndarray, settings: GLCMSettings = SETTINGS) -> np.ndarray:
    """What the texture stage writes for (hu, body): float32 (5, X, Y, Z)."""
    return np.concatenate([hu[None], glcm_maps(hu, body, settings, device="cpu").astype(np.float32)])


def write_pools(root: Path, n: int = 6, shape: tuple[int, int, int] = (16, 16, 12)) -> pd.DataFrame:
    """``n`` pools under ``root/texture/`` and their labelled per-vertebra frame (``pool_path`` relative to root)."""
    rows = []
    for i in range(n):
        p = pool(*roi(shape, seed=i))
        sha = hashlib.sha256(p.tobytes()).hexdigest()
        (Path(root) / "texture" / sha[:2]).mkdir(parents=True, exist_ok=True)
        np.save(Path(root) / "texture" / sha[:2] / f"{sha}.npy", p)
        rows.append({"pool_path": f"texture/{sha[:2]}/{sha}.npy", "pool_sha256": sha, "level": 13 + i % 4,
                     "device_vendor": ["Hologic", "GE Lunar", "MEDIX"][i % 3], "who_class": i % 3,
                     "bmd_g_cm2": 0.7 + 0.05 * i, "t_score": -2.0 + 0.3 * i})
    return pd.DataFrame(rows)
