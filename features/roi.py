"""Vertebral-body ROIs on the isotropic grid: body mask, crop, trabecular stats.

Body-only mask (posterior elements removed), per vertebra label, on the
isotropic grid (``ingest.spacing_mm``):

1. **Opening** of the vertebra label with a ball of radius
   ``ingest.body_opening_mm`` (an ellipsoid in voxels if the spacing is not
   isotropic). Laminae, transverse and spinous processes are thinner than the
   ball's diameter and vanish; the body (>= 25 mm across) survives.
2. **Largest connected component** (face connectivity): drops fragments of
   the arch that survived the opening.
3. **Anterior to the spinal canal**: in every axial slice the canal is the hole
   that the vertebral arch encloses (2-D hole filling of the label minus the
   label), taken only where the hole lies posterior to the body's centroid.
   Voxels at or behind the canal's anterior wall (the median over slices of the
   canal's most anterior row, +y = anterior in RAS) are removed; this cuts thick
   pedicles that survive the opening. The cut is opened again with the same
   ball (it leaves thin stubs beside the wall). When no canal is found (open
   arch, label of the body only) this step is skipped.
4. Largest connected component again.

A body with fewer than ``ingest.min_body_voxels`` voxels (on the isotropic
grid) is :class:`~features.errors.VertebraTooSmallError`.

ROI: ``ingest.roi_shape`` (x, y, z) voxels centred on the body centroid
(rounded to the nearest grid node). CT is sampled with a spline of order
``ingest.ct_spline_order`` (1 linear, 3 cubic B-spline), the mask with nearest
neighbour. Outside the CT's field of view the ROI holds ``hu_window[0]`` and
body 0. ``hu`` is clipped to ``ingest.hu_window``.

Trabecular core: the body mask eroded by ``ingest.core_erosion_mm`` (the
cortical shell is ~1-2 mm thick), restricted to the field of view. The voxel
statistics (mean, std, 5/50/95th percentiles) use the *unclipped* resampled HU
of the core, so the window does not bias them. An empty core is
:class:`~features.errors.VertebraTooSmallError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from features.errors import VertebraTooSmallError
from features.geometry import grid_ratio, sample_grid
from features.io.masks import LEVEL_NAMES
from features.io.volume import Volume


@dataclass(frozen=True)
class RoiSpec:
    """What an ROI looks like (a view of :class:`features.ingest.IngestConfig`)."""

    spacing_mm: tuple[float, float, float]
    roi_shape: tuple[int, int, int]
    hu_window: tuple[float, float]
    body_opening_mm: float
    core_erosion_mm: float
    min_body_voxels: int
    ct_spline_order: int


@dataclass(frozen=True)
class VertebraROI:
    """One extracted vertebral body.

    Attributes:
        level: ordinal level 1..18.
        hu: float32 (x, y, z) HU clipped to the window.
        body: uint8 (x, y, z) body mask.
        stats: hu_mean, hu_std, hu_p05, hu_p50, hu_p95, body_voxels.
    """

    level: int
    hu: np.ndarray
    body: np.ndarray
    stats: dict[str, float]


def ellipsoid(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Boolean ball of ``radius_mm`` on a grid of ``spacing`` (an ellipsoid in voxels)."""
    r = np.maximum(np.floor(radius_mm / np.asarray(spacing, dtype=float) + 1e-9), 0).astype(int)
    zz = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    dist = sum((g * s / max(radius_mm, 1e-9)) ** 2 for g, s in zip(zz, spacing))
    return dist <= 1.0 + 1e-9


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (empty stays empty)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def canal_front(vertebra: np.ndarray, body: np.ndarray) -> float | None:
    """y index (anterior = larger) of the spinal canal's anterior wall, or None.

    Args:
        vertebra: (x, y, z) bool full vertebra label.
        body: (x, y, z) bool candidate body (after opening), used to tell the
            canal (posterior) from holes inside the body.
    """
    if not body.any():
        return None
    body_y = float(np.nonzero(body)[1].mean())
    fronts = []
    for z in range(vertebra.shape[2]):
        sl = vertebra[:, :, z]
        if not sl.any():
            continue
        holes = ndimage.binary_fill_holes(sl) & ~sl
        if not holes.any():
            continue
        lab, n = ndimage.label(holes)
        for h in range(1, n + 1):
            ys = np.nonzero(lab == h)[1]
            if ys.mean() < body_y:           # posterior to the body: the canal
                fronts.append(ys.max())
    return float(np.median(fronts)) if fronts else None


def body_mask(vertebra: np.ndarray, spacing: np.ndarray, opening_mm: float) -> np.ndarray:
    """Vertebral body of one vertebra label (rule in the module docstring).

    Args:
        vertebra: (x, y, z) bool label on a RAS grid of ``spacing`` mm.
        spacing: (3,) voxel size in mm.
        opening_mm: opening ball radius.

    Returns:
        (x, y, z) bool body mask.
    """
    pad = int(np.ceil(opening_mm / float(np.min(spacing)))) + 1
    v = np.pad(vertebra.astype(bool), pad)  # opening near the array border must not erode the body
    ball = ellipsoid(opening_mm, spacing)
    opened = ndimage.binary_opening(v, structure=ball) if opening_mm > 0 else v
    body = largest_component(opened)
    front = canal_front(v, body)
    if front is not None:
        ys = np.arange(v.shape[1])[None, :, None]
        cut = body & (ys > front)
        # the cut leaves thin pedicle stubs beside the posterior wall: open once more
        body = largest_component(ndimage.binary_opening(cut, structure=ball) if opening_mm > 0 else cut)
    return body[pad:-pad, pad:-pad, pad:-pad]


def _stats(hu: np.ndarray, core: np.ndarray, body_voxels: int) -> dict[str, float]:
    vals = hu[core].astype(np.float64)
    p05, p50, p95 = np.percentile(vals, [5, 50, 95])
    return dict(hu_mean=float(vals.mean()), hu_std=float(vals.std()), hu_p05=float(p05),
                hu_p50=float(p50), hu_p95=float(p95), body_voxels=int(body_voxels))


def extract_rois(ct: Volume, levels: Volume, spec: RoiSpec, item: str,
                 wanted: list[int]) -> list[VertebraROI | VertebraTooSmallError]:
    """Extract one ROI per wanted level from a RAS CT and its RAS level mask.

    Args:
        ct: RAS-reoriented CT (HU, float).
        levels: RAS-reoriented ordinal level mask on the CT grid.
        spec: ROI geometry and rules.
        item: pseudonymous study id (errors name ``item:level``).
        wanted: ordinal levels to extract.

    Returns:
        Per wanted level (same order) a :class:`VertebraROI` or the
        :class:`VertebraTooSmallError` to quarantine.
    """
    target = np.asarray(spec.spacing_mm, dtype=np.float64)
    ratio = grid_ratio(ct.spacing, target)
    shape = np.asarray(spec.roi_shape, dtype=np.int64)
    lab = levels.array
    nz = np.nonzero(np.isin(lab, wanted))
    margin = shape // 2 + int(np.ceil(spec.body_opening_mm / target.min())) + 2
    kmin = np.floor(np.array([a.min() for a in nz]) / ratio).astype(np.int64) - margin
    kmax = np.ceil(np.array([a.max() for a in nz]) / ratio).astype(np.int64) + margin
    # (X, Y, Z) labels on the isotropic grid around all wanted vertebrae
    iso = sample_grid(lab, ratio, kmin, tuple(kmax - kmin + 1), order=0, cval=0)
    coeffs = ct.array
    if spec.ct_spline_order > 1:
        coeffs = ndimage.spline_filter(ct.array.astype(np.float64), order=spec.ct_spline_order, mode="nearest")
    core_ball = ellipsoid(spec.core_erosion_mm, target)
    lo_w, hi_w = spec.hu_window
    out: list[VertebraROI | VertebraTooSmallError] = []
    for level in wanted:
        name = LEVEL_NAMES[level - 1]
        vitem = f"{item}:{level}"
        vert = iso == level
        if not vert.any():
            out.append(VertebraTooSmallError(vitem, f"{name} label vanishes on the {target[0]:.2f} mm grid",
                                             "check the segmentation of this level"))
            continue
        idx = np.nonzero(vert)
        b0 = np.array([a.min() for a in idx]) - 1
        b1 = np.array([a.max() for a in idx]) + 2
        b0 = np.maximum(b0, 0)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(b0, b1))
        body_local = body_mask(vert[crop], target, spec.body_opening_mm)
        n_body = int(body_local.sum())
        if n_body < spec.min_body_voxels:
            out.append(VertebraTooSmallError(
                vitem, f"{name} body has {n_body} voxels after removing posterior elements "
                       f"(minimum {spec.min_body_voxels})",
                "check the segmentation of this level (partial vertebra at the FOV edge, or mislabelled)"))
            continue
        # body centroid in global grid nodes -> ROI start node
        centre = np.rint(np.array([a.mean() for a in np.nonzero(body_local)]) + b0 + kmin).astype(np.int64)
        start = centre - shape // 2
        hu_raw = sample_grid(coeffs, ratio, start, tuple(shape), order=spec.ct_spline_order, cval=np.nan,
                             prefiltered=spec.ct_spline_order > 1)
        fov = np.isfinite(hu_raw)
        # body mask in ROI coordinates (zero outside the iso crop)
        body = np.zeros(tuple(shape), dtype=bool)
        off = b0 + kmin - start                          # body_local origin inside the ROI
        src = [slice(max(0, -o), min(s, r - o)) for o, s, r in zip(off, body_local.shape, shape)]
        dst = [slice(o + a.start, o + a.stop) for o, a in zip(off, src)]
        if all(a.stop > a.start for a in src):
            body[tuple(dst)] = body_local[tuple(src)]
        body &= fov
        core = ndimage.binary_erosion(body, structure=core_ball) & fov if spec.core_erosion_mm > 0 else body
        if not core.any():
            out.append(VertebraTooSmallError(
                vitem, f"{name} body has no trabecular core after a {spec.core_erosion_mm} mm erosion",
                "check the segmentation of this level (body too thin or cut by the field of view)"))
            continue
        hu = np.clip(np.where(fov, hu_raw, lo_w), lo_w, hi_w).astype(np.float32)
        out.append(VertebraROI(level=level, hu=hu, body=body.astype(np.uint8),
                               stats=_stats(hu_raw, core, int(body.sum()))))
    return out
