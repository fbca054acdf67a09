"""Per-vertebra quality flags that exclude a level from the patient decision (pure numpy).

Input: the ordinal level mask (T1..L6 = 1..18, METHOD.md §1) and the CT, both on
one RAS grid (x right, y anterior, z superior; index order (x, y, z)) with known
spacing, plus the vertebral *bodies* per level. A TotalSegmentator / VerSe label
covers the posterior elements too: pass ``bodies`` from
:func:`features.roi.body_mask` (the same body rule as training, no second copy);
without ``bodies`` each label is taken as a body-only mask.

Flags (each a :class:`QualityFlag` with a :class:`FlagKind` and a reason string):

- **label_order**: segmenters swap neighbouring vertebrae in 1-2 % of cases. The
  body centroids of consecutive present levels must descend along z (cranial ->
  caudal), and a level's body may be at most ``height_tolerance`` shorter than
  the level above (bodies grow caudally to ~L3; a fractured level is judged by
  the fracture flag instead, not here).
  A body with partial coverage gets no fracture or height-order call: its
  heights are the field of view's, not the bone's.
- **suspected_fracture**: Genant semi-quantitative grading (Genant 1993) from
  the anterior (Ha), middle (Hm) and posterior (Hp) body heights, measured in
  the mid-sagittal slab at ``wall_fraction`` of the AP depth inside each wall:
  wedge 1 - Ha/Hp, biconcave 1 - Hm/max(Ha, Hp), crush 1 - Hp/Ha (posterior
  collapse), and against the neighbours 1 - max(H)/median(max(H) of adjacent
  levels). The largest reduction r is graded: mild (grade 1) >= fracture_mild,
  moderate (2) >= fracture_moderate, severe (3) >= fracture_severe.
- **metal**: share of body voxels above ``metal_hu`` >= ``metal_share``
  (pedicle screws, vertebroplasty cement, which also corrupt BMD).
- **partial_coverage**: the body touches the array edge or a voxel outside the
  reconstruction circle (HU <= ``out_of_fov_hu``): part of the body is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

import numpy as np

from osteo_config.screen import QualityConfig

LEVEL_NAMES = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)])   # ordinal 1..18
_AXES = ("x (left-right)", "y (posterior-anterior)", "z (inferior-superior)")


class QualityInputError(ValueError):
    """Mask, CT, bodies or spacing do not fit together (the message says what to fix)."""


class FlagKind(str, Enum):
    """Why a vertebra is excluded (the string value is what tables and reports carry)."""

    LABEL_ORDER = "label_order"
    FRACTURE = "suspected_fracture"
    METAL = "metal"
    PARTIAL = "partial_coverage"


@dataclass(frozen=True)
class QualityFlag:
    """One reason to exclude one level."""

    level: int            # ordinal 1..18
    kind: FlagKind
    reason: str           # human-readable, with the measured value and the threshold
    value: float          # the measured quantity (reduction, share, mm, ...)


@dataclass(frozen=True)
class BodyGeometry:
    """Measurements of one vertebral body (mm, RAS)."""

    level: int
    voxels: int
    centroid_mm: tuple[float, float, float]
    heights_mm: tuple[float, float, float]      # (anterior, middle, posterior)
    metal_share: float
    touches: tuple[str, ...]                    # where it meets the FOV: "x-", "z+", "outside-fov"


@dataclass(frozen=True)
class QualityReport:
    """Geometry of every present level and the flags raised."""

    geometry: Mapping[int, BodyGeometry]
    flags: tuple[QualityFlag, ...] = field(default_factory=tuple)

    def excluded(self) -> dict[int, list[QualityFlag]]:
        """Level -> its flags (levels without flags are absent)."""
        out: dict[int, list[QualityFlag]] = {}
        for f in self.flags:
            out.setdefault(f.level, []).append(f)
        return out


def level_name(level: int) -> str:
    return LEVEL_NAMES[level - 1] if 1 <= level <= len(LEVEL_NAMES) else f"label{level}"


def genant_grade(reduction: float, cfg: QualityConfig) -> int:
    """Genant grade 0-3 of a height reduction (fraction) with the thresholds of ``cfg``."""
    if reduction >= cfg.fracture_severe:
        return 3
    if reduction >= cfg.fracture_moderate:
        return 2
    return 1 if reduction >= cfg.fracture_mild else 0


def body_heights(body: np.ndarray, spacing: np.ndarray, wall_fraction: float) -> tuple[float, float, float]:
    """(anterior, middle, posterior) height in mm of a body mask (x, y, z), RAS.

    Heights are voxel counts along z times the z spacing, taken at three AP
    positions of the mid-sagittal slab (the central fifth of the body's width)
    and reduced with the median over the slab's columns.
    """
    xs, ys, _ = np.nonzero(body)
    cx = int(round(xs.mean()))
    half = max(1, int(round(0.1 * (xs.max() - xs.min() + 1))))
    slab = body[max(cx - half, 0): cx + half + 1]                        # (sx, Y, Z)
    y0, y1 = ys.min(), ys.max()                                          # posterior, anterior wall (RAS +y)
    depth = y1 - y0
    picks = (y1 - wall_fraction * depth, 0.5 * (y0 + y1), y0 + wall_fraction * depth)
    out = []
    for y in picks:
        cols = slab[:, int(round(y)), :].sum(axis=1)                     # (sx,) voxels along z per column
        cols = cols[cols > 0]
        out.append(float(np.median(cols)) * float(spacing[2]) if cols.size else 0.0)
    return out[0], out[1], out[2]


def _touches(body: np.ndarray, outside: np.ndarray, origin: tuple[int, int, int], shape: tuple[int, ...]) -> list[str]:
    """Faces of the full array the body reaches, and 'outside-fov' if it neighbours an out-of-FOV voxel."""
    where = []
    idx = np.nonzero(body)
    for ax in range(3):
        g = idx[ax] + origin[ax]
        if g.min() == 0:
            where.append("xyz"[ax] + "-")
        if g.max() == shape[ax] - 1:
            where.append("xyz"[ax] + "+")
    near = np.zeros_like(outside)                                       # 6-neighbour dilation of `outside`
    for ax in range(3):
        for step in (1, -1):
            near |= np.roll(outside, step, axis=ax)
    if np.any(body & (near | outside)):
        where.append("outside-fov")
    return where


def _crop(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def measure_bodies(levels: np.ndarray, ct: np.ndarray, spacing: tuple[float, float, float], cfg: QualityConfig,
                   bodies: Mapping[int, np.ndarray] | None = None) -> dict[int, BodyGeometry]:
    """Geometry, metal share and FOV contact of every level present in ``levels``."""
    levels, ct = np.asarray(levels), np.asarray(ct)
    sp = np.asarray(spacing, dtype=float)
    if levels.shape != ct.shape or levels.ndim != 3:
        raise QualityInputError(f"level mask {levels.shape} and CT {ct.shape} must be the same 3-D grid: resample the mask")
    if sp.shape != (3,) or np.any(sp <= 0):
        raise QualityInputError(f"spacing {tuple(sp)} must be 3 positive mm values")
    present = [int(v) for v in np.unique(levels) if v > 0]
    out = {}
    for lv in present:
        body = levels == lv if bodies is None or lv not in bodies else np.asarray(bodies[lv], dtype=bool)
        if body.shape != levels.shape:
            raise QualityInputError(f"body of {level_name(lv)} has shape {body.shape}, the mask {levels.shape}")
        if not body.any():
            continue
        box = _crop(body)
        b, c = body[box], ct[box]
        origin = tuple(s.start for s in box)
        idx = np.argwhere(b)
        centroid = tuple(float(v) for v in (idx.mean(axis=0) + origin) * sp)
        # outside the crop counts as not out-of-FOV; the array border is handled by index
        touches = _touches(b, c <= cfg.out_of_fov_hu, origin, levels.shape)
        out[lv] = BodyGeometry(level=lv, voxels=int(b.sum()), centroid_mm=centroid,
                               heights_mm=body_heights(b, sp, cfg.wall_fraction),
                               metal_share=float(np.mean(c[b] > cfg.metal_hu)), touches=tuple(touches))
    return out


def _fracture(g: BodyGeometry, neighbours: list[BodyGeometry], cfg: QualityConfig) -> QualityFlag | None:
    ha, hm, hp = g.heights_mm
    if min(ha, hm, hp) <= 0:
        return QualityFlag(g.level, FlagKind.FRACTURE, f"{level_name(g.level)}: a body height is 0 mm "
                           f"(heights {ha:.1f}/{hm:.1f}/{hp:.1f} mm): collapsed or mis-segmented body", 1.0)
    shapes = {"wedge (anterior/posterior)": 1 - ha / hp, "biconcave (middle/max)": 1 - hm / max(ha, hp),
              "crush (posterior/anterior)": 1 - hp / ha}
    if neighbours:
        ref = float(np.median([max(n.heights_mm) for n in neighbours]))
        shapes["crush vs adjacent levels"] = 1 - max(g.heights_mm) / ref
    kind, r = max(shapes.items(), key=lambda kv: kv[1])
    grade = genant_grade(r, cfg)
    if grade == 0:
        return None
    word = {1: "mild", 2: "moderate", 3: "severe"}[grade]
    limit = {1: cfg.fracture_mild, 2: cfg.fracture_moderate, 3: cfg.fracture_severe}[grade]
    return QualityFlag(g.level, FlagKind.FRACTURE,
                       f"{level_name(g.level)}: suspected fracture, Genant grade {grade} ({word}): {kind} height "
                       f"reduction {r:.0%} >= {limit:.0%} (heights A/M/P {ha:.1f}/{hm:.1f}/{hp:.1f} mm)", float(r))


def assess_vertebrae(levels: np.ndarray, ct: np.ndarray, spacing: tuple[float, float, float], cfg: QualityConfig,
                     bodies: Mapping[int, np.ndarray] | None = None) -> QualityReport:
    """Quality flags of every level of one study.

    Args:
        levels: (X, Y, Z) int ordinal level mask (0 background, 1..18 T1..L6), RAS.
        ct: (X, Y, Z) HU on the same grid.
        spacing: voxel size (mm) along x, y, z.
        cfg: thresholds (``ScreenConfig.quality``).
        bodies: level -> (X, Y, Z) bool body mask (posterior elements removed); None: labels are bodies.

    Returns:
        :class:`QualityReport`; a level may carry several flags.

    Raises:
        QualityInputError: shapes or spacing do not fit.
    """
    geo = measure_bodies(levels, ct, spacing, cfg, bodies)
    order = sorted(geo)
    flags: list[QualityFlag] = []
    fractured: set[int] = set()
    for i, lv in enumerate(order):
        g = geo[lv]
        # a cut body's heights are not its own: no fracture call on it, and it is no reference for its neighbours
        adjacent = [geo[order[j]] for j in (i - 1, i + 1)
                    if 0 <= j < len(order) and abs(order[j] - lv) == 1 and not geo[order[j]].touches]
        f = None if g.touches else _fracture(g, adjacent, cfg)
        if f is not None:
            flags.append(f)
            fractured.add(lv)
        if g.metal_share >= cfg.metal_share:
            flags.append(QualityFlag(lv, FlagKind.METAL, f"{level_name(lv)}: {g.metal_share:.2%} of body voxels above "
                                     f"{cfg.metal_hu:.0f} HU (limit {cfg.metal_share:.2%}): metal or hardware",
                                     g.metal_share))
        if g.touches:
            flags.append(QualityFlag(lv, FlagKind.PARTIAL, f"{level_name(lv)}: body touches the field of view at "
                                     f"{', '.join(g.touches)}: partial coverage", float(len(g.touches))))
    for upper, lower in zip(order, order[1:]):
        gu, gl = geo[upper], geo[lower]
        dz = gu.centroid_mm[2] - gl.centroid_mm[2]            # > 0: the upper level lies cranially, as it must
        if dz <= 0:
            for lv, other in ((upper, lower), (lower, upper)):
                flags.append(QualityFlag(lv, FlagKind.LABEL_ORDER,
                                         f"{level_name(lv)}: body centroid not cranio-caudal with {level_name(other)} "
                                         f"({level_name(upper)} lies {-dz:.1f} mm below {level_name(lower)}): "
                                         f"labels swapped?", float(dz)))
            continue
        hu, hl = max(gu.heights_mm), max(gl.heights_mm)
        judged = not ({upper, lower} & fractured) and not (gu.touches or gl.touches)
        if judged and hl < (1 - cfg.height_tolerance) * hu:
            for lv in (upper, lower):
                flags.append(QualityFlag(lv, FlagKind.LABEL_ORDER,
                                         f"{level_name(lv)}: {level_name(lower)} body {hl:.1f} mm is > "
                                         f"{cfg.height_tolerance:.0%} shorter than {level_name(upper)} {hu:.1f} mm: "
                                         f"labels out of order?", float(hl / hu)))
    return QualityReport(geometry=geo, flags=tuple(flags))
