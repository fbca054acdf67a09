"""One CT study -> vertebral-body ROIs (the unit of parallel work).

:func:`process_study` is a top-level function of picklable arguments, so it
runs the same in-process, under ``fork`` and under ``spawn``. It reads the CT
and mask, checks them (typed errors), extracts the ROIs, writes each as a
content-addressed ``.npz`` and returns rows plus quarantine records. It never
sees an MRN or a name; raw paths never leave it (messages use ``study_id``).

HU plausibility rule (:func:`check_hu`): the study is
:class:`HUOutOfRangeError` when either

* more than ``ingest.hu_invalid_share`` of all voxels fall outside
  ``ingest.hu_valid_range`` (corrupt calibration, wrong slope), or
* the median HU inside the labelled vertebrae lies outside
  ``ingest.vertebra_median_hu_range``. Whole-vertebra medians of adults lie
  around 100-400 HU; a series stored without its rescale intercept (-1024)
  puts them above 1000. This needs no air in the field of view, unlike an
  "air must be near -1000" rule, and so also works on tightly cropped CTs.

Voxels outside the reconstructed field of view (DICOM ``PixelPaddingValue``,
:mod:`features.io.dicom`) are not HU and take no part in either rule.

Calibration (``ingest.calibration.enabled``): after the HU checks the study's
own reference tissues fix a linear HU correction (:mod:`features.calibration`);
the ROIs, and so the pools and HU statistics, are cut from the calibrated CT and
the coefficients and reference HUs travel with every row (``cal_*``,
``ref_*_hu``). A study whose references cannot be found or whose line is
implausible is quarantined (``Calibration*Error``).

Identity rule (DICOM only): every kept object's ``PatientID`` must equal the
export row's MRN and its ``AccessionNumber`` the row's accession number (after
stripping blanks; an empty AccessionNumber, a DICOM type-2 attribute PACS
often leave blank, is accepted when the PatientID matches), else
:class:`IdentifierMismatchError`. The worker never receives the raw values:
the task carries salted SHA-256 digests (:class:`ExpectedIdentity`) and the
DICOM values are digested with the same salt in memory.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import atomic
from features.calibration import calibrate_study, uncalibrated_record
from features.errors import (HUOutOfRangeError, IdentifierMismatchError, IngestError, MissingLevelError,
                             NoVertebraError, UnsupportedFormatError, UnsupportedLevelError)
from features.geometry import check_alignment
from features.io.dicom import DicomSeries, read_dicom_study
from features.io.masks import LEVEL_NAMES, T13_LABEL, read_mask
from features.io.volume import Volume, read_nifti, to_ras
from features.quarantine import QuarantineRecord
from features.roi import RoiSpec, VertebraROI, extract_rois
from osteo_config.ingest import CalibrationConfig


def _digest(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}\x00{value.strip()}".encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ExpectedIdentity:
    """Salted SHA-256 digests of the export row's MRN and accession number (the raw values stay in the parent).

    Attributes:
        salt: random per run (not stored anywhere).
        patient_sha256: digest of the row's MRN.
        accession_sha256: digest of the row's accession number.
    """

    salt: str
    patient_sha256: str
    accession_sha256: str

    @classmethod
    def of(cls, mrn: str, accession: str, salt: str | None = None) -> "ExpectedIdentity":
        """Digest one export row's identifiers (``salt`` defaults to a fresh random one)."""
        salt = salt if salt is not None else secrets.token_hex(16)
        return cls(salt=salt, patient_sha256=_digest(salt, mrn), accession_sha256=_digest(salt, accession))


@dataclass(frozen=True)
class StudyTask:
    """What a worker needs for one study (paths are absolute; identifiers only as salted digests)."""

    study_id: str
    ct_path: str
    ct_format: str
    mask_path: str
    mask_format: str
    identity: ExpectedIdentity | None = None
    contrast: bool | None = None     # IV contrast (ct_studies.csv); None = unknown: blood is no calibration reference


@dataclass(frozen=True)
class StudyChecks:
    """Study-level tolerances (from :class:`features.ingest.IngestConfig`)."""

    alignment_tol_mm: float
    direction_tol: float
    hu_valid_range: tuple[float, float]
    hu_invalid_share: float
    vertebra_median_hu_range: tuple[float, float]
    calibration: CalibrationConfig | None = None    # None or enabled=False: HU as stored


@dataclass
class StudyResult:
    """Outcome of one study.

    Attributes:
        study_id: pseudonymous id.
        ok: the study passed the study-level checks (it may still have quarantined vertebrae).
        rois: per written vertebra: level, roi_path, roi_sha256, stats.
        quarantine: refused study or vertebrae.
        vertebrae_seen: thoracolumbar vertebrae found in the mask (0 when the study failed).
        dicom_filtered: DICOM objects of the series folder left out (scouts, dose reports, ...),
            ``{reason: count}`` (reasons in :data:`features.io.dicom.FILTER_REASONS`; no identifiers).
        calibration: the study's HU calibration columns (:meth:`features.calibration.HUCalibration.record`).
    """

    study_id: str
    ok: bool
    rois: list[dict] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    vertebrae_seen: int = 0
    dicom_filtered: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, object] = field(default_factory=uncalibrated_record)


def check_hu(ct: Volume, levels: np.ndarray, item: str, checks: StudyChecks,
             outside_fov: np.ndarray | None = None) -> None:
    """Raise :class:`HUOutOfRangeError` when the CT is not plausibly in HU (rule in module docstring).

    Args:
        outside_fov: True on voxels outside the field of view (padding): not HU, ignored.
    """
    lo, hi = checks.hu_valid_range
    inside = np.ones(ct.shape, bool) if outside_fov is None else ~outside_fov
    a = ct.array[inside]
    bad = (a < lo) | (a > hi)
    share = float(np.mean(bad)) if a.size else 0.0
    if share > checks.hu_invalid_share:
        out = a[bad]
        low = out[out < lo]
        # padding is one stored constant (a few HU values with per-slice intercepts) below air;
        # a missing or wrong rescale spreads the values instead (sampled: cheap on big volumes)
        distinct = len(np.unique(low[::max(1, low.size // 100_000)])) if low.size else 0
        padding_like = low.size > 0.9 * out.size and 0 < distinct <= 8
        fix = ("the out-of-range voxels look like padding outside the scan field of view: export the DICOM "
               "series with its PixelPaddingValue (0028,0120) (a NIfTI conversion loses it)") if padding_like else \
            "re-export the CT in Hounsfield units (apply RescaleSlope/RescaleIntercept)"
        raise HUOutOfRangeError(
            item, f"{100 * share:.2f}% of voxels lie outside {list(checks.hu_valid_range)} HU "
                  f"(limit {100 * checks.hu_invalid_share:.2f}%; {100 * low.size / out.size:.0f}% of them "
                  f"below {lo:.0f} HU in {distinct} distinct value(s))", fix)
    lab = (levels > 0) & inside
    med = float(np.median(ct.array[lab])) if np.any(lab) else 0.0
    mlo, mhi = checks.vertebra_median_hu_range
    if not (mlo <= med <= mhi):
        raise HUOutOfRangeError(
            item, f"median HU inside the vertebrae is {med:.0f} (expected {mlo:.0f}..{mhi:.0f}): "
                  f"the rescale intercept was probably not applied",
            "re-export the CT in Hounsfield units (apply RescaleSlope/RescaleIntercept)")


def roi_sha256(hu: np.ndarray, body: np.ndarray) -> str:
    """SHA-256 of the ROI: ``hu`` bytes then ``body`` bytes (C order)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(hu, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(body, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_roi(roi: VertebraROI, out_dir: Path) -> tuple[str, str]:
    """Write ``rois/<sha[:2]>/<sha>.npz`` atomically (skip if present). Returns (relative path, sha)."""
    sha = roi_sha256(roi.hu, roi.body)
    rel = Path("rois") / sha[:2] / f"{sha}.npz"
    dst = Path(out_dir) / rel
    if not dst.is_file():   # content-addressed: an existing file already holds these bytes
        atomic.write_npz(dst, hu=roi.hu, body=roi.body)
    return rel.as_posix(), sha


def read_ct(task: StudyTask) -> Volume:
    """Read the study's CT in its stored orientation (RAS affine)."""
    return read_ct_study(task)[0]


def read_ct_study(task: StudyTask) -> tuple[Volume, DicomSeries | None]:
    """Read the study's CT; for DICOM also the series record (padding mask, filtered objects, identifiers)."""
    if task.ct_format == "nifti":
        return read_nifti(Path(task.ct_path), task.study_id, "CT", dtype=np.float32), None
    if task.ct_format == "dicom":
        series = read_dicom_study(Path(task.ct_path), task.study_id)
        return series.volume, series
    raise UnsupportedFormatError(task.study_id, f"ct_format {task.ct_format!r} is unknown",
                                 "export CTs as nifti or dicom")


def check_identity(series: DicomSeries, expected: ExpectedIdentity, item: str) -> None:
    """Raise :class:`IdentifierMismatchError` when the series' PatientID / AccessionNumber differ from the row.

    Compares salted digests only; messages never hold the identifiers.
    """
    fix = ("check that the folder holds this study's series (re-export it from PACS) or correct the "
           "ct_studies.csv row; the identifiers are not shown here on purpose (PHI)")
    if any(not v for v in series.patient_ids):
        raise IdentifierMismatchError(item, "the DICOM series has no PatientID: it cannot be matched to its patient",
                                      fix)
    if any(_digest(expected.salt, v) != expected.patient_sha256 for v in series.patient_ids):
        raise IdentifierMismatchError(item, "the DICOM PatientID differs from the export row's MRN "
                                            "(series filed under another patient?)", fix)
    if any(v and _digest(expected.salt, v) != expected.accession_sha256 for v in series.accessions):
        raise IdentifierMismatchError(item, "the DICOM AccessionNumber differs from the export row's "
                                            "accession number (series filed under another study?)", fix)


def _levels_present(labels: np.ndarray, item: str) -> tuple[list[int], bool]:
    values = np.unique(labels)
    present = [int(v) for v in values if 1 <= v <= len(LEVEL_NAMES)]
    has_t13 = bool(np.any(values == T13_LABEL))
    if not present:
        raise NoVertebraError(item, "mask holds no thoracic or lumbar vertebra",
                              "segment the CT with TotalSegmentator (task total) or provide VerSe labels")
    gaps = sorted(set(range(present[0], present[-1] + 1)) - set(present))
    if gaps:
        raise MissingLevelError(
            item, f"levels {', '.join(LEVEL_NAMES[g - 1] for g in gaps)} are missing between "
                  f"{LEVEL_NAMES[present[0] - 1]} and {LEVEL_NAMES[present[-1] - 1]}",
            "review the vertebra labelling of this study (a gap means the labels may be shifted)")
    return present, has_t13


def process_study(task: StudyTask, spec: RoiSpec, checks: StudyChecks, out_dir: str) -> StudyResult:
    """Run one study end to end (see module docstring); typed faults become quarantine records."""
    item = task.study_id
    filtered: dict[str, int] = {}
    try:
        ct, series = read_ct_study(task)
        outside = None
        if series is not None:
            filtered = dict(series.filtered)
            if task.identity is not None:
                check_identity(series, task.identity, item)
            outside = to_ras(Volume(series.outside_fov, ct.affine)).array
        mask = read_mask(Path(task.mask_path), task.mask_format, item)
        check_alignment(ct, mask.volume, item, checks.alignment_tol_mm, checks.direction_tol)
        ct, levels = to_ras(ct), to_ras(mask.volume)
        present, has_t13 = _levels_present(levels.array, item)
        check_hu(ct, levels.array, item, checks, outside)
        record = uncalibrated_record()
        if checks.calibration is not None and checks.calibration.enabled:
            cal = calibrate_study(ct.array, ct.spacing, levels.array, checks.calibration, item, task.contrast,
                                  outside)
            ct, record = Volume(cal.apply(ct.array), ct.affine), cal.record()
    except IngestError as err:
        return StudyResult(study_id=item, ok=False, quarantine=[QuarantineRecord.from_error(err, "study")],
                           dicom_filtered=dict(getattr(err, "filtered", filtered)))

    result = StudyResult(study_id=item, ok=True, vertebrae_seen=len(present) + int(has_t13),
                         dicom_filtered=filtered, calibration=record)
    if has_t13:
        t13 = UnsupportedLevelError(f"{item}:T13", "a T13 vertebra has no ordinal level slot (1-18)",
                                    "none needed: T13 is left out, T12 and L1 keep their names")
        result.quarantine.append(QuarantineRecord.from_error(t13, "vertebra"))
    for out in extract_rois(ct, levels, spec, item, present):
        if isinstance(out, IngestError):
            result.quarantine.append(QuarantineRecord.from_error(out, "vertebra"))
            continue
        rel, sha = write_roi(out, Path(out_dir))
        result.rois.append(dict(level=out.level, roi_path=rel, roi_sha256=sha, **out.stats))
    return result
