"""Reference implementations of the body-mask morphology (structuring elements, per-slice loops).

These are :mod:`features.roi`'s rules as first written: ``scipy.ndimage`` erosions / openings
with the ball of :func:`features.roi.ellipsoid` as structuring element, and a per-axial-slice
``binary_fill_holes`` loop for the spinal canal. Production now computes the same sets with
z-chord decompositions and one 3-D labelling; tests assert both give identical masks, ROIs and
statistics. Kept here, out of production, as the definition to compare against.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from features.errors import VertebraTooSmallError
from features.geometry import grid_ratio, sample_grid
from features.io.masks import LEVEL_NAMES
from features.io.volume import Volume
from features.roi import RoiSpec, VertebraROI, _stats, dxa_descriptors, ellipsoid, largest_component


def canal_front_reference(vertebra: np.ndarray, body: np.ndarray) -> float | None:
    """y index of the canal's anterior wall: per axial slice, holes = fill_holes(slice) minus slice."""
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


def body_mask_reference(vertebra: np.ndarray, spacing: np.ndarray, opening_mm: float) -> np.ndarray:
    """The body rule of :func:`features.roi.body_mask` with ball structuring elements."""
    pad = int(np.ceil(opening_mm / float(np.min(spacing)))) + 1
    v = np.pad(vertebra.astype(bool), pad)
    ball = ellipsoid(opening_mm, spacing)
    opened = ndimage.binary_opening(v, structure=ball) if opening_mm > 0 else v
    body = largest_component(opened)
    front = canal_front_reference(v, body)
    if front is not None:
        ys = np.arange(v.shape[1])[None, :, None]
        cut = body & (ys > front)
        body = largest_component(ndimage.binary_opening(cut, structure=ball) if opening_mm > 0 else cut)
    return body[pad:-pad, pad:-pad, pad:-pad]


def extract_rois_reference(ct: Volume, levels: Volume, spec: RoiSpec, item: str,
                 wanted: list[int]) -> list[VertebraROI | VertebraTooSmallError]:
    """:func:`features.roi.extract_rois` as first written (full-volume ``nonzero`` boxes, ball erosions)."""
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
        body_local = body_mask_reference(vert[crop], target, spec.body_opening_mm)
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
        # descriptors: the same function on the same crop (this module checks the morphology)
        vert_local = iso[crop] == level
        hu_local = sample_grid(coeffs, ratio, b0 + kmin, vert_local.shape, order=spec.ct_spline_order, cval=np.nan,
                               prefiltered=spec.ct_spline_order > 1)
        stats = {**_stats(hu_raw, core, body), **dxa_descriptors(hu_local, vert_local, body_local, target)}
        out.append(VertebraROI(level=level, hu=hu, body=body.astype(np.uint8), stats=stats))
    return out
