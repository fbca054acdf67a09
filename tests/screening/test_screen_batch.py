"""`osteo screen` end to end: a tiny export without DXA, a tiny trained champion, real MLflow (SQLite).

The export holds DICOM and NIfTI studies with PHI-shaped identifiers, a study whose mask a stand-in
segmenter writes, one with metal planted in L1 (an excluded level) and one whose mask does not fit
its CT (quarantined). The model is trained on contract-shaped pools (tests/osteo_model's fixture) with
this run's ingest and texture settings, so its I/O contract matches unless a test changes them.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from mlflow import MlflowClient

from osteo_config import Config
from screening.batch import ScreenRequest, screen_folder, slug
from screening.model import check_skew
from screening.errors import ModelNotFoundError, ReviewError, TrainServeSkewError
from screening.reports import release, reject

pytestmark = pytest.mark.slow          # one tiny training (~20 s), then ingest + texture per batch (~10 s)

REPO = Path(__file__).resolve().parents[2]
NAME = "osteo-screening"


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_train = _load("_train_fixture", "tests/osteo_model/test_experiment.py")
_ph = _load("_phantom_fixture", "tests/features/conftest.py")

PEOPLE = {  # PHI-shaped, fake: planted so that any leak into a table, a log or MLflow is found
    "S1": dict(mrn="MRN7731001", name="ZEPHYRINE^QUAXLEY", acc="ACC9900111", fmt="dicom"),
    "S2": dict(mrn="MRN7731002", name="BARNABY^WOLFRAMIUS", acc="ACC9900222", fmt="nifti", metal=True),
    "S3": dict(mrn="MRN7731003", name="ODALYS^PRIMROSEWELL", acc="ACC9900333", fmt="nifti", segment=True),
    "S4": dict(mrn="MRN7731004", name="TIBERIUS^MOONQUILL", acc="ACC9900444", fmt="nifti", bad_mask=True),
}
INGEST = dict(spacing_mm=[1.0, 1.0, 1.0], roi_shape=[24, 24, 16], body_opening_mm=2.0, core_erosion_mm=1.0,
              min_body_voxels=150, allow_demo_key=False, key_env="OSTEO_SCREEN_TEST_KEY",
              key_file="/nonexistent/osteo-test.key", workers=1, calibration={"enabled": False})
SEGMENTER = """import shutil, sys
from pathlib import Path
ct, out, known = map(Path, sys.argv[1:4])
assert ct.exists(), ct
shutil.copyfile(known, out)
"""


def write_export(raw: Path, people=PEOPLE, segmenter_mask: Path | None = None) -> None:
    hu, labels, affine, truth = _ph.make_phantom()
    pats, studies = [], []
    for i, (key, p) in enumerate(people.items()):
        h = hu.copy()
        if p.get("metal"):
            body = truth["body"][13]
            idx = np.argwhere(body)[:: 10]                  # 10 % of L1's body voxels at 3000 HU: hardware
            h[tuple(idx.T)] = 3000
        ct_rel = f"ct/{key}" if p["fmt"] == "dicom" else f"ct/{key}.nii.gz"
        if p["fmt"] == "dicom":
            _ph.write_dicom_series(h, affine, raw / ct_rel, patient_name=p["name"], mrn=p["mrn"], accession=p["acc"])
        else:
            _ph.save_nifti(h, affine, raw / ct_rel)
        mask_rel = "" if p.get("segment") else f"masks/{key}.nii.gz"
        if mask_rel:
            lab = _ph.to_totalseg(labels)
            _ph.save_nifti(lab[:, :, :-4] if p.get("bad_mask") else lab, affine, raw / mask_rel)
        pats.append(dict(mrn=p["mrn"], patient_name=p["name"], birth_date="1950-03-1" + str(i), sex="F", site="A"))
        studies.append(dict(mrn=p["mrn"], site="A", scanner="ct-a", accession_number=p["acc"],
                            study_instance_uid=f"1.2.826.0.1.3680043.9.7731.{i + 1}", study_date="2026-05-11",
                            contrast=0, ct_path=ct_rel, ct_format=p["fmt"], mask_path=mask_rel,
                            mask_format="totalseg" if mask_rel else ""))
    _ph.write_tables(raw, pats, studies, [])
    (raw / "dxa.csv").unlink()                         # a screening export: no DXA
    if segmenter_mask is not None:
        _ph.save_nifti(_ph.to_totalseg(labels), affine, segmenter_mask)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """(params, tracking URI): a tiny model trained with this run's settings, registered as champion."""
    from osteo_model.stages import run_finetune_stage, run_pretrain_stage
    from registry.registry import _source

    root = tmp_path_factory.mktemp("champion")
    params = _train.write_inputs(root)
    params["ingest"].update(copy.deepcopy(INGEST))
    vpath = root / "interim" / "ingest" / "vertebrae.parquet"
    pd.read_parquet(vpath).assign(cal_version="none").to_parquet(vpath)   # ingested uncalibrated, as screened
    spec = Config.from_params(params).experiment()
    run_pretrain_stage(spec, "tp_swav", root / "models")
    rec = run_finetune_stage(spec, "tp_swav", root / "models", root / "metrics" / "train.json")
    uri = params["tracking"]["uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    source, run_id, model_id = _source(client, rec["model_uri"])
    mv = client.create_model_version(NAME, source, run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(NAME, "champion", mv.version)
    return params, uri


@pytest.fixture
def export(tmp_path, monkeypatch):
    monkeypatch.setenv("OSTEO_SCREEN_TEST_KEY", "5f1c9e0a7b3d42c8a61e9f07d2b4c83e1a5f6d7092b3c4e8f1a2b3c4d5e6f708")
    raw = tmp_path / "export"
    known = tmp_path / "known_mask.nii.gz"
    write_export(raw, segmenter_mask=known)
    script = tmp_path / "stand_in_segmenter.py"
    script.write_text(SEGMENTER)
    return raw, f"{sys.executable} {script} {{ct}} {{out}} {known}"


def _run(params, uri, raw, out, **kw):
    cfg = Config.from_params(params)
    return screen_folder(ScreenRequest(input_dir=raw, out_dir=out, **kw), screen=cfg.screen, ingest=cfg.ingest,
                         texture=cfg.texture, geometry=cfg.io_geometry(), model_name=cfg.registry.model_name,
                         tracking_uri=uri, profile="tiny")


def test_batch_end_to_end_tables_reports_ledger_and_privacy(champion, export, tmp_path, caplog):
    params, uri = champion
    raw, segmenter = export
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    s = _run(params, uri, raw, out, segmenter=segmenter)
    bdir = Path(s.batch_dir)
    vert, pats = pd.read_parquet(bdir / "vertebrae.parquet"), pd.read_parquet(bdir / "patients.parquet")
    quar = pd.read_parquet(bdir / "quarantine.parquet")

    # counts: 4 studies seen, S4's mask does not fit its CT (quarantined with its typed reason), 3 screened
    assert (s.studies_seen, s.screened, s.quarantined) == (4, 3, 1)
    assert s.quarantined_by_reason == {"ShapeMismatchError": 1}
    assert set(quar.loc[quar["kind"] == "study", "reason"]) == {"ShapeMismatchError"}
    assert len(pats) == 3 and len(vert) == 9 and set(vert["level_name"]) == {"T12", "L1", "L2"}
    pd.testing.assert_frame_equal(pd.read_csv(bdir / "patients.csv")[["study_id", "n_levels"]],
                                  pats[["study_id", "n_levels"]])

    # values: interval = BMD +- the stored half width; T-score = (BMD - mean) / SD per vendor; L1-L4 only
    ref = Config.from_params(params).screen.references
    for v in ("Hologic", "GE Lunar", "MEDIX"):
        s_ = slug(v)
        np.testing.assert_allclose(vert[f"bmd_upper_{s_}"] - vert[f"bmd_{s_}"], vert[f"bmd_{s_}"] - vert[f"bmd_lower_{s_}"])
        l1 = vert[vert["level_name"] == "L1"]
        m, sd = ref.vendors[v].mean["female"]["L1"], ref.vendors[v].sd["female"]["L1"]
        np.testing.assert_allclose(l1[f"t_score_{s_}"], (l1[f"bmd_{s_}"] - m) / sd)
        assert vert.loc[vert["level_name"] == "T12", f"t_score_{s_}"].isna().all()
    assert (vert["bmd_hologic"] != vert["bmd_ge_lunar"]).any()              # the vendor input changes the answer
    # quality: the planted metal excludes S2's L1, and only it
    excluded = vert[vert["excluded"]]
    assert len(excluded) == 1 and excluded["level_name"].item() == "L1" and excluded["flags"].item() == "metal"
    # patient flag: any measured level's score >= the stored threshold; excluded levels take no part
    for _, p in pats.iterrows():
        rows = vert[(vert["study_id"] == p["study_id"]) & ~vert["excluded"]]
        assert p["score"] == pytest.approx(rows["score"].max())
        assert p["screen_positive"] == (rows["score"].max() >= p["threshold"])
    assert set(vert["model_version"]) == {"1"} and set(pats["model_version"]) == {"1"}

    # reports: a PDF per screened study, an SR for the DICOM one referencing its source series
    reports = bdir / "reports"
    assert len(list(reports.glob("*.pdf"))) == 3 and len(list(reports.glob("*.sr.dcm"))) == 1
    sr_path = next(reports.glob("*.sr.dcm"))
    src = pydicom.dcmread(next((raw / "ct" / "S1").glob("*.dcm")), stop_before_pixels=True)
    import highdicom as hd
    sr = hd.sr.srread(sr_path)
    assert str(sr.PatientName) == PEOPLE["S1"]["name"] and sr.PatientID == PEOPLE["S1"]["mrn"]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == src.SeriesInstanceUID
    if shutil.which("pdftotext"):
        pdf = reports / f"{sr_path.name.split('.')[0]}.pdf"
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert "ZEPHYRINE QUAXLEY" in text and PEOPLE["S1"]["mrn"] in text and "version 1" in text
    else:
        print("pdftotext not installed (apt-get install poppler-utils): PDF text not checked")

    # privacy: no planted identifier in the tables, summary, ledger, logs or the MLflow run
    planted = [x for p in PEOPLE.values() for x in (p["mrn"], p["acc"], *p["name"].split("^"))]
    texts = [(bdir / f).read_text() for f in ("vertebrae.csv", "patients.csv", "quarantine.csv", "summary.json")]
    texts += [pd.read_parquet(out / "ledger.parquet").to_csv(), caplog.text]
    run = MlflowClient(tracking_uri=uri).get_run(s.run_id)
    texts.append(json.dumps({"p": run.data.params, "m": run.data.metrics, "t": run.data.tags}))
    for t in texts:
        assert not [x for x in planted if x in t]
    assert run.data.metrics["screened"] == 3 and run.data.metrics["quarantined"] == 1
    assert run.data.tags["drift_alert"] == "false"                          # 9 vertebrae < min_batch: not judged

    # idempotent: the same folder with the same model version screens nothing
    again = _run(params, uri, raw, out, segmenter=segmenter)
    assert (again.screened, again.skipped_same_version) == (0, 3)
    assert len(pd.read_parquet(out / "ledger.parquet")) == 3


def test_no_mask_without_segmenter_is_quarantined_and_review_queue(champion, export, tmp_path):
    params, uri = champion
    raw, _ = export
    p = copy.deepcopy(params)
    p["screen"]["review"] = "required"
    s = _run(p, uri, raw, tmp_path / "out")
    assert s.quarantined_by_reason == {"MissingMaskError": 1, "ShapeMismatchError": 1} and s.screened == 2
    bdir = Path(s.batch_dir)
    assert s.reports_pending == 2 and not (bdir / "reports").exists()
    assert len(list((bdir / "pending").glob("*.pdf"))) == 2
    with pytest.raises(ReviewError, match="--reviewer"):
        release(bdir, "  ")
    out = release(bdir, "Dr. Ada Reviewer")
    assert out["released"] == 2 and not list((bdir / "pending").glob("*.pdf"))
    sr = pydicom.dcmread(next((bdir / "reports").glob("*.sr.dcm")))
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reviewer^Dr. Ada" or \
        "Reviewer" in str(sr.VerifyingObserverSequence[0].VerifyingObserverName)
    assert sr.VerificationFlag == "VERIFIED"
    assert json.loads((bdir / "review.json").read_text())["state"] == "approved"
    with pytest.raises(ReviewError, match="no report waiting"):
        reject(bdir, "Dr. B")


def test_skew_and_missing_alias_are_refused_before_any_study(champion, export, tmp_path):
    params, uri = champion
    raw, _ = export
    p = copy.deepcopy(params)
    p["texture"]["kernel_radius"] = 3
    with pytest.raises(TrainServeSkewError, match="texture"):
        _run(p, uri, raw, tmp_path / "out")
    p = copy.deepcopy(params)
    p["ingest"]["roi_shape"] = [32, 32, 16]
    with pytest.raises(TrainServeSkewError, match="roi_shape"):
        _run(p, uri, raw, tmp_path / "out")
    # the calibration versions are known once the batch is ingested: the rule on its own
    geometry = Config.from_params(params).io_geometry()
    contract = {**geometry, "cal_version": ["none"]}
    check_skew(contract, geometry, ["none", "none"])
    with pytest.raises(TrainServeSkewError, match="cal_version: model trained on \\['none'\\]"):
        check_skew(contract, geometry, ["none", "internal-1"])
    with pytest.raises(TrainServeSkewError, match="texture_engine: the model records none"):
        check_skew({k: v for k, v in contract.items() if k != "texture_engine"}, geometry, None)
    p = copy.deepcopy(params)
    p["registry"]["model_name"] = "no-such-model"
    with pytest.raises(ModelNotFoundError, match="--model-uri"):
        _run(p, uri, raw, tmp_path / "out")
    assert not (tmp_path / "out" / "ledger.parquet").exists()


def test_cli_exits_non_zero_on_drift_and_flow_completes_with_warning(champion, export, tmp_path, monkeypatch,
                                                                     prefect_api):
    """min_batch 1: the batch's scanner and HU are judged against the training summary and drift."""
    from typer.testing import CliRunner

    from osteo.cli import app
    monkeypatch.delenv("OSTEO_PROFILE", raising=False)
    params, uri = champion
    raw, segmenter = export
    p = copy.deepcopy(params)
    p["screen"]["drift"]["min_batch"] = 1
    p.pop("profiles", None)
    p["profile"] = "demo"                  # the file holds the merged tiny params; no overlay on top
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(p))
    res = CliRunner().invoke(app, ["--params", str(pfile), "screen", "run", str(raw), "--out", str(tmp_path / "o"),
                                   "--segmenter", segmenter])
    assert res.exit_code == 4, res.output
    assert "DRIFT ALERT" in res.output and "screened 3" in res.output
    assert not [x for q in PEOPLE.values() for x in (q["mrn"], q["acc"]) if x in res.output]

    from flows.screen import screen                      # on the session's Prefect server (prefect_api)
    state = screen(str(pfile), str(raw), str(tmp_path / "o2"), segmenter=segmenter, return_state=True)
    assert state.is_completed() and "drift alert" in state.message
