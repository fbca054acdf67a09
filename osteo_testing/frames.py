"""Vertebra-table helpers for model tests that build their frames by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd

from features.roi import DESCRIPTOR_CHOICES


def with_descriptors(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``frame`` plus plausible values of every descriptor column ingestion writes (features.roi.dxa_descriptors).

    Sizes of a lumbar body (width 38-50 mm, height 22-28 mm, depth 28-36 mm), a shell ~250 HU above a
    150 HU core and the AP projection of that column; seeded, so a test is reproducible.
    """
    rng = np.random.default_rng(seed)
    n = len(frame)
    width, height, depth = rng.uniform(38, 50, n), rng.uniform(22, 28, n), rng.uniform(28, 36, n)
    values = {"shell_hu": 400 + rng.normal(0, 30, n), "proj_hu_mm": 150 * depth + rng.normal(0, 300, n),
              "proj_path_mm": depth + rng.uniform(0, 6, n),
              "proj_area_mm2": width * height, "body_height_mm": height, "body_width_mm": width,
              "body_depth_mm": depth, "body_voxels": (width * height * depth * 0.8).astype(np.int64)}
    assert set(values) == set(DESCRIPTOR_CHOICES)
    return frame.assign(**values)
