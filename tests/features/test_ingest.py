"""End to end: a raw export with every fault type -> tables, quarantine, counts, no PHI, idempotence."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import CountMismatchError, PseudonymKeyError
from features.ingest import IngestConfig, IngestSummary, KindCounts, _check_counts, run_ingest

PATIENTS = [
    dict(mrn="0012345", patient_name="SMITH^ALICE", birth_date="1950-04-03", sex="F", site="siteA"),
    dict(mrn="0067890", patient_name="JONES^BOB", birth_date="1945-11-20", sex="M", site="siteB"),
    dict(mrn="0099999", patient_name="NGUYEN^CAROL", birth_date="1960-01-15", sex="F", site="siteA"),
]
# accession -> (mrn, date, expected study-level reason or None)
STUDIES = {
    "ACC1001": ("0012345", "2020-03-01", None),                   # NIfTI + TotalSegmentator
    "ACC1002": ("0067890", "2021-05-10", None),                   # DICOM + TotalSegmentator
    "ACC1003": ("0099999", "2019-08-20", None),                   # VerSe with a T13
    "ACC1004": ("0012345", "2022-06-01", None),                   # TotalSegmentator folder
    "ACC1005": ("0067890", "2021-06-10", "UnreadableFileError"),
    "ACC1006": ("0099999", "2019-09-01", "OrientationMismatchError"),
    "ACC1007": ("0099999", "2019-09-02", "MisalignedMaskError"),
    "ACC1008": ("0099999", "2019-09-03", "SpacingMismatchError"),
    "ACC1009": ("0099999", "2019-09-04", "ShapeMismatchError"),
    "ACC1010": ("0099999", "2019-09-05", "MissingLevelError"),
    "ACC1011": ("0099999", "2019-09-06", "HUOutOfRangeError"),
    "ACC1012": ("0067890", "2021-07-01", "GantryTiltError"),
    "ACC1013": ("0067890", "2021-07-02", "MixedSeriesError"),
    "ACC1014": ("0012345", "2020-03-05", None),                   # T12 is a speck -> VertebraTooSmallError
    "ACC1015": ("7777777", "2020-01-01", "UnknownPatientError"),
}
UIDS = {acc: f"1.2.826.0.1.3680043.8.498.{1000 + i}" for i, acc in enumerate(STUDIES)}


def _dxa(mrn, name, day, region, bmd, t, acc):
    return dict(mrn=mrn, patient_name=name, site="siteA", device_vendor="Hologic", device_model="Horizon A",
                exam_date=day, region=region, bmd_g_cm2=bmd, t_score=t, accession_number=acc)


DXA = [
    _dxa("0012345", "SMITH^ALICE", "2020-04-01", "L1", "0.85", "-1.5", "DX5001"),      # ok, osteopenia
    _dxa("0012345", "SMITH^ALICE", "2020-04-01", "L1-L4", "0.70", "-2.7", "DX5001"),   # ok, osteoporosis
    _dxa("0012345", "SMITH^ALICE", "2020-04-01", "L2", "0.90", "-1.0", "DX5001"),      # ok ...
    _dxa("0012345", "SMITH^ALICE", "2020-04-01", "L2", "0.90", "-1.0", "DX5001"),      # ... exact copy
    _dxa("0067890", "JONES^BOB", "2021-05-20", "L3", "1.00", "-0.5", "DX5002"),        # conflict ...
    _dxa("0067890", "JONES^BOB", "2021-05-20", "L3", "1.10", "0.3", "DX5003"),         # ... with this
    _dxa("0067890", "JONES^BOB", "2023-01-01", "L4", "1.00", "-0.5", "DX5004"),        # no CT in window
    _dxa("0099999", "NGUYEN^CAROL", "2019-08-25", "L1", "", "-1.2", "DX5005"),         # BMD missing
    _dxa("0099999", "NGUYEN^CAROL", "2019-08-25", "L2", "0.95", "25", "DX5005"),       # T-score absurd
    _dxa("0099999", "NGUYEN^CAROL", "2019-08-25", "L3", "1.05", "0.5", "DX5005"),      # ok, normal
    _dxa("5555555", "DOE^JOHN", "2019-08-25", "L3", "1.05", "0.5", "DX5006"),          # unknown patient
]


def _build_raw(raw: Path, synth) -> None:
    make_phantom, save_nifti, to_totalseg, to_verse = synth.make_phantom, synth.save_nifti, synth.to_totalseg, \
        synth.to_verse
    write_dicom_series, write_totalseg_dir, write_tables = synth.write_dicom_series, synth.write_totalseg_dir, \
        synth.write_tables
    hu, lab, aff, _ = make_phantom()
    seg = to_totalseg(lab)
    studies = []
    for acc, (mrn, day, fault) in STUDIES.items():
        d = raw / "ct" / acc
        ct_path, ct_fmt, mask_path, mask_fmt = d / "ct.nii.gz", "nifti", d / "seg.nii.gz", "totalseg"
        ct_hu, m, m_aff = hu, seg, aff
        if acc == "ACC1002" or fault in ("GantryTiltError", "MixedSeriesError"):
            ct_path, ct_fmt = d / "dicom", "dicom"
            write_dicom_series(hu, aff, ct_path, patient_name="PHI^IN^DICOM", mrn=mrn, accession=acc,
                               study_uid=UIDS[acc], tilt_mm=0.3 if fault == "GantryTiltError" else 0.0,
                               mixed_uid=fault == "MixedSeriesError")
        if acc == "ACC1003":
            v = to_verse(lab)
            v[v == 20] = 28
            v[v == 21] = 20
            m, mask_path, mask_fmt = v, d / "seg_verse.nii.gz", "verse"
        if fault == "OrientationMismatchError":
            m_aff = aff.copy()
            m_aff[:3, 0] *= -1
        if fault == "MisalignedMaskError":
            m_aff = aff.copy()
            m_aff[:3, 3] += [2.0, 0.0, 0.0]
        if fault == "SpacingMismatchError":
            m, m_aff = seg[:, :, ::2].copy(), aff @ np.diag([1, 1, 2.0, 1])
        if fault == "ShapeMismatchError":
            m = seg[:-2].copy()
        if fault == "MissingLevelError":
            m = np.where(seg == 31, 0, seg).astype(np.int16)
        if fault == "HUOutOfRangeError":
            ct_hu = (hu.astype(np.int32) + 1024).astype(np.int16)
        if acc == "ACC1014":
            m = seg.copy()
            m[m == 32] = 0
            m[20:23, 30:33, 50:53] = 32
        if ct_fmt == "nifti":
            save_nifti(ct_hu, aff, ct_path)
        if fault == "UnreadableFileError":
            ct_path.write_bytes(b"garbage, not a nifti")
        if acc == "ACC1004":
            mask_path, mask_fmt = write_totalseg_dir(lab, aff, d / "seg"), "totalseg_dir"
        else:
            save_nifti(m, m_aff, mask_path)
        studies.append(dict(mrn=mrn, site="siteA", scanner="scanner1", accession_number=acc,
                            study_instance_uid=UIDS[acc], study_date=day, contrast="0",
                            ct_path=str(ct_path.relative_to(raw)), ct_format=ct_fmt,
                            mask_path=str(mask_path.relative_to(raw)), mask_format=mask_fmt))
    write_tables(raw, PATIENTS, studies, DXA)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, synth):
    root = tmp_path_factory.mktemp("ingest")
    raw, out = root / "raw", root / "interim"
    _build_raw(raw, synth)
    logger = logging.getLogger("features")
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    h = Grab(level=logging.DEBUG)
    logger.addHandler(h)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        summary = run_ingest(synth.config(), raw, out, profile="tiny", progress=False)
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
    return dict(root=root, raw=raw, out=out, summary=summary, logs="\n".join(records))


def test_counts_and_reasons(ingested):
    s: IngestSummary = ingested["summary"]
    assert (s.studies.seen, s.studies.ingested, s.studies.quarantined) == (15, 5, 10)
    assert (s.vertebrae.seen, s.vertebrae.ingested, s.vertebrae.quarantined) == (15, 13, 2)
    assert (s.dxa.seen, s.dxa.ingested, s.dxa.quarantined) == (11, 4, 7)
    for c in (s.studies, s.vertebrae, s.dxa):
        assert c.ingested + c.quarantined == c.seen
    assert s.dxa.quarantined_by_reason == {"ConflictingDXAError": 2, "DXAOutOfWindowError": 1,
                                           "DuplicateDXAError": 1, "InvalidDXAValueError": 2,
                                           "UnknownPatientError": 1}
    assert s.vertebrae.quarantined_by_reason == {"UnsupportedLevelError": 1, "VertebraTooSmallError": 1}
    summary = json.loads((ingested["out"] / "ingest_summary.json").read_text())
    assert summary["studies"]["quarantined"] == 10 and summary["vertebrae_written"] == 13


def test_each_study_fault_has_its_exact_reason(ingested):
    from features.pseudonym import DEMO_KEY, Pseudonymizer
    p = Pseudonymizer(DEMO_KEY, 365)
    q = pd.read_parquet(ingested["out"] / "quarantine.parquet")
    studies = q[q.kind == "study"].set_index("item")["reason"].to_dict()
    expected = {p.study_id(acc): fault for acc, (_, _, fault) in STUDIES.items() if fault}
    assert studies == expected
    vert = q[q.kind == "vertebra"].set_index("item")["reason"].to_dict()
    assert vert == {f"{p.study_id('ACC1003')}:T13": "UnsupportedLevelError",
                    f"{p.study_id('ACC1014')}:12": "VertebraTooSmallError"}
    assert list(q.columns) == ["item", "kind", "reason", "detail", "stage"]


def test_tables_follow_the_contract(ingested):
    out = ingested["out"]
    v = pd.read_parquet(out / "vertebrae.parquet")
    assert list(v.columns) == ["patient_id", "study_id", "level", "level_name", "site", "scanner", "contrast",
                               "ct_date", "sex", "age_at_ct", "roi_path", "roi_sha256", "roi_shape",
                               "spacing_mm", "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95", "body_voxels",
                               "shell_hu", "proj_hu_mm", "proj_path_mm", "proj_area_mm2", "body_height_mm",
                               "body_width_mm", "body_depth_mm",
                               "cal_version", "cal_slope", "cal_intercept", "ref_air_hu", "ref_fat_hu", "ref_blood_hu"]
    # the phantom is ingested with calibration off (conftest): identity line, no reference measured
    assert (v.cal_version == "none").all() and (v.cal_slope == 1.0).all() and (v.cal_intercept == 0.0).all()
    assert v[["ref_air_hu", "ref_fat_hu", "ref_blood_hu"]].isna().all().all()
    assert str(v["ct_date"].dtype) == "datetime64[ns, UTC]" and v["level"].between(1, 18).all()
    for _, r in v.iterrows():
        with np.load(out / r.roi_path) as z:
            assert z["hu"].dtype == np.float32 and z["body"].dtype == np.uint8
            assert z["hu"].shape == tuple(r.roi_shape) == (24, 24, 16)
            import hashlib
            assert hashlib.sha256(z["hu"].tobytes() + z["body"].tobytes()).hexdigest() == r.roi_sha256
        assert Path(r.roi_path).name == f"{r.roi_sha256}.npz"
    d = pd.read_parquet(out / "dxa.parquet")
    assert sorted(zip(d.region, d.level, d.who_class)) == [("L1", 13, 1), ("L1-L4", 0, 2), ("L2", 14, 1),
                                                           ("L3", 15, 0)]
    assert str(d["dxa_date"].dtype) == "datetime64[ns, UTC]"
    pts = pd.read_parquet(out / "patients.parquet")
    assert list(pts.columns) == ["patient_id", "sex", "birth_year", "site"] and len(pts) == 3
    # intervals survive the shift: DXA minus CT date of patient 1 is 31 days as in the raw data
    pid = v[v.level_name == "L1"].sort_values("ct_date").patient_id.iloc[0]
    ct = v[(v.patient_id == pid)].ct_date.min()
    dx = d[(d.patient_id == pid)].dxa_date.min()
    assert (dx - ct).days == 31
    ages = v[v.patient_id == pid].age_at_ct.unique()
    exact = (pd.Timestamp("2020-03-01") - pd.Timestamp("1950-04-03")).days / 365.25      # 69.9 years
    assert ages.min() == int(exact) and (ages == np.floor(ages)).all()                   # whole years only


def _phi_values(raw: Path) -> list[str]:
    vals = {raw.as_posix(), "PHI^IN^DICOM"}
    for p in PATIENTS:
        vals |= {p["mrn"], p["patient_name"], p["birth_date"], p["patient_name"].split("^")[0]}
    for acc, (mrn, day, _) in STUDIES.items():
        vals |= {acc, mrn, day, UIDS[acc]}
    for r in DXA:
        vals |= {r["mrn"], r["patient_name"], r["exam_date"], r["accession_number"]}
    return sorted(vals)


def test_no_phi_in_outputs_or_logs(ingested):
    # purpose: no MRN, name, accession, UID, true date or raw path anywhere in outputs or logs
    phi = _phi_values(ingested["raw"])
    texts = {"logs": ingested["logs"], "summary": ingested["summary"].format()}
    for f in sorted(ingested["out"].rglob("*")):
        if not f.is_file():
            continue
        texts[str(f)] = f.read_bytes().decode("latin-1")
        if f.suffix == ".parquet":
            texts[f"{f}:csv"] = pd.read_parquet(f).to_csv(index=False)
    assert len(texts) > 10
    for name, text in texts.items():
        for value in phi:
            assert value not in text, f"PHI value leaked into {name}"


def test_rerun_is_identical_and_parallel_matches(ingested, tmp_path, synth):
    out = ingested["out"]
    before = {f.name: pd.read_parquet(f) for f in out.glob("*.parquet")}
    rois_before = sorted(p.relative_to(out) for p in out.rglob("*.npz"))
    run_ingest(synth.config(), ingested["raw"], out, profile="tiny", progress=False)
    run_ingest(synth.config(workers=2), ingested["raw"], tmp_path / "par", profile="tiny", progress=False)
    for name, df in before.items():
        pd.testing.assert_frame_equal(df, pd.read_parquet(out / name))
        pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / "par" / name))
    assert rois_before == sorted(p.relative_to(out) for p in out.rglob("*.npz"))
    assert (out / "ingest_summary.json").read_text() == (tmp_path / "par" / "ingest_summary.json").read_text()


def test_the_demo_key_is_refused_for_an_export_the_simulator_did_not_mark(ingested, tmp_path, synth):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(ingested["raw"], raw)
    (raw / "SYNTHETIC_COHORT.json").unlink()                          # a hospital export: no marker
    with pytest.raises(PseudonymKeyError, match="pseudonym.key|token_hex"):
        run_ingest(synth.config(), raw, tmp_path / "o", profile="demo", progress=False)
    shutil.copy(ingested["raw"] / "SYNTHETIC_COHORT.json", raw)       # the marker copied beside other tables
    with open(raw / "patients.csv", "a") as fh:
        fh.write("M999,DOE^JOHN,1950-01-01,F,A\n")
    with pytest.raises(PseudonymKeyError, match="marker"):
        run_ingest(synth.config(), raw, tmp_path / "o", profile="demo", progress=False)
    assert not (tmp_path / "o").exists()


def test_a_rotated_key_is_refused_by_its_fingerprint(ingested, tmp_path, monkeypatch, synth):
    import secrets
    monkeypatch.setenv("OSTEO_TEST_KEY_SET", secrets.token_hex(32))
    cfg = synth.config(key_env="OSTEO_TEST_KEY_SET")
    first = run_ingest(cfg, ingested["raw"], tmp_path / "ws" / "ingest", profile="paper", progress=False)
    assert len(first.key_fingerprint) == 16
    assert json.loads((tmp_path / "ws" / "pseudonym_key_fingerprint.json").read_text()) == {
        "fingerprint": first.key_fingerprint}
    monkeypatch.setenv("OSTEO_TEST_KEY_SET", secrets.token_hex(32))  # the key was rotated or lost
    with pytest.raises(PseudonymKeyError, match="fingerprint"):
        run_ingest(cfg, ingested["raw"], tmp_path / "ws" / "ingest", profile="paper", progress=False)


def test_other_key_gives_other_ids(ingested, tmp_path, monkeypatch, synth):
    import secrets
    monkeypatch.setenv("OSTEO_TEST_KEY_SET", secrets.token_hex(32))
    run_ingest(synth.config(key_env="OSTEO_TEST_KEY_SET"), ingested["raw"], tmp_path / "k", profile="paper",
               progress=False)
    a = pd.read_parquet(ingested["out"] / "vertebrae.parquet")
    b = pd.read_parquet(tmp_path / "k" / "vertebrae.parquet")
    assert set(a.patient_id).isdisjoint(b.patient_id) and set(a.study_id).isdisjoint(b.study_id)
    assert sorted(a.roi_sha256) == sorted(b.roi_sha256)             # images do not depend on the key


def test_count_invariant_is_enforced():
    bad = IngestSummary(profile="tiny", key_source="demo", studies=KindCounts(seen=3, ingested=1, quarantined=1),
                        vertebrae=KindCounts(), dxa=KindCounts(), patients=0)
    with pytest.raises(CountMismatchError):
        _check_counts(bad)


def test_config_from_params_reads_the_section():
    from osteo_config.params import load_params
    cfg = IngestConfig.from_params(load_params(Path(__file__).parents[2] / "params.yaml", "tiny"))
    assert cfg.spacing_mm == (1.5, 1.5, 1.5) and cfg.roi_shape == (24, 24, 16)
    with pytest.raises(ValueError, match="unknown ingest keys"):
        IngestConfig.from_params({"ingest": {"spacing": 1}})
