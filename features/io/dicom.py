"""Reading a CT DICOM series folder, as PACS export it, into a RAS :class:`Volume`.

What a PACS export holds besides the axial slices, and what we do with it:

* **other objects** in the folder are left out and counted by reason
  (:data:`FILTER_REASONS`, no identifiers): a dose report, secondary capture,
  presentation state or any non-CT / non-image SOP class -> ``non_ct_image``;
  an ``ImageType`` with ``LOCALIZER`` (scout) -> ``localizer``; an image plane
  whose normal is closer to the patient's L or P axis than to S (coronal or
  sagittal reformat) -> ``non_axial``. No axial CT image left ->
  :class:`NoAxialSeriesError`;
* **Enhanced CT** (one multi-frame object, SOP class ``...1.2.1``; legacy
  converted ``...1.2.2``): each frame is a slice; its plane position,
  orientation, pixel spacing, rescale and tilt come from the per-frame
  functional group, else from the shared one (PS3.3 C.7.6.16);
* **compressed pixel data** is decoded by the pydicom plugins pinned in
  ``requirements.lock`` (RLE natively; JPEG-Lossless ``.4.57`` / ``.4.70``
  by pylibjpeg-libjpeg or GDCM; JPEG 2000 ``.4.90`` / ``.4.91`` by
  pylibjpeg-openjpeg or GDCM). A syntax nothing installed reads ->
  :class:`UnsupportedTransferSyntaxError`;
* **padding**: stored values equal to ``PixelPaddingValue`` (or inside
  ``[PixelPaddingValue, PixelPaddingRangeLimit]``, PS3.3 C.7.5.1.1.2) lie
  outside the reconstructed field of view. They are not HU: they are returned
  as ``outside_fov`` (the HU checks ignore them) and set to air
  (:data:`AIR_HU`) so that resampling near the field-of-view edge sees air.
  Compared in the stored-value space, before rescale.

Checks on the kept slices, each a typed error (never a silent fix):

* one ``SeriesInstanceUID``, one ``ImageOrientationPatient``, one slice size and
  pixel spacing, no two slices at the same position -> else :class:`MixedSeriesError`;
* slices stacked along the normal of their plane (``row x col`` cosines); a
  stacking direction off the normal, or a non-zero ``GantryDetectorTilt`` ->
  :class:`GantryTiltError` (we do not shear-correct);
* equal slice increments -> else :class:`NonUniformSpacingError`.

Pixel values are rescaled per slice, ``HU = stored * RescaleSlope +
RescaleIntercept`` (slices of one series may carry different intercepts).
DICOM patient coordinates are LPS; the affine is converted to RAS by negating
the first two world axes.

The series' ``PatientID`` / ``AccessionNumber`` values are returned (PHI: for an
in-memory comparison with the export row by :mod:`features.study`, never to be
logged or written); they are kept out of the dataclass ``repr``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder

from features.errors import (GantryTiltError, MixedSeriesError, NoAxialSeriesError, NonUniformSpacingError,
                             UnreadableFileError, UnsupportedTransferSyntaxError)
from features.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AIR_HU = -1000.0                     # HU given to padding voxels (outside the field of view)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = (CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT)
FILTER_REASONS = ("non_ct_image", "localizer", "non_axial")
_DECODERS_FIX = ("install the pinned pixel-data decoders (pip install -r requirements.lock: pylibjpeg, "
                 "pylibjpeg-libjpeg, pylibjpeg-openjpeg, python-gdcm) or re-export the series uncompressed")


@dataclass(frozen=True)
class DicomSeries:
    """One axial CT series read from a PACS folder.

    Attributes:
        volume: HU (float32), array ``[col, row, slice]``, RAS affine; padding voxels hold :data:`AIR_HU`.
        outside_fov: bool array of ``volume``'s shape, True on padding voxels (not HU).
        filtered: objects of the folder left out, ``{reason: count}`` over :data:`FILTER_REASONS`.
        patient_ids: distinct ``PatientID`` values of the kept objects (PHI, never log).
        accessions: distinct ``AccessionNumber`` values of the kept objects (PHI, never log).
    """

    volume: Volume
    outside_fov: np.ndarray = field(repr=False)
    filtered: dict[str, int]
    patient_ids: frozenset[str] = field(repr=False)
    accessions: frozenset[str] = field(repr=False)


def _slice_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


def _unreadable(item: str, exc: Exception) -> UnreadableFileError:
    # pydicom raises many types; their messages may hold the path, so only the type is kept
    return UnreadableFileError(
        item, f"a DICOM object is unreadable or lacks geometry tags ({type(exc).__name__})",
        "re-export the CT series (every slice needs pixel data, ImagePositionPatient, "
        "ImageOrientationPatient, PixelSpacing)")


def _group_value(groups: list, seq: str, attr: str):
    """``attr`` of the first item of sequence ``seq`` in the first functional group that has it."""
    for g in groups:
        if g is not None and seq in g and len(g[seq].value) and attr in g[seq].value[0]:
            return g[seq].value[0][attr].value
    return None


def _frame_groups(ds) -> list[list]:
    """Per frame: [per-frame group, shared group] (classic objects: one frame, no groups)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = list(ds.PerFrameFunctionalGroupsSequence) if "PerFrameFunctionalGroupsSequence" in ds else []
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return [[per[i] if i < len(per) else None, shared] for i in range(n)]


def _orientation(ds) -> np.ndarray | None:
    """First frame's ImageOrientationPatient (classic tag or plane-orientation functional group)."""
    if "ImageOrientationPatient" in ds:
        return np.array([float(v) for v in ds.ImageOrientationPatient])
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        iop = _group_value(_frame_groups(ds)[0], "PlaneOrientationSequence", "ImageOrientationPatient")
        return None if iop is None else np.array([float(v) for v in iop])
    return None


def classify(ds) -> str | None:
    """Why this object is left out of the axial CT series (one of :data:`FILTER_REASONS`), or None to keep it."""
    sop = str(getattr(ds, "SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
              or "")
    if str(getattr(ds, "Modality", "") or "").upper() != "CT" or sop not in CT_SOP_CLASSES \
            or "PixelData" not in ds:
        return "non_ct_image"
    if "LOCALIZER" in [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]:
        return "localizer"
    iop = _orientation(ds)
    if iop is not None and len(iop) == 6:
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        if int(np.argmax(normal)) != 2:
            return "non_axial"
    return None


def _check_syntax(ds, item: str) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedTransferSyntaxError(
            item, f"pixel data is in transfer syntax {ts} ({ts.name}), which no installed decoder reads",
            _DECODERS_FIX)


def _stored_padding(value: float, ds) -> int:
    """Padding value in the stored-value space (a signed image may carry it as its unsigned bit pattern)."""
    v, bits = int(value), int(getattr(ds, "BitsAllocated", 16) or 16)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1 and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def _padding_mask(pix: np.ndarray, ds) -> np.ndarray:
    """True where the stored value is padding (PixelPaddingValue, up to PixelPaddingRangeLimit)."""
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue is None:
        return np.zeros(pix.shape, bool)
    a = _stored_padding(ds.PixelPaddingValue, ds)
    limit = getattr(ds, "PixelPaddingRangeLimit", None)
    if limit is None:
        return pix == a
    b = _stored_padding(limit, ds)
    return (pix >= min(a, b)) & (pix <= max(a, b))


def _frames(ds, item: str) -> list[dict]:
    """One dict per frame: geometry, rescale, tilt, stored pixels and padding mask."""
    _check_syntax(ds, item)
    try:
        pix = ds.pixel_array
    except Exception as exc:
        raise _unreadable(item, exc) from None
    groups = _frame_groups(ds)
    pix = pix.reshape(len(groups), *pix.shape[-2:])          # (frames, rows, cols)
    uid = str(getattr(ds, "SeriesInstanceUID", ""))
    out = []
    for k, g in enumerate(groups):
        try:
            iop = ds.ImageOrientationPatient if "ImageOrientationPatient" in ds else \
                _group_value(g, "PlaneOrientationSequence", "ImageOrientationPatient")
            ipp = ds.ImagePositionPatient if "ImagePositionPatient" in ds else \
                _group_value(g, "PlanePositionSequence", "ImagePositionPatient")
            ps = ds.PixelSpacing if "PixelSpacing" in ds else _group_value(g, "PixelMeasuresSequence", "PixelSpacing")
            iop, ipp, ps = (np.array([float(v) for v in x]) for x in (iop, ipp, ps))
        except Exception as exc:
            raise _unreadable(item, exc) from None
        slope = ds.RescaleSlope if "RescaleSlope" in ds else \
            _group_value(g, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = ds.RescaleIntercept if "RescaleIntercept" in ds else \
            _group_value(g, "PixelValueTransformationSequence", "RescaleIntercept")
        tilt = ds.GantryDetectorTilt if "GantryDetectorTilt" in ds else \
            _group_value(g, "CTAcquisitionDetailsSequence", "GantryDetectorTilt")
        out.append(dict(uid=uid, iop=iop, ipp=ipp, ps=ps, pix=pix[k], pad=_padding_mask(pix[k], ds),
                        slope=float(slope or 1.0), intercept=float(intercept or 0.0), tilt=float(tilt or 0.0)))
    return out


def read_dicom_study(folder: Path, item: str, tilt_tol: float = 1e-3,
                     spacing_tol_mm: float = 0.01) -> DicomSeries:
    """Read the axial CT series of one PACS folder (classic or Enhanced CT, any pinned transfer syntax).

    Args:
        folder: directory holding the series' files (and whatever else the PACS exported with it).
        item: pseudonymous study id for messages.
        tilt_tol: max ``1 - |cos|`` between the stacking direction and the slice normal.
        spacing_tol_mm: max deviation of any slice increment from the median increment.

    Returns:
        The series (see :class:`DicomSeries`).

    Raises:
        UnreadableFileError, UnsupportedTransferSyntaxError, NoAxialSeriesError, MixedSeriesError,
        GantryTiltError, NonUniformSpacingError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnreadableFileError(item, "DICOM folder is missing", "re-export the CT series of this study")
    files = _slice_files(folder)
    if not files:
        raise UnreadableFileError(item, "DICOM folder holds 0 slice file(s)",
                                  "export the complete CT series (at least 2 slices)")
    filtered: Counter = Counter()
    kept = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise _unreadable(item, exc) from None
        reason = classify(ds)
        if reason is None:
            kept.append(ds)
        else:
            filtered[reason] += 1
    left_out = {r: filtered[r] for r in FILTER_REASONS if filtered[r]}
    if not kept:
        what = ", ".join(f"{n} {r}" for r, n in left_out.items())
        err = NoAxialSeriesError(item, f"DICOM folder holds no axial CT image (left out: {what})",
                                 "export the axial CT series of this study (not only scouts, reports or reformats)")
        err.filtered = left_out          # the study's record still counts what was left out
        raise err
    slices = [s for ds in kept for s in _frames(ds, item)]
    if len(slices) < 2:
        raise UnreadableFileError(item, f"DICOM folder holds {len(slices)} axial CT slice(s)",
                                  "export the complete CT series (at least 2 slices)")
    volume, outside = _stack(slices, item, tilt_tol, spacing_tol_mm)
    ids = frozenset(str(getattr(ds, "PatientID", "") or "").strip() for ds in kept)
    accs = frozenset(str(getattr(ds, "AccessionNumber", "") or "").strip() for ds in kept)
    return DicomSeries(volume=volume, outside_fov=outside, filtered=left_out, patient_ids=ids, accessions=accs)


def read_dicom_series(folder: Path, item: str, tilt_tol: float = 1e-3,
                      spacing_tol_mm: float = 0.01) -> Volume:
    """The HU volume of :func:`read_dicom_study` (padding as :data:`AIR_HU`)."""
    return read_dicom_study(folder, item, tilt_tol, spacing_tol_mm).volume


def _stack(slices: list[dict], item: str, tilt_tol: float, spacing_tol_mm: float) -> tuple[Volume, np.ndarray]:
    """Check the slices form one regular orthogonal stack; return (HU volume, outside-FOV mask)."""
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
    outside = np.stack([s["pad"].T for s in slices], axis=-1)
    vol[outside] = AIR_HU
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]          # PixelSpacing = (row spacing, column spacing)
    lps[:3, 1] = col_dir * ps0[0]
    lps[:3, 2] = stack / (len(slices) - 1)
    lps[:3, 3] = ipps[0]
    return Volume(array=vol.astype(np.float32), affine=LPS_TO_RAS @ lps), outside
