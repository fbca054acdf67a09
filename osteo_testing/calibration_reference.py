"""Reference implementations of the calibration's segmentation as first written (whole volume, scipy).

:mod:`features.calibration` now measures the subcutaneous depth with the numba in-plane distance
transform (:func:`features.inplane.inplane_edt`), fills the body outline's holes with one flood
per slice (:func:`features.inplane.fill_holes_inplane`) and finds the aortic blood inside the
search boxes' bounding box only. These are the rules the faster code must reproduce exactly
(``tests/features/test_calibration.py``, ``tests/features/test_inplane.py``); kept here, out of
production, as the definition to compare against.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from features.calibration import StudyScene, inplane_core
from osteo_config.ingest import CalibrationConfig

Z_SAMPLING_MM = 1.0e4       # EDT sampling along z that no in-plane distance reaches: distances stay in-plane


def inplane_edt_reference(mask: np.ndarray, spacing) -> np.ndarray:
    """Per-slice distance (mm) to the nearest False voxel: scipy's 3-D EDT with a huge z sampling (float32)."""
    if not np.asarray(mask).any():
        return np.zeros(np.shape(mask), np.float32)
    return ndimage.distance_transform_edt(mask, sampling=(spacing[0], spacing[1], Z_SAMPLING_MM)).astype(np.float32)


def fill_holes_reference(mask: np.ndarray) -> np.ndarray:
    """``binary_fill_holes`` slice by slice."""
    out = np.asarray(mask, bool).copy()
    for k in range(out.shape[2]):
        out[:, :, k] = ndimage.binary_fill_holes(out[:, :, k])
    return out


def body_outline_reference(smooth: np.ndarray, valid: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Largest component above ``threshold_hu``, holes filled per axial slice (a scipy call per slice)."""
    dense = (smooth > threshold_hu) & valid
    lab, n = ndimage.label(dense)
    if n == 0:
        return dense
    return fill_holes_reference(lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1))


def blood_region_reference(scene: StudyScene, cfg: CalibrationConfig, slope: float, intercept: float) -> np.ndarray:
    """The aortic blood region computed on the whole volume (the search box as a full-size mask)."""
    spine, sp = scene.spine, scene.spacing
    box = np.zeros(scene.hu.shape, bool)
    xs = np.arange(box.shape[0]) * sp[0]
    ys = np.arange(box.shape[1]) * sp[1]
    for k in np.nonzero(spine.any(axis=(0, 1)))[0]:
        ix, iy = np.nonzero(spine[:, :, k])
        x_c, y_front = float(np.median(xs[ix])), float(np.percentile(ys[iy], 98))
        bx = (xs >= x_c + cfg.blood_box_x_mm[0]) & (xs <= x_c + cfg.blood_box_x_mm[1])
        by = (ys >= y_front + cfg.blood_box_y_mm[0]) & (ys <= y_front + cfg.blood_box_y_mm[1])
        box[:, :, k] = bx[:, None] & by[None, :]
    lo, hi = cfg.blood_window_hu
    cal = np.float32(slope) * scene.smooth + np.float32(intercept)
    cand = box & scene.body & scene.valid & (cal >= lo) & (cal <= hi) & ~scene.near_spine
    core = inplane_core(cand, cfg.blood_margin_mm, sp)
    lab, n = ndimage.label(core)
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1) if n else core
