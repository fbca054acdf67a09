"""Readers and study-level faults: DICOM round trip, DICOM faults, corrupt files, geometry, labels, HU."""
from __future__ import annotations

import numpy as np
import pytest

from features.errors import (GantryTiltError, HUOutOfRangeError, MisalignedMaskError, MissingLevelError,
                             MixedSeriesError, NonUniformSpacingError, OrientationMismatchError,
                             ShapeMismatchError, SpacingMismatchError, UnreadableFileError, UnsupportedLevelError)
from features.io.dicom import read_dicom_series
from features.io.masks import read_mask
from features.io.volume import read_nifti, to_ras
from features.ingest import roi_spec, study_checks
from features.study import StudyTask, process_study


def _run(tmp_path, synth, ct, mask, ct_format="nifti", mask_format="totalseg"):
    cfg = synth.config()
    return process_study(StudyTask("sid", str(ct), ct_format, str(mask), mask_format), roi_spec(cfg),
                         study_checks(cfg), str(tmp_path / "out"))


@pytest.fixture
def dicom_case(tmp_path, synth, phantom):
    hu, lab, aff, _ = phantom
    nii = synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz")
    dcm = synth.write_dicom_series(hu, aff, tmp_path / "dicom")
    seg = synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz")
    return nii, dcm, seg


def test_dicom_round_trip_equals_nifti(tmp_path, synth, dicom_case):
    # purpose: per-slice rescale, LPS->RAS and slice sorting reproduce the NIfTI exactly
    nii, dcm, seg = dicom_case
    a = to_ras(read_nifti(nii, "sid", "CT"))
    b = to_ras(read_dicom_series(dcm, "sid"))
    assert np.array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.spacing, b.spacing)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    ra = _run(tmp_path, synth, nii, seg)
    rb = _run(tmp_path, synth, dcm, seg, ct_format="dicom")
    assert ra.ok and rb.ok and len(ra.rois) == 3
    assert [r["roi_sha256"] for r in ra.rois] == [r["roi_sha256"] for r in rb.rois]
    assert [r["hu_mean"] for r in ra.rois] == [r["hu_mean"] for r in rb.rois]


@pytest.mark.parametrize("kw,err", [
    (dict(tilt_mm=0.2), GantryTiltError),
    (dict(mixed_uid=True), MixedSeriesError),
    (dict(drop_slice=20), NonUniformSpacingError),
])
def test_dicom_faults(tmp_path, synth, phantom, kw, err):
    hu, _, aff, _ = phantom
    folder = synth.write_dicom_series(hu[:, :, :30], aff, tmp_path / "d", **kw)
    with pytest.raises(err) as exc:
        read_dicom_series(folder, "sid")
    assert type(exc.value) is err and "sid" in str(exc.value) and "fix:" in str(exc.value)


def _study_reason(res):
    assert not res.ok and len(res.quarantine) == 1 and res.quarantine[0].kind == "study"
    return res.quarantine[0].reason


def test_corrupt_and_missing_files(tmp_path, synth, phantom):
    hu, lab, aff, _ = phantom
    seg = synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a nifti")
    assert _study_reason(_run(tmp_path, synth, bad, seg)) == "UnreadableFileError"
    ct = synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz")
    assert _study_reason(_run(tmp_path, synth, ct, tmp_path / "nope.nii.gz")) == "UnreadableFileError"
    with pytest.raises(UnreadableFileError):
        read_mask(tmp_path / "nodir", "totalseg_dir", "sid")


def _geom_cases(hu, lab, aff):
    seg = np.where(lab > 0, 44 - lab, 0).astype(np.int16)
    flipped = aff.copy()
    flipped[:3, 0] *= -1                              # x axis flipped, data not: a different world grid
    shifted = aff.copy()
    shifted[:3, 3] += [0.0, 3.0, 0.0]                 # 3 mm anterior
    coarse = aff.copy()
    coarse[:3, 2] *= 2.0                              # z spacing doubled
    return {
        OrientationMismatchError: (seg, flipped),
        MisalignedMaskError: (seg, shifted),
        SpacingMismatchError: (seg[:, :, ::2].copy(), coarse),
        ShapeMismatchError: (seg[:, :, :-4].copy(), aff),
        "subtle_spacing": (seg, aff @ np.diag([1.05, 1, 1, 1])),  # 5 % off: 1.9 mm drift over 48 voxels
    }


@pytest.mark.parametrize("err", [OrientationMismatchError, MisalignedMaskError, SpacingMismatchError,
                                 ShapeMismatchError, "subtle_spacing"])
def test_geometry_faults(tmp_path, synth, phantom, err):
    hu, lab, aff, _ = phantom
    ct = synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz")
    seg, seg_aff = _geom_cases(hu, lab, aff)[err]
    res = _run(tmp_path, synth, ct, synth.save_nifti(seg, seg_aff, tmp_path / "seg.nii.gz"))
    err = SpacingMismatchError if err == "subtle_spacing" else err
    assert _study_reason(res) == err.__name__
    assert "sid" in res.quarantine[0].detail and "fix:" in res.quarantine[0].detail


def test_mask_in_other_axis_order_is_accepted(tmp_path, synth, phantom):
    # purpose: a mask that is the CT grid stored LPS (same world geometry) is not an orientation fault
    hu, lab, aff, _ = phantom
    ct = synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz")
    seg_l, aff_l = synth.to_lps_storage(synth.to_totalseg(lab), aff)
    res = _run(tmp_path, synth, ct, synth.save_nifti(seg_l, aff_l, tmp_path / "seg.nii.gz"))
    assert res.ok and len(res.rois) == 3


def test_missing_level_quarantines_the_study(tmp_path, synth, phantom):
    hu, lab, aff, _ = phantom
    lab = np.where(lab == 13, 0, lab).astype(np.int16)       # T12, L2 without L1
    res = _run(tmp_path, synth, synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz"),
               synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz"))
    assert _study_reason(res) == MissingLevelError.__name__ and res.rois == []


def test_hu_without_intercept_is_quarantined(tmp_path, synth, phantom):
    hu, lab, aff, _ = phantom
    raw = (hu.astype(np.int32) + 1024).astype(np.int16)       # stored values, intercept never applied
    res = _run(tmp_path, synth, synth.save_nifti(raw, aff, tmp_path / "ct.nii.gz"),
               synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz"))
    assert _study_reason(res) == HUOutOfRangeError.__name__


def test_verse_t13_is_quarantined_alone(tmp_path, synth, phantom):
    # purpose: T13 has no ordinal slot; its neighbours T12 and L1 are kept and no gap is reported
    hu, lab, aff, _ = phantom                                  # levels T12 (top), L1, L2
    verse = synth.to_verse(lab)
    verse[verse == 20] = 28                                    # relabel L1 as T13 ...
    verse[verse == 21] = 20                                    # ... and L2 as L1: T12, T13, L1
    res = _run(tmp_path, synth, synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz"),
               synth.save_nifti(verse, aff, tmp_path / "seg_verse.nii.gz"), mask_format="verse")
    assert res.ok and sorted(r["level"] for r in res.rois) == [12, 13]
    assert [(q.kind, q.reason, q.item) for q in res.quarantine] == [
        ("vertebra", UnsupportedLevelError.__name__, "sid:T13")]
    assert res.vertebrae_seen == 3
