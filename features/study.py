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
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.errors import (HUOutOfRangeError, IngestError, MissingLevelError, NoVertebraError,
                             UnsupportedFormatError, UnsupportedLevelError)
from features.geometry import check_alignment
from features.io.dicom import read_dicom_series
from features.io.masks import LEVEL_NAMES, T13_LABEL, read_mask
from features.io.volume import Volume, read_nifti, to_ras
from features.quarantine import QuarantineRecord
from features.roi import RoiSpec, VertebraROI, extract_rois


@dataclass(frozen=True)
class StudyTask:
    """What a worker needs for one study (paths are absolute; no patient identifiers)."""

    study_id: str
    ct_path: str
    ct_format: str
    mask_path: str
    mask_format: str


@dataclass(frozen=True)
class StudyChecks:
    """Study-level tolerances (from :class:`features.ingest.IngestConfig`)."""

    alignment_tol_mm: float
    direction_tol: float
    hu_valid_range: tuple[float, float]
    hu_invalid_share: float
    vertebra_median_hu_range: tuple[float, float]


@dataclass
class StudyResult:
    """Outcome of one study.

    Attributes:
        study_id: pseudonymous id.
        ok: the study passed the study-level checks (it may still have quarantined vertebrae).
        rois: per written vertebra: level, roi_path, roi_sha256, stats.
        quarantine: refused study or vertebrae.
        vertebrae_seen: thoracolumbar vertebrae found in the mask (0 when the study failed).
    """

    study_id: str
    ok: bool
    rois: list[dict] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    vertebrae_seen: int = 0


def check_hu(ct: Volume, levels: np.ndarray, item: str, checks: StudyChecks) -> None:
    """Raise :class:`HUOutOfRangeError` when the CT is not plausibly in HU (rule in module docstring)."""
    lo, hi = checks.hu_valid_range
    a = ct.array
    share = float(np.mean((a < lo) | (a > hi)))
    if share > checks.hu_invalid_share:
        raise HUOutOfRangeError(
            item, f"{100 * share:.2f}% of voxels lie outside {list(checks.hu_valid_range)} HU "
                  f"(limit {100 * checks.hu_invalid_share:.2f}%)",
            "re-export the CT in Hounsfield units (apply RescaleSlope/RescaleIntercept)")
    med = float(np.median(a[levels > 0])) if np.any(levels > 0) else 0.0
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
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{sha}.{np.random.default_rng().integers(1 << 30)}.tmp.npz")
        np.savez_compressed(tmp, hu=roi.hu, body=roi.body)
        tmp.replace(dst)
    return rel.as_posix(), sha


def read_ct(task: StudyTask) -> Volume:
    """Read the study's CT in its stored orientation (RAS affine)."""
    if task.ct_format == "nifti":
        return read_nifti(Path(task.ct_path), task.study_id, "CT", dtype=np.float32)
    if task.ct_format == "dicom":
        return read_dicom_series(Path(task.ct_path), task.study_id)
    raise UnsupportedFormatError(task.study_id, f"ct_format {task.ct_format!r} is unknown",
                                 "export CTs as nifti or dicom")


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
    try:
        ct = read_ct(task)
        mask = read_mask(Path(task.mask_path), task.mask_format, item)
        check_alignment(ct, mask.volume, item, checks.alignment_tol_mm, checks.direction_tol)
        ct, levels = to_ras(ct), to_ras(mask.volume)
        present, has_t13 = _levels_present(levels.array, item)
        check_hu(ct, levels.array, item, checks)
    except IngestError as err:
        return StudyResult(study_id=item, ok=False, quarantine=[QuarantineRecord.from_error(err, "study")])

    result = StudyResult(study_id=item, ok=True, vertebrae_seen=len(present) + int(has_t13))
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
