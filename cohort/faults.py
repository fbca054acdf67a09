"""Deliberately broken inputs, to exercise validation and quarantine downstream.

Faults are assigned over the whole list of CT studies of a run (systematic
sampling without replacement, at least one of each kind whose fraction is
> 0 when there are enough studies) and recorded in ``truth/faults.csv``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cohort.config import FAULT_KINDS


def assign_faults(n_studies: int, fractions: dict[str, float], rng: np.random.Generator,
                  min_levels: list[int] | None = None) -> list[str | None]:
    """One fault kind (or None) per study.

    Args:
        n_studies: number of CT studies in the run (in a fixed order).
        fractions: fault kind -> fraction of studies.
        rng: generator seeded from the cohort seed only.
        min_levels: covered level count per study; ``missing_level`` needs >= 3.

    Returns:
        A list aligned with the studies.
    """
    out: list[str | None] = [None] * n_studies
    free = list(rng.permutation(n_studies))
    for kind in FAULT_KINDS:
        frac = fractions.get(kind, 0.0)
        if frac <= 0:
            continue
        want = max(1, int(round(frac * n_studies)))
        picked = 0
        for i in list(free):
            if picked >= want or len(free) <= 1:                 # keep at least one clean study
                break
            if kind == "missing_level" and min_levels is not None and min_levels[i] < 3:
                continue
            out[i] = kind
            free.remove(i)
            picked += 1
    return out


def perturb_mask_affine(affine: np.ndarray, fault: str | None, rng: np.random.Generator) -> np.ndarray:
    """The mask's affine under a geometric fault (voxel data unchanged)."""
    a = affine.copy()
    if fault == "flipped_orientation":
        a[:3, 0] *= -1.0                                  # one axis flipped, origin kept
    elif fault == "misaligned_mask":
        shift = rng.uniform(5.0, 12.0) * np.eye(3)[int(rng.integers(3))] * (1 if rng.random() < 0.5 else -1)
        a[:3, 3] += shift
    elif fault == "wrong_spacing":
        ax = int(rng.integers(3))
        a[:3, ax] *= float(rng.choice([0.5, 1.25, 1.5, 2.0]))
    return a


def drop_level(labels: np.ndarray, levels: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Delete one level strictly inside the covered range (a gap in the label sequence)."""
    inner = list(levels[1:-1])
    lv = int(inner[int(rng.integers(len(inner)))])
    out = labels.copy()
    out[out == lv] = 0
    return out, lv


def corrupt_file(path: Path, rng: np.random.Generator) -> None:
    """Truncate a file and append garbage bytes (a broken transfer)."""
    data = path.read_bytes()
    keep = max(16, int(len(data) * rng.uniform(0.2, 0.6)))
    path.write_bytes(data[:keep] + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
