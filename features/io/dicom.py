"""Reading a CT DICOM series (one file per slice) into a RAS :class:`Volume`.

Checks, each a typed error (never a silent fix):

* one ``SeriesInstanceUID``, one ``ImageOrientationPatient``, one slice size and
  pixel spacing across files, no two slices at the same position -> else
  :class:`MixedSeriesError`;
* slices stacked along the normal of their plane (``row x col`` cosines); a
  stacking direction off the normal, or a non-zero ``GantryDetectorTilt`` ->
  :class:`GantryTiltError` (we do not shear-correct);
* equal slice increments -> else :class:`NonUniformSpacingError`.

Pixel values are rescaled per slice, ``HU = stored * RescaleSlope +
RescaleIntercept`` (slices of one series may carry different intercepts).
DICOM patient coordinates are LPS; the affine is converted to RAS by negating
the first two world axes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from features.errors import GantryTiltError, MixedSeriesError, NonUniformSpacingError, UnreadableFileError
from features.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slice_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    return files


def read_dicom_series(folder: Path, item: str, tilt_tol: float = 1e-3,
                      spacing_tol_mm: float = 0.01) -> Volume:
    """Read one DICOM CT series folder.

    Args:
        folder: directory holding the slice files (``IM*.dcm``).
        item: pseudonymous study id for messages.
        tilt_tol: max ``1 - |cos|`` between the stacking direction and the slice normal.
        spacing_tol_mm: max deviation of any slice increment from the median increment.

    Returns:
        The volume in HU (float32), array ``[col, row, slice]``, RAS affine.

    Raises:
        UnreadableFileError, MixedSeriesError, GantryTiltError, NonUniformSpacingError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnreadableFileError(item, "DICOM folder is missing", "re-export the CT series of this study")
    files = _slice_files(folder)
    if len(files) < 2:
        raise UnreadableFileError(item, f"DICOM folder holds {len(files)} slice file(s)",
                                  "export the complete CT series (at least 2 slices)")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            pix = ds.pixel_array
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
            ps = np.array([float(v) for v in ds.PixelSpacing])
        except Exception as exc:  # pydicom raises many types; messages may hold the path
            raise UnreadableFileError(
                item, f"a DICOM slice is unreadable or lacks geometry tags ({type(exc).__name__})",
                "re-export the CT series (every slice needs pixel data, ImagePositionPatient, "
                "ImageOrientationPatient, PixelSpacing)") from None
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        tilt = float(getattr(ds, "GantryDetectorTilt", 0.0) or 0.0)
        slices.append(dict(uid=str(getattr(ds, "SeriesInstanceUID", "")), iop=iop, ipp=ipp, ps=ps,
                           pix=pix, slope=slope, intercept=intercept, tilt=tilt))

    if len({s["uid"] for s in slices}) > 1:
        raise MixedSeriesError(item, f"folder mixes {len({s['uid'] for s in slices})} SeriesInstanceUIDs",
                               "export one series per folder")
    iop0, ps0, shape0 = slices[0]["iop"], slices[0]["ps"], slices[0]["pix"].shape
    for s in slices[1:]:
        if np.max(np.abs(s["iop"] - iop0)) > 1e-4:
            raise MixedSeriesError(item, "slices have differing ImageOrientationPatient",
                                   "export one series per folder (one orientation)")
        if s["pix"].shape != shape0 or np.max(np.abs(s["ps"] - ps0)) > 1e-4:
            raise MixedSeriesError(item, "slices have differing size or PixelSpacing",
                                   "export one series per folder (one matrix size)")
    if any(abs(s["tilt"]) > 1e-6 for s in slices):
        raise GantryTiltError(item, "GantryDetectorTilt is non-zero",
                              "reconstruct the series without gantry tilt (or resample it to an orthogonal grid)")

    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise MixedSeriesError(item, "ImageOrientationPatient is not two orthonormal cosines",
                               "re-export the series with valid orientation tags")
    pos = np.array([s["ipp"] @ normal for s in slices])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    steps = np.diff(pos)
    if np.any(steps < 1e-3):
        raise MixedSeriesError(item, "two slices share one position (duplicate or overlapping series)",
                               "export one series per folder")
    ipps = np.stack([s["ipp"] for s in slices])
    stack = ipps[-1] - ipps[0]
    stack_dir = stack / np.linalg.norm(stack)
    if 1.0 - abs(stack_dir @ normal) > tilt_tol:
        angle = np.degrees(np.arccos(min(1.0, abs(stack_dir @ normal))))
        raise GantryTiltError(item, f"slices are stacked {angle:.2f} deg off their normal (gantry tilt)",
                              "reconstruct the series without gantry tilt (or resample it to an orthogonal grid)")
    med = float(np.median(steps))
    if np.max(np.abs(steps - med)) > spacing_tol_mm:
        raise NonUniformSpacingError(
            item, f"slice increments range {steps.min():.3f}-{steps.max():.3f} mm (median {med:.3f})",
            "export the complete series with a constant slice increment (missing slices?)")
    # in-plane drift of single slices also breaks the regular grid
    expected = ipps[0] + np.outer(np.arange(len(slices)), stack / (len(slices) - 1))
    if np.max(np.linalg.norm(ipps - expected, axis=1)) > spacing_tol_mm:
        raise MixedSeriesError(item, "slice positions do not lie on one straight regular stack",
                               "export one series per folder with a constant slice increment")

    # array [col, row, slice]: index i runs along the row direction (columns), j along the column direction
    vol = np.stack([(s["pix"].astype(np.float64) * s["slope"] + s["intercept"]).T for s in slices], axis=-1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]          # PixelSpacing = (row spacing, column spacing)
    lps[:3, 1] = col_dir * ps0[0]
    lps[:3, 2] = stack / (len(slices) - 1)
    lps[:3, 3] = ipps[0]
    return Volume(array=vol.astype(np.float32), affine=LPS_TO_RAS @ lps)
