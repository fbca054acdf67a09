"""Mask/CT alignment checks and resampling onto the isotropic ROI grid.

Alignment is checked before any resampling, on the volumes as stored, so a
fault is reported against what the user exported. Checks run in this order
and the first failure is raised (the fix differs per fault): direction
cosines, voxel spacing, array shape, origin. A mask that is the CT's grid in
another axis order (same world geometry) is accepted.

The isotropic grid is anchored at voxel (0, 0, 0) of the RAS-reoriented CT:
grid node ``k`` (per axis) sits at source index ``k * r`` with
``r = target_spacing / source_spacing``. Anchoring to the voxel grid (rather
than to world coordinates) makes an LPS-stored volume and its RAS twin, or a
DICOM series and its NIfTI copy, sample the very same points, so their ROIs are
bit-identical. Residual obliquity (direction not exactly axis-aligned after
reorientation) is not rotated out: ROIs follow the scanner axes.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from features.errors import MisalignedMaskError, OrientationMismatchError, ShapeMismatchError, SpacingMismatchError
from features.io.volume import Volume, to_ras


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in np.ravel(v)) + ")"


def check_alignment(ct: Volume, mask: Volume, item: str, tol_mm: float, direction_tol: float) -> None:
    """Raise a typed error when ``mask`` does not sit on ``ct``'s voxel grid.

    When the stored direction cosines agree, spacing, shape and origin are
    compared as stored. When they differ, the mask is accepted only if it is
    the *same world grid stored in another axis order* (e.g. a converter wrote
    it LPS while the CT is RAS): both are reoriented to RAS and must then agree
    in everything. Otherwise the directions truly differ ->
    :class:`OrientationMismatchError`.

    Args:
        ct: CT as read (RAS affine, stored axis order).
        mask: mask as read.
        item: pseudonymous study id.
        tol_mm: max origin offset, and max displacement of the far voxel caused by a
            spacing difference (``|dspacing| * (n - 1)``), in mm.
        direction_tol: max abs difference of direction cosines.

    Raises:
        OrientationMismatchError, SpacingMismatchError, ShapeMismatchError, MisalignedMaskError.
    """
    ddir = float(np.max(np.abs(ct.direction - mask.direction)))
    if ddir > direction_tol:
        a = to_ras(Volume(np.zeros(ct.shape, np.uint8), ct.affine))
        b = to_ras(Volume(np.zeros(mask.shape, np.uint8), mask.affine))
        same_grid = (float(np.max(np.abs(a.direction - b.direction))) <= direction_tol and a.shape == b.shape
                     and float(np.max(np.abs(a.spacing - b.spacing))) <= tol_mm
                     and float(np.max(np.abs(a.origin - b.origin))) <= tol_mm)
        if same_grid:
            return
        raise OrientationMismatchError(
            item, f"mask direction cosines differ from the CT's by {ddir:.3f} "
                  f"(CT axes {''.join(_axcodes(ct))}, mask {''.join(_axcodes(mask))}) and the mask is not "
                  f"the CT grid in another axis order",
            "write the mask with the CT's affine (segment this exact CT, or reorient the mask onto it)")
    # a spacing error accumulates across the volume: judge the displacement of the far voxel
    drift = np.abs(ct.spacing - mask.spacing) * (np.asarray(mask.shape) - 1)
    if float(np.max(drift)) > tol_mm:
        raise SpacingMismatchError(
            item, f"mask spacing {_fmt(mask.spacing)} differs from CT {_fmt(ct.spacing)} mm "
                  f"(the far voxel moves {float(np.max(drift)):.2f} mm, tolerance {tol_mm} mm)",
            "resample the mask onto the CT grid with nearest-neighbour interpolation")
    if ct.shape != mask.shape:
        raise ShapeMismatchError(
            item, f"mask shape {mask.shape} differs from CT {ct.shape}",
            "export the mask on the full CT grid (no cropping/padding)")
    dorg = float(np.max(np.abs(ct.origin - mask.origin)))
    if dorg > tol_mm:
        raise MisalignedMaskError(
            item, f"mask origin is {dorg:.2f} mm away from the CT's (tolerance {tol_mm} mm)",
            "copy the CT's affine into the mask or re-run the segmentation on this CT")


def _axcodes(vol: Volume) -> tuple[str, ...]:
    return nib.orientations.aff2axcodes(vol.affine)


def grid_ratio(src_spacing: np.ndarray, target_spacing: np.ndarray) -> np.ndarray:
    """Source-index step per target grid node, per axis (``target / source``)."""
    return np.asarray(target_spacing, dtype=np.float64) / np.asarray(src_spacing, dtype=np.float64)


def sample_grid(array: np.ndarray, ratio: np.ndarray, start: np.ndarray, shape: tuple[int, int, int],
                order: int, cval: float, prefiltered: bool = False) -> np.ndarray:
    """Sample ``array`` at grid nodes ``start .. start + shape - 1`` (node k -> index ``k * ratio``).

    Nodes outside the source field of view get ``cval`` (no extrapolation).

    Args:
        array: (i, j, k) source volume (spline coefficients when ``prefiltered``).
        ratio: (3,) source-index step per node.
        start: (3,) int first node.
        shape: output shape.
        order: spline order (0 nearest, 1 linear, 3 cubic B-spline).
        cval: value outside the field of view.
        prefiltered: ``array`` already holds B-spline coefficients (order > 1).

    Returns:
        The sampled (x, y, z) array, dtype of ``array`` for order 0, float64 otherwise.
    """
    start = np.asarray(start, dtype=np.int64)
    out = ndimage.affine_transform(
        array, ratio, offset=start * ratio, output_shape=tuple(shape), order=order,
        mode="nearest", prefilter=not prefiltered if order > 1 else False)
    # (x, y, z) validity per axis: source coordinate inside [0, n - 1]
    inside = np.ones(shape, dtype=bool)
    for ax in range(3):
        coord = (start[ax] + np.arange(shape[ax])) * ratio[ax]
        ok = (coord >= -1e-6) & (coord <= array.shape[ax] - 1 + 1e-6)
        view = [None, None, None]
        view[ax] = slice(None)
        inside &= ok[tuple(view)]
    out[~inside] = cval
    return out
