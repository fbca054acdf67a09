"""Fixtures of the screening tests: a synthetic CT series (the simulator's own DICOM writer), a study result,
and a real Orthanc (Debian packages orthanc + orthanc-dicomweb) on 127.0.0.1 with a temporary storage."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from cohort.phi import dicom_uid
from cohort.writers import DicomMeta, write_dicom_series
from osteo_testing.screening_fixtures import example_study_result
from screening.results import StudyResult

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
ORTHANC_START_S = 120          # the machine is shared: Orthanc may take a while to open its database


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
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc with the DICOMweb plugin: yields its DICOMweb root URL; stopped afterwards."""
    plugin = next((p for p in DICOMWEB_PLUGINS if Path(p).exists()), None)
    if ORTHANC is None or plugin is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed: `make test` installs them "
                    "(apt-get install orthanc orthanc-dicomweb); the PACS round trip is skipped")
    http, dicom = _free_port(), _free_port()
    storage = tmp_path / "orthanc-db"
    storage.mkdir()
    config = {"Name": "osteo-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "HttpBindAddress": "127.0.0.1" , "DicomServerEnabled": False, "Plugins": [plugin],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}, "StableAge": 1}
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + ORTHANC_START_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/dicom-web/studies", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer on {base} within {ORTHANC_START_S} s")
            time.sleep(0.3)
        yield f"{base}/dicom-web"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
