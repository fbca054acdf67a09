"""`osteo screen run --pacs URL` through the real CLI against a real Orthanc (DICOMweb plugin).

A synthetic CT study (PHI-shaped header, the geometry phantom's pixels) is uploaded; the CLI finds it by
QIDO, exports it, has the stand-in segmenter write the phantom's known mask, screens it with the tiny
champion of test_screen_batch, and stores the SR + Encapsulated PDF back. The SR found on Orthanc must
reference the uploaded series and carry the batch's BMD values; a second run screens nothing new.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import highdicom as hd
import pandas as pd
import pydicom
import pytest
import yaml
from typer.testing import CliRunner

from screening.pacs import PacsClient
from screening.pacs_sync import ENCAPSULATED_PDF
from screening.sr import BMD

pytestmark = pytest.mark.slow          # the tiny champion (~20 s), then one screening per CLI run (~10 s)

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_tsb = _load("_screen_batch_fixture", "tests/screening/test_screen_batch.py")
_ph = _tsb._ph
champion = _tsb.champion                  # the module-scoped tiny champion (registered in its own MLflow)
MRN, NAME, ACC = "MRN8842001", "QUINTILLA^SPARROWHAWK", "ACC8842001"   # planted: must not reach the output


def _upload_study(pacs: PacsClient, folder: Path) -> tuple[str, str]:
    """The phantom as a CT series with a full PHI-shaped header, stored on the PACS: (study UID, series UID)."""
    hu, _, affine, _ = _ph.make_phantom()
    _ph.write_dicom_series(hu, affine, folder, patient_name=NAME, mrn=MRN, accession=ACC)
    files = []
    for p in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.StudyDate, ds.StudyTime, ds.PatientBirthDate, ds.PatientSex = "20260511", "101500", "19500310", "F"
        ds.InstitutionName, ds.Manufacturer, ds.ManufacturerModelName = "Site A", "GE MEDICAL SYSTEMS", "Revolution"
        ds.SeriesNumber, ds.KVP = 2, "120"
        files.append(ds)
    assert pacs.store(files) == len(files)
    return str(files[0].StudyInstanceUID), str(files[0].SeriesInstanceUID)


@pytest.fixture
def setup(champion, orthanc, tmp_path, monkeypatch):
    """(params file, DICOMweb URL, study UID, series UID, segmenter command) with the study on the PACS."""
    monkeypatch.setenv("OSTEO_SCREEN_TEST_KEY", "5f1c9e0a7b3d42c8a61e9f07d2b4c83e1a5f6d7092b3c4e8f1a2b3c4d5e6f708")
    monkeypatch.delenv("OSTEO_PROFILE", raising=False)
    params, _ = champion
    p = copy.deepcopy(params)
    p.pop("profiles", None)
    p["profile"] = "demo"                                 # the file holds the merged tiny params
    p["screen"]["pacs"] = {"lookback_days": 3650, "timeout_s": 60}   # the synthetic study is dated 2026-05-11
    p.setdefault("compute", {})["local_workers"] = 1
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(p))
    study_uid, series_uid = _upload_study(PacsClient(orthanc, timeout_s=60), tmp_path / "upload")
    hu, labels, affine, _ = _ph.make_phantom()
    known = tmp_path / "known_mask.nii.gz"
    _ph.save_nifti(_ph.to_totalseg(labels), affine, known)
    script = tmp_path / "stand_in_segmenter.py"
    script.write_text(_tsb.SEGMENTER)
    return pfile, orthanc, study_uid, series_uid, f"{sys.executable} {script} {{ct}} {{out}} {known}"


def _cli(*args: str):
    from osteo.cli import app
    return CliRunner().invoke(app, list(args))


def _bmd_by_level(sr: pydicom.Dataset, vendor: str) -> dict[str, float]:
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    return {str(g.tracking_identifier): float(m.value) for g in groups for m in g.get_measurements(name=BMD)
            if m.method.meaning == f"As a {vendor} DXA would read"}


def test_pacs_round_trip_through_the_cli_and_a_second_run_screens_nothing(setup, tmp_path):
    pfile, url, study_uid, series_uid, segmenter = setup
    out = tmp_path / "screening"
    res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out), "--segmenter", segmenter)
    assert res.exit_code == 0, res.output
    assert "1 new CT series" in res.output and "screened 1" in res.output and "stored back: 1 SR + 1" in res.output
    assert not [x for x in (MRN, ACC, *NAME.split("^")) if x in res.output]

    batch = next((out / "batches").iterdir())
    vert = pd.read_parquet(batch / "vertebrae.parquet")
    assert len(vert) == 3 and set(vert["level_name"]) == {"T12", "L1", "L2"}

    pacs = PacsClient(url, timeout_s=60)
    (sr_item,) = pacs.find_instances(study_uid, modality="SR")
    (doc_item,) = pacs.find_instances(study_uid, modality="DOC")
    (sr,) = pacs.retrieve_series(study_uid, sr_item["series_uid"])
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == series_uid and str(sr.PatientID) == MRN and sr.AccessionNumber == ACC
    measured = vert[~vert["excluded"]]
    for vendor, col in (("Hologic", "bmd_hologic"), ("GE Lunar", "bmd_ge_lunar")):
        got = _bmd_by_level(sr, vendor)
        want = dict(zip(measured["level_name"], measured[col]))
        assert set(got) == set(want) and got == pytest.approx(want, rel=1e-6)
    (doc,) = pacs.retrieve_series(study_uid, doc_item["series_uid"])
    pdf = next((batch / "reports").glob("*.pdf")).read_bytes()
    assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.EncapsulatedDocument[: len(pdf)] == pdf

    # the state file moved on only after the STOW: the next run finds nothing new and stores nothing
    again = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out), "--segmenter", segmenter)
    assert again.exit_code == 0, again.output
    assert "0 new CT series" in again.output and "nothing new to screen" in again.output
    assert len(pacs.find_instances(study_uid, modality="SR")) == 1
    assert len(list((out / "batches").iterdir())) == 1 and len(pd.read_parquet(out / "ledger.parquet")) == 1


def test_pacs_without_segmenter_quarantines_review_stores_on_approve_and_unreachable_exits_5(setup, tmp_path):
    pfile, url, study_uid, _, segmenter = setup
    # no --segmenter: the PACS study has no mask, it is quarantined (typed) and the run completes
    res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(tmp_path / "nomask"))
    assert res.exit_code == 0, res.output
    assert "quarantined 1 (MissingMaskError 1)" in res.output and "screened 0" in res.output

    # review required: nothing goes back until approval; `approve` stores the verified SR
    p = yaml.safe_load(pfile.read_text())
    p["screen"]["review"] = "required"
    pfile.write_text(yaml.safe_dump(p))
    out = tmp_path / "review"
    res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out), "--segmenter", segmenter)
    assert res.exit_code == 0, res.output
    assert "wait for `osteo screen approve`" in res.output
    pacs = PacsClient(url, timeout_s=60)
    assert pacs.find_instances(study_uid, modality="SR") == []
    batch_id = next((out / "batches").iterdir()).name
    res = _cli("--params", str(pfile), "screen", "approve", batch_id, "--reviewer", "Dr. Ada Reviewer",
               "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "stored back on the PACS: 1 SR + 1" in res.output
    (sr_item,) = pacs.find_instances(study_uid, modality="SR")
    (sr,) = pacs.retrieve_series(study_uid, sr_item["series_uid"])
    assert sr.VerificationFlag == "VERIFIED"

    # a PACS that does not answer: exit 5, the message names the URL, the state file is untouched
    from osteo_testing.orthanc import free_port
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    res = _cli("--params", str(pfile), "screen", "run", "--pacs", dead, "--out", str(out), "--segmenter", segmenter)
    assert res.exit_code == 5 and dead in res.output
    from screening.pacs_batch import state_path
    assert not state_path(out, dead).exists()


KILLER = """import shutil, sys, requests
from pathlib import Path
ct, out, known, base = sys.argv[1:5]
shutil.copyfile(known, out)
requests.post(base + "/tools/shutdown", timeout=10)     # the PACS goes away after the export, before the STOW
"""


def test_pacs_down_before_the_stow_keeps_the_state_and_the_next_run_stores_the_leftovers(setup, tmp_path):
    """Fault: the PACS stops while the batch is screened. Exit 5, the state file does not move; after a
    restart the next run stores the left-over SR + PDF once, screens nothing twice, then finds nothing new."""
    from osteo_testing.orthanc import free_port, running_orthanc
    from screening.pacs_batch import state_path

    pfile, _, _, _, segmenter = setup
    known = segmenter.split()[-1]
    port, work, out = free_port(), tmp_path / "pacs2", tmp_path / "out"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    with running_orthanc(work, http_port=port) as url:
        study_uid, series_uid = _upload_study(PacsClient(url, timeout_s=60), tmp_path / "upload2")
        base = url[: -len("/dicom-web")]
        res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out),
                   "--segmenter", f"{sys.executable} {killer} {{ct}} {{out}} {known} {base}")
        assert res.exit_code == 5, res.output
        assert url in res.output and not state_path(out, url).exists()
    (batch,) = (out / "batches").iterdir()
    assert yaml.safe_load((batch / "pacs.json").read_text())["state"] == "to_store"
    assert len(pd.read_parquet(out / "ledger.parquet")) == 1           # screened once, reports not yet delivered

    with running_orthanc(work, http_port=port) as url2:               # the same PACS back, same URL
        assert url2 == url
        pacs = PacsClient(url, timeout_s=60)
        assert pacs.find_instances(study_uid, modality="SR") == []
        res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out), "--segmenter", segmenter)
        assert res.exit_code == 0, res.output
        assert "stored 1 SR + 1 PDF left over from 1 earlier batch" in res.output
        assert "screened 0" in res.output and "skipped (same version) 1" in res.output
        (sr_item,) = pacs.find_instances(study_uid, modality="SR")
        (sr,) = pacs.retrieve_series(study_uid, sr_item["series_uid"])
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == \
            series_uid
        assert yaml.safe_load((batch / "pacs.json").read_text())["state"] == "stored"
        res = _cli("--params", str(pfile), "screen", "run", "--pacs", url, "--out", str(out), "--segmenter", segmenter)
        assert res.exit_code == 0 and "0 new CT series" in res.output, res.output
        assert len(pacs.find_instances(study_uid, modality="SR")) == 1
