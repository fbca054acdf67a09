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

How (not what): the ball operations are computed from z-chords of the ball (one cumulative
sum along z, one shifted AND/OR per chord: :func:`erode_ball`), and the canal holes of every
slice from one 3-D labelling with in-plane connectivity; both give exactly the sets that
``scipy.ndimage`` with the ball as structuring element and a per-slice ``binary_fill_holes``
give (``osteo_testing.roi_reference``, ``tests/features/test_roi_morphology.py``).

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
        stats: hu_mean, hu_std, hu_p05, hu_p50, hu_p95, body_voxels, shell_hu and the DXA-like
            descriptors of :func:`dxa_descriptors` (:data:`DESCRIPTOR_COLUMNS`).
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


def _chords(radius_mm: float, spacing: np.ndarray) -> list[tuple[int, int, int]]:
    """The ball of :func:`ellipsoid` as z-chords: (dx, dy, L) = offsets (dx, dy, -L..L) are in the ball."""
    ball = ellipsoid(radius_mm, spacing)                  # (2rx+1, 2ry+1, 2rz+1), convex and symmetric
    rx, ry = ball.shape[0] // 2, ball.shape[1] // 2
    n = ball.sum(axis=2)                                  # (2rx+1, 2ry+1) chord lengths 2L+1 (0 = none)
    return [(i - rx, j - ry, int(n[i, j]) // 2) for i in range(ball.shape[0]) for j in range(ball.shape[1])
            if n[i, j] > 0]


def _z_window_counts(m: np.ndarray, halves: set[int]) -> dict[int, np.ndarray]:
    """Per half-length L: (x, y, z) count of True voxels of ``m`` in the z-window ``z-L .. z+L`` (outside = 0).

    One cumulative sum along z (zero-padded by max L + 1) serves every L.
    """
    n = m.shape[2]
    lm = max(halves)
    padded = np.zeros(m.shape[:2] + (n + 2 * lm + 1,), dtype=np.int16)   # (x, y, z + 2 lm + 1)
    padded[:, :, lm + 1:lm + 1 + n] = m
    cs = np.cumsum(padded, axis=2, dtype=np.int16)                        # cs[..., i] = sum(padded[..., :i + 1])
    return {L: cs[:, :, lm + 1 + L:lm + 1 + L + n] - cs[:, :, lm - L:lm - L + n] for L in halves}


def _shifted_reduce(cond: dict[int, np.ndarray], chords, shape, erode: bool) -> np.ndarray:
    """AND (erode) / OR (dilate) over chords of ``cond[L]`` read at (x + dx, y + dy); outside the array the
    condition is False (erosion: the offset voxel itself is background; dilation: no mask voxel there).

    The shifts move whole (y, z) rows, so every operation runs over contiguous memory.
    """
    out = np.full(shape, erode, dtype=bool)
    nx, ny, _ = shape
    rx = max(abs(c[0]) for c in chords)
    ry = max(abs(c[1]) for c in chords)
    if rx >= nx or ry >= ny:                 # some moved chord lies wholly outside the array
        if erode:
            return np.zeros(shape, dtype=bool)
    for dx, dy, L in chords:
        if abs(dx) >= nx or abs(dy) >= ny:
            continue
        dst = (slice(max(0, -dx), nx - max(0, dx)), slice(max(0, -dy), ny - max(0, dy)))
        src = (slice(max(0, dx), nx + min(0, dx)), slice(max(0, dy), ny + min(0, dy)))
        if erode:
            out[dst] &= cond[L][src]
        else:
            out[dst] |= cond[L][src]
    if erode:
        # (x + dx, y + dy) outside the array for some chord: eroded (the union of those slabs)
        out[:rx], out[nx - rx:], out[:, :ry], out[:, ny - ry:] = False, False, False, False
    return out


def erode_ball(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by the ball of ``radius_mm``: exactly ``binary_erosion(mask, ellipsoid(radius_mm, spacing))``.

    The ball is a union of z-chords (offsets ``-L..L`` along z at each (dx, dy); along the ball's
    longest axis when that is not z: :func:`_along_long_axis`). A voxel survives
    iff every chord, centred at it and moved by (dx, dy), lies inside the mask, i.e. iff the z
    window ``z-L .. z+L`` at (x + dx, y + dy) holds 2L + 1 mask voxels. One cumulative sum along
    z and one shifted AND per chord (29 for 3 mm at 1 mm) replace the ball-sized structuring
    element (123 voxels). Outside the array counts as background (scipy's ``border_value=0``).

    Args:
        mask: (x, y, z) bool.
        radius_mm: ball radius; <= 0 returns the mask.
        spacing: (3,) voxel size in mm.
    """
    m = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or m.size == 0:
        return m.copy()
    return _along_long_axis(m, radius_mm, spacing, erode=True)


def dilate_ball(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by the ball: exactly ``binary_dilation(mask, ellipsoid(radius_mm, spacing))`` (a voxel joins
    iff some chord moved by (dx, dy) reaches a mask voxel; nothing enters from outside the array)."""
    m = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or m.size == 0 or not m.any():
        return m.copy()
    return _along_long_axis(m, radius_mm, spacing, erode=False)


def _along_long_axis(m: np.ndarray, radius_mm: float, spacing: np.ndarray, erode: bool) -> np.ndarray:
    """Chords along the ball's longest voxel extent (z on ties): fewest chords, e.g. 13 instead of 121
    for an in-plane disc of 5 mm at 0.8 mm (spacing (0.8, 0.8, inf)). Other axes are moved to z and back."""
    sp = np.asarray(spacing, dtype=np.float64)
    extent = np.floor(radius_mm / sp + 1e-9)             # the ball's half-size in voxels (as ``ellipsoid``)
    axis = 2 if extent[2] >= extent.max() else int(np.argmax(extent))
    order = [a for a in range(3) if a != axis] + [axis]
    work = np.ascontiguousarray(np.transpose(m, order)) if axis != 2 else m
    chords = _chords(radius_mm, sp[order])
    counts = _z_window_counts(work, {c[2] for c in chords})
    cond = {L: (c == 2 * L + 1) if erode else (c > 0) for L, c in counts.items()}
    out = _shifted_reduce(cond, chords, work.shape, erode=erode)
    return np.ascontiguousarray(np.transpose(out, np.argsort(order))) if axis != 2 else out


def open_ball(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Opening by the Euclidean ball: ``binary_opening(mask, ellipsoid(radius_mm, spacing))``, exactly."""
    return dilate_ball(erode_ball(mask, radius_mm, spacing), radius_mm, spacing)


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
    # every axial slice at once: background components 4-connected within their slice (z never links)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(~vertebra.astype(bool), structure=in_plane)
    if n == 0:
        return None
    # a component touching the slice's x/y border is outside; the others are the holes binary_fill_holes fills
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True                                     # label 0 = the vertebra itself
    outside[np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()])] = True
    hole_ids = lab[~outside[lab]]                         # (holes,) component id of every hole voxel
    if hole_ids.size == 0:
        return None
    hole_y = np.nonzero(~outside[lab])[1]                 # (holes,) their y (same C order as hole_ids)
    ids, inverse = np.unique(hole_ids, return_inverse=True)
    mean_y = np.bincount(inverse, weights=hole_y) / np.bincount(inverse)
    front_y = np.full(ids.size, -1, dtype=np.int64)
    np.maximum.at(front_y, inverse, hole_y)               # most anterior row of each hole
    canal = mean_y < body_y                               # a hole posterior to the body: the canal
    return float(np.median(front_y[canal])) if canal.any() else None


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
    body = largest_component(open_ball(v, opening_mm, spacing))
    front = canal_front(v, body)
    if front is not None:
        ys = np.arange(v.shape[1])[None, :, None]
        cut = body & (ys > front)
        # the cut leaves thin pedicle stubs beside the posterior wall: open once more
        body = largest_component(open_ball(cut, opening_mm, spacing))
    return body[pad:-pad, pad:-pad, pad:-pad]


def _label_boxes(labels: np.ndarray, max_label: int, wanted: list[int]) -> list[tuple[slice, ...] | None]:
    """Per wanted label, its bounding box in ``labels`` (slices; None when absent), from one pass."""
    found = ndimage.find_objects(np.asarray(labels), max_label=int(max_label))
    return [found[w - 1] if 1 <= w <= len(found) else None for w in wanted]


def _stats(hu: np.ndarray, core: np.ndarray, body: np.ndarray) -> dict[str, float]:
    vals = hu[core].astype(np.float64)
    p05, p50, p95 = np.percentile(vals, [5, 50, 95])
    shell = body & ~core & np.isfinite(hu)
    return dict(hu_mean=float(vals.mean()), hu_std=float(vals.std()), hu_p05=float(p05),
                hu_p50=float(p50), hu_p95=float(p95), body_voxels=int(body.sum()),
                shell_hu=round(float(hu[shell].mean()) if shell.any() else float(vals.mean()), 3))


def dxa_descriptors(hu: np.ndarray, vertebra: np.ndarray, body: np.ndarray,
                    spacing: np.ndarray) -> dict[str, float]:
    """What an antero-posterior DXA scan of this vertebra integrates, measured on the CT.

    DXA reads areal BMD = bone mineral content / projected area over a box the width and height
    of the vertebral body, in an AP projection: the mineral of the whole body (trabecular core,
    cortical shell, endplates) **plus every posterior element that projects onto the box**
    (pedicles, lamina, spinous process), divided by the body's projected area. So two vertebrae
    of equal trabecular density read differently when their size or shell differ. On the CT:

    * footprint = the body mask projected along y (AP) onto the coronal (x, z) plane: the DXA box;
    * ``proj_hu_mm`` = mean over the footprint of the HU integrated along y through the **whole
      vertebra label** (body and posterior elements), HU x mm: a CT "areal density" (water = 0;
      marrow fat counts negative, as it lowers a DXA reading too). Outside the field of view
      counts 0 (the screening quality flags mark partial coverage);
    * ``proj_path_mm`` = mean over the footprint of the path length through the label along y (mm):
      under an HU recalibration ``HU' = a HU + b``, ``proj_hu_mm' = a proj_hu_mm + b proj_path_mm``;
    * ``proj_area_mm2`` = footprint area; ``body_height_mm`` = extent along z;
      ``body_width_mm`` = area / height (mean left-right width); ``body_depth_mm`` = the
      sagittal (y, z) projection's area / height (mean AP depth).

    Args:
        hu: (x, y, z) calibrated HU on the isotropic grid (NaN outside the field of view).
        vertebra: (x, y, z) bool label of this vertebra (body + posterior elements), same grid.
        body: (x, y, z) bool body mask, same grid.
        spacing: (3,) voxel size in mm.

    Returns:
        The :data:`DESCRIPTOR_COLUMNS` values.
    """
    sx, sy, sz = (float(v) for v in spacing)
    foot = body.any(axis=1)                                        # (x, z): the DXA box
    height = float(body.any(axis=(0, 1)).sum()) * sz
    area = float(foot.sum()) * sx * sz
    depth = float(body.any(axis=0).sum()) * sy * sz / height
    seen = vertebra & np.isfinite(hu)
    column = np.where(seen, hu, 0.0).sum(axis=1, dtype=np.float64) * sy        # (x, z) HU mm
    path = seen.sum(axis=1, dtype=np.float64) * sy                             # (x, z) mm
    values = dict(proj_hu_mm=float(column[foot].mean()), proj_path_mm=float(path[foot].mean()), proj_area_mm2=area,
                  body_height_mm=height, body_width_mm=area / height, body_depth_mm=depth)
    return {k: round(v, DESCRIPTOR_DECIMALS) for k, v in values.items()}


DESCRIPTOR_DECIMALS = 3   # mm / HU x mm to 1e-3: far below the voxel; no long digit strings in the tables
DESCRIPTOR_COLUMNS: tuple[str, ...] = ("shell_hu", "proj_hu_mm", "proj_path_mm", "proj_area_mm2", "body_height_mm",
                                       "body_width_mm", "body_depth_mm")
"""Per-vertebra geometry and projection descriptors beside the texture pool (``vertebrae.parquet``)."""
DESCRIPTOR_CHOICES: tuple[str, ...] = ("body_voxels",) + DESCRIPTOR_COLUMNS
"""Every ``vertebrae.parquet`` column a model may read as a descriptor (``model.moe.descriptors``)."""


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
    # bounding box of every wanted level in one pass (find_objects: slice per label value 1..max)
    boxes = [b for b in _label_boxes(lab, max(wanted), wanted) if b is not None]
    lo = np.min([[s.start for s in b] for b in boxes], axis=0)
    hi = np.max([[s.stop - 1 for s in b] for b in boxes], axis=0)
    # only the label nodes are needed: a node takes its nearest source voxel, so labelled nodes lie within
    # 0.5 source voxel of the box; 2 more keep every level's box (+-1, below) inside the region
    margin = 2 + np.ceil(0.5 / ratio).astype(np.int64)
    kmin = np.floor(lo / ratio).astype(np.int64) - margin
    kmax = np.ceil(hi / ratio).astype(np.int64) + margin
    # (X, Y, Z) labels on the isotropic grid around all wanted vertebrae (ROIs sample the CT themselves)
    iso = sample_grid(lab, ratio, kmin, tuple(kmax - kmin + 1), order=0, cval=0)
    coeffs = ct.array
    if spec.ct_spline_order > 1:
        coeffs = ndimage.spline_filter(ct.array.astype(np.float64), order=spec.ct_spline_order, mode="nearest")
    lo_w, hi_w = spec.hu_window
    out: list[VertebraROI | VertebraTooSmallError] = []
    iso_boxes = _label_boxes(iso, max(wanted), wanted)
    for level, box in zip(wanted, iso_boxes):
        name = LEVEL_NAMES[level - 1]
        vitem = f"{item}:{level}"
        if box is None:
            out.append(VertebraTooSmallError(vitem, f"{name} label vanishes on the {target[0]:.2f} mm grid",
                                             "check the segmentation of this level"))
            continue
        # the level's bounding box on the iso grid, one voxel of margin (clipped to the grid)
        b0 = np.maximum(np.array([sl.start for sl in box]) - 1, 0)
        b1 = np.array([sl.stop for sl in box]) + 1
        crop = tuple(slice(int(a), int(b)) for a, b in zip(b0, b1))
        body_local = body_mask(iso[crop] == level, target, spec.body_opening_mm)
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
        core = erode_ball(body, spec.core_erosion_mm, target) & fov if spec.core_erosion_mm > 0 else body
        if not core.any():
            out.append(VertebraTooSmallError(
                vitem, f"{name} body has no trabecular core after a {spec.core_erosion_mm} mm erosion",
                "check the segmentation of this level (body too thin or cut by the field of view)"))
            continue
        hu = np.clip(np.where(fov, hu_raw, lo_w), lo_w, hi_w).astype(np.float32)
        vert_local = iso[crop] == level
        hu_local = sample_grid(coeffs, ratio, b0 + kmin, vert_local.shape, order=spec.ct_spline_order, cval=np.nan,
                               prefiltered=spec.ct_spline_order > 1)
        stats = {**_stats(hu_raw, core, body), **dxa_descriptors(hu_local, vert_local, body_local, target)}
        out.append(VertebraROI(level=level, hu=hu, body=body.astype(np.uint8), stats=stats))
    return out
