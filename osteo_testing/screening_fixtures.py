"""Synthetic inputs of the screening tests and the docs example: a small spine volume and a study result.

No real person: the identifiers are fake but PHI-shaped, so re-identification at write time is exercised.
"""
from __future__ import annotations

import numpy as np

from screening.results import LevelResult, StudyResult, VendorResult

LUMBAR = (13, 14, 15, 16, 17)            # L1..L5


def synthetic_spine(shape: tuple[int, int, int] = (64, 64, 180), height: int = 24, gap: int = 8, top: int = 10,
                    levels: tuple[int, ...] = LUMBAR, heights: dict[int, int] | None = None, arch: bool = False,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """(level mask, CT HU, level -> (z_bottom, z_top)) on a 1 mm RAS grid, first level most cranial.

    Bodies are elliptic cylinders 40 x 30 mm (x, y) centred at y = 38 (anterior = +y); with ``arch`` a ring
    around a canal behind each body (the posterior elements of a TotalSegmentator-style label).
    """
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((x - 32) / 20.0) ** 2 + ((y - 38) / 15.0) ** 2 <= 1.0
    ring = (((x - 32) / 12.0) ** 2 + ((y - 14) / 9.0) ** 2 <= 1.0) & \
           (((x - 32) / 8.0) ** 2 + ((y - 14) / 6.0) ** 2 > 1.0)
    stem = (np.abs(x - 32) <= 6) & (y >= 20) & (y <= 24)
    mask = np.zeros(shape, np.int16)
    ct = np.full(shape, 40.0, np.float32)
    spans = {}
    for i, lv in enumerate(levels):
        z1 = shape[2] - top - i * (height + gap)
        z0 = z1 - (heights or {}).get(lv, height)
        mask[:, :, z0:z1][disc] = lv
        if arch:
            mask[:, :, z0 + 4:z1 - 4][ring | stem] = lv
        spans[lv] = (z0, z1)
    ct[mask > 0] = 180.0
    if seed is not None:                                    # texture for a picture; tests use the clean volume
        rng = np.random.default_rng(seed)
        ct += rng.normal(0.0, 25.0, shape).astype(np.float32)
        bone = mask > 0
        inner = bone.copy()
        for ax in range(3):
            for step in (1, -1):
                inner &= np.roll(bone, step, axis=ax)
        ct[bone & ~inner] += 500.0                          # cortical shell
    return mask, ct, spans


def example_study_result() -> StudyResult:
    """Two measured lumbar levels read as three vendors, one suspected fracture, one metal level."""
    def level(lv: int, hologic: float) -> LevelResult:
        return LevelResult(lv, readings=(
            VendorResult("Hologic", hologic, hologic - 0.081, hologic + 0.081, round((hologic - 0.94) / 0.105, 2),
                         "osteopenia"),
            VendorResult("GE Lunar", hologic + 0.12, hologic + 0.039, hologic + 0.201,
                         round((hologic + 0.12 - 1.11) / 0.115, 2), "osteopenia"),
            VendorResult("MEDIX", hologic + 0.06, hologic - 0.021, hologic + 0.141, -1.85, "osteopenia")))
    return StudyResult(
        levels=(level(13, 0.743), level(14, 0.812),
                LevelResult(15, flags=(("suspected_fracture", "L3: suspected fracture, Genant grade 2 (moderate): "
                                        "wedge (anterior/posterior) height reduction 31% >= 25%"),)),
                LevelResult(16, flags=(("metal", "L4: 1.20% of body voxels above 2500 HU (limit 0.20%): "
                                        "metal or hardware"),))),
        model_name="osteo-screening", model_version="7", reference_version="dxa-ref-v1", interval_level=0.90,
        screen_positive=False, score=0.31, threshold=0.42, reviewer="Dr. A. Reviewer")
