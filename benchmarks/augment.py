"""Cost of fine-tuning re-imaging per item (not a test).

    python benchmarks/augment.py [--shape 48 48 32] [--items 50] [--profile demo]

What is timed: :func:`osteo_model.augment.augment_pool` with ``p = 1`` and the profile's
``model.augment`` ranges on a vertebra-like ROI (``synthetic_vertebra``, body mask ~42 % of the box)
whose pool the texture engine made with the profile's ``texture:`` settings: mask recovery, blur,
noise, calibration, clip and the four maps recomputed (numba, CPU). Then the same items through
:class:`~osteo_model.data.TexturePoolDataset` (cached raw pool, + ChannelNorm + resampling to
``model.input_shape``), the per-item cost a fine-tuning epoch pays for a re-imaged vertebra. Median
over items after one warm-up call (numba's compiled kernels load from its cache once per process).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.texture import glcm_maps
from osteo_config import load_config
from osteo_model.augment import augment_pool
from osteo_model.data import TexturePoolDataset
from osteo_model.norm import ChannelNorm
from osteo_testing.texture_reference import synthetic_vertebra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 48, 32))
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--profile", default="demo")
    args = ap.parse_args()
    cfg = load_config(profile=args.profile)
    spec = cfg.experiment()
    aug = dataclasses.replace(cfg.model.augment, p=1.0)                 # every item re-imaged
    hu, body = synthetic_vertebra(tuple(args.shape), seed=0)
    pool = np.concatenate([hu[None], glcm_maps(hu, body, spec.glcm, device="cpu").astype(np.float32)])
    spacing, window = spec.geometry["spacing_mm"], spec.geometry["hu_window"]
    augment_pool(pool, spacing, spec.glcm, aug, np.random.default_rng(0), window)            # warm-up
    times = []
    for i in range(args.items):
        t = time.perf_counter()
        augment_pool(pool, spacing, spec.glcm, aug, np.random.default_rng(i), window)
        times.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        sha = hashlib.sha256(pool.tobytes()).hexdigest()
        np.save(Path(tmp) / f"{sha}.npy", pool)
        frame = pd.DataFrame({"pool_path": [f"{sha}.npy"]})
        ds = TexturePoolDataset(frame, Path(tmp), ChannelNorm.fit([pool]), input_shape=cfg.model.input_shape,
                                cache=True, augment=aug, glcm=spec.glcm, spacing_mm=spacing, hu_window=window,
                                seed=spec.finetune.seed)
        ds[0]
        item = []
        for e in range(1, args.items + 1):
            t = time.perf_counter()
            ds[e * len(ds)]                                                         # epoch e, row 0
            item.append(time.perf_counter() - t)
    print(f"shape {tuple(args.shape)}, mask voxels {int(body.sum())}, kernel radius {spec.glcm.kernel_radius}, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}, load {os.getloadavg()[0]:.1f}")
    print(f"augment_pool: median {1e3 * statistics.median(times):.1f} ms / item")
    print(f"dataset item (re-imaged, + norm + resample to {cfg.model.input_shape}): "
          f"median {1e3 * statistics.median(item):.1f} ms / item")


if __name__ == "__main__":
    main()
