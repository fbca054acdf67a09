"""Fixtures of the screening tests: a synthetic CT series (the simulator's own DICOM writer), a study result,
and a real Orthanc (Debian packages orthanc + orthanc-dicomweb) on 127.0.0.1 with a temporary storage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cohort.phi import dicom_uid
from cohort.writers import DicomMeta, write_dicom_series
from osteo_testing.orthanc import orthanc_missing, running_orthanc
from osteo_testing.screening_fixtures import example_study_result
from screening.results import StudyResult


@pytest.fixture(scope="session")
def ct_meta() -> DicomMeta:
    """PHI-shaped header of the synthetic study (fake, but real-looking: exercises re-identification)."""
    return DicomMeta(patient_name="DOE^JANE", patient_id="MRN0042137", birth_date="19480312", sex="F",
                     accession="ACC20260511", study_uid=dicom_uid(1, "study"), series_uid=dicom_uid(1, "series"),
                     frame_uid=dicom_uid(1, "frame"), study_date="20260511", institution="Site A Hospital",
                     manufacturer="GE MEDICAL SYSTEMS", model="Revolution", kvp=120.0, contrast=False,
                     sop_uid_seed="screen-test")


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory, ct_meta) -> tuple[Path, np.ndarray]:
    """(folder of CT Image Storage files, RAS HU volume (x, y, z)) of a small synthetic study."""
    out = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(3)
    hu = rng.normal(40.0, 10.0, (32, 32, 12)).astype(np.float32)          # (x, y, z)
    hu[10:22, 14:26, :] = 220.0                                            # a bone-like block
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    n = write_dicom_series(out, hu, affine, ct_meta, rng)
    assert n == hu.shape[2]
    return out, hu


@pytest.fixture(scope="session")
def ct_headers(ct_series) -> list[pydicom.Dataset]:
    folder, _ = ct_series
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="session")
def study_result() -> StudyResult:
    """Two measured lumbar levels and two excluded levels, read as three vendors."""
    return example_study_result()


# ---------------------------------------------------------------------------- Orthanc
@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc with the DICOMweb plugin: yields its DICOMweb root URL; stopped afterwards."""
    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    with running_orthanc(tmp_path) as url:
        yield url
