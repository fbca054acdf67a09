"""DICOM SR (TID 1500): written from a synthetic CT series, read back with highdicom, validated with dciodvfy."""
from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest

from screening.results import ReportInputError
from screening.sr import BMD, BMD_HIGH, BMD_LOW, EXCLUDED, SCREEN_POSITIVE, T_SCORE, build_sr, write_sr


@pytest.fixture(scope="module")
def sr_path(tmp_path_factory, ct_headers, study_result):
    return write_sr(tmp_path_factory.mktemp("sr") / "sr.dcm", ct_headers, study_result)


def test_sr_references_the_source_series_and_carries_its_identifiers(sr_path, ct_headers, ct_meta):
    ds = pydicom.dcmread(sr_path)
    assert ds.Modality == "SR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"   # Comprehensive 3D SR
    # study identity and the patient's real identifiers come from the source header
    assert ds.StudyInstanceUID == ct_meta.study_uid and ds.SeriesInstanceUID != ct_meta.series_uid
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber) == \
        ("DOE^JANE", "MRN0042137", "19480312", "ACC20260511")
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == ct_meta.study_uid
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct_meta.series_uid
    assert {s.ReferencedSOPInstanceUID for s in series.ReferencedSOPSequence} == {h.SOPInstanceUID for h in ct_headers}
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "Dr. A. Reviewer^"
    assert ds.VerificationFlag == "VERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert any("v7" in v for v in ds.SoftwareVersions)


def _algorithm(group) -> tuple[str, str]:
    """(Algorithm Name, Algorithm Version) of a measurement group (TID 4019 items, DCM 111001 / 111003)."""
    found = {}
    for item in group[0].ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code in ("111001", "111003"):
            found[code] = item.TextValue
    return found.get("111001", ""), found.get("111003", "")


def test_measurements_read_back_with_highdicom(sr_path, study_result):
    sr = hd.sr.srread(sr_path)
    report = sr.content
    groups = report.get_image_measurement_groups()
    by_id = {g.tracking_identifier: g for g in groups}
    assert set(by_id) == {"L1", "L2", "L3", "L4", "patient"}
    for lv in study_result.levels:
        g = by_id[lv.name]
        assert _algorithm(g) == ("osteo-screening", "7")
        excluded = g.get_qualitative_evaluations(name=EXCLUDED)[0].value
        assert (excluded.meaning == "Yes") is lv.excluded
        got = {(m.method.meaning, m.name.value): m.value for m in g.get_measurements()}
        want = {}
        for r in lv.readings:
            method = f"As a {r.vendor} DXA would read"
            want.update({(method, BMD.value): r.bmd, (method, BMD_LOW.value): r.lower,
                         (method, BMD_HIGH.value): r.upper, (method, T_SCORE.value): r.t_score})
        assert got.keys() == want.keys()
        for k in want:
            assert float(got[k]) == pytest.approx(want[k], abs=1e-6)
        flags = [e.value.value for e in g.get_qualitative_evaluations() if e.name.value == "QFLAG"]
        assert flags == [k.upper()[:16] for k, _ in lv.flags]
    positive = by_id["patient"].get_qualitative_evaluations(name=SCREEN_POSITIVE)[0].value
    assert positive.meaning == "No"
    ctx = report.get_observer_contexts()
    names = {str(c.observer_identifying_attributes.name) for c in ctx}
    assert {"Dr. A. Reviewer^", "osteo-screening"} <= names


def test_same_inputs_give_the_same_sr_instance(ct_headers, study_result):
    a, b = build_sr(ct_headers, study_result), build_sr(ct_headers, study_result)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID


def test_a_mixed_source_is_a_typed_error(ct_headers, study_result):
    other = pydicom.Dataset()
    other.update(ct_headers[0])
    other.SeriesInstanceUID = "1.2.3.999"
    with pytest.raises(ReportInputError, match="one CT series"):
        build_sr([*ct_headers, other], study_result)
    with pytest.raises(ReportInputError, match="no source"):
        build_sr([], study_result)


def test_dciodvfy_finds_no_error(sr_path):
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: `make test` installs it; "
                    "the IOD validation of the SR is skipped")
    out = subprocess.run([tool, str(sr_path)], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert errors == [], text
