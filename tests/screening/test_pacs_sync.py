"""`osteo screen --pacs` building blocks against a real Orthanc: new CT series -> raw export -> reports back.

The screening itself is `osteo screen` on the export folder (tested there); here the export must be the
contract's raw layout with the same pixels, non-CT instances are left out, the state file makes a second
run take only what is new, and the SR + Encapsulated PDF stored back sit in the source study.
"""
from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cohort.phi import dicom_uid
from cohort.writers import DicomMeta, write_dicom_series
from features.io.tables import read_raw_export
from screening.pacs import PacsClient, PacsUnreachableError
from screening.pacs_sync import (ENCAPSULATED_PDF, PacsState, advance_state, encapsulated_pdf, export_series,
                                 load_state, pending_series, save_state, store_reports)
from screening.pdf import write_pdf
from screening.results import PatientHeader
from screening.sr import BMD, write_sr

TODAY = dt.date(2026, 5, 20)


def _secondary_capture(like: pydicom.Dataset) -> pydicom.Dataset:
    """A non-CT instance (Secondary Capture) in its own series of the same study: must not be exported."""
    ds = pydicom.Dataset()
    for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "AccessionNumber", "StudyTime", "StudyID"):
        if k in like:
            setattr(ds, k, getattr(like, k))
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), "OT", 77, 1
    ds.ConversionType = "WSD"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_state_file_round_trip_and_window(tmp_path):
    path = tmp_path / "pacs_state.json"
    first = load_state(path, TODAY, lookback_days=30)
    assert first == PacsState(since="20260420")                     # no record: the look-back window
    class Ref:                                                       # the two fields advance_state reads
        def __init__(self, uid, da):
            self.series_uid, self.study_date = uid, da
    st = advance_state(first, [Ref("1.2.3", "20260511"), Ref("1.2.4", "20260101")], TODAY, 30)
    assert st.since == "20260420" and st.seen == (("1.2.3", "20260511"),)   # an old date leaves the record
    save_state(path, st)
    assert load_state(path, TODAY, 30) == st
    path.write_text("{not json")
    assert load_state(path, TODAY, 30) == first                       # unreadable: re-query the window


def test_encapsulated_pdf_keeps_the_study_and_the_bytes(ct_headers, tmp_path):
    pdf = b"%PDF-1.4\n%odd length\n"
    ds = encapsulated_pdf(pdf, ct_headers[0])
    path = tmp_path / "r.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == ENCAPSULATED_PDF and back.StudyInstanceUID == ct_headers[0].StudyInstanceUID
    assert back.EncapsulatedDocument[: back.EncapsulatedDocumentLength] == pdf
    with pytest.raises(ValueError, match="PDF"):
        encapsulated_pdf(b"not a pdf", ct_headers[0])


@pytest.mark.slow    # > 20 s: `make test-slow` (the PACS client's retries / Dask start-up / long loops)
def test_unreachable_pacs_during_a_sync_is_typed(tmp_path):
    from osteo_testing.orthanc import free_port
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PacsUnreachableError, match=url):
        pending_series(PacsClient(url, timeout_s=5), load_state(tmp_path / "s.json", TODAY, 30))


def test_new_ct_series_export_screen_store_back(orthanc, ct_series, ct_meta, study_result, tmp_path):
    folder, hu = ct_series
    files = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    pacs = PacsClient(orthanc, timeout_s=60)
    pacs.store(files)
    pacs.store([_secondary_capture(files[0])])                      # non-CT series in the same study

    state_path = tmp_path / "pacs_state.json"
    state = load_state(state_path, TODAY, lookback_days=30)
    todo = pending_series(pacs, state)
    assert [s.series_uid for s in todo] == [ct_meta.series_uid]     # QIDO: CT only

    raw = tmp_path / "export"
    summary = export_series(pacs, todo, raw)
    assert (summary.studies, summary.instances) == (1, len(files))
    export = read_raw_export(raw, require_dxa=False)                 # the contract's tables, readable by ingestion
    (row,) = export.ct_studies.to_dict("records")
    assert (row["accession_number"], row["study_instance_uid"], row["ct_format"]) == \
        (ct_meta.accession, ct_meta.study_uid, "dicom")
    assert row["mask_path"].endswith("seg.nii.gz") and row["contrast"] == "0"
    (pat,) = export.patients.to_dict("records")
    assert (pat["mrn"], pat["birth_date"], pat["sex"]) == (ct_meta.patient_id, "1948-03-12", "F")
    written = sorted((raw / row["ct_path"]).glob("IM*.dcm"))
    assert len(written) == len(files)
    by_uid = {d.SOPInstanceUID: d for d in files}
    for p in written:                                                # the same pixels came back
        d = pydicom.dcmread(p)
        np.testing.assert_array_equal(d.pixel_array, by_uid[d.SOPInstanceUID].pixel_array)

    # the screen's reports (here: this study's result) go back into the source study
    reports = tmp_path / "reports"
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in written]
    write_sr(reports / "S1.sr.dcm", headers, study_result)
    write_pdf(reports / "S1.pdf", study_result, PatientHeader.from_dicom(headers[0]))
    assert store_reports(pacs, reports) == {"sr": 1, "pdf": 1}
    (sr_item,) = pacs.find_instances(ct_meta.study_uid, modality="SR")
    (doc_item,) = pacs.find_instances(ct_meta.study_uid, modality="DOC")
    (sr,) = pacs._client.retrieve_series(ct_meta.study_uid, sr_item["series_uid"])
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct_meta.series_uid
    groups = {g.tracking_identifier: g for g in hd.sr.Comprehensive3DSR.from_dataset(sr).content
              .get_image_measurement_groups()}
    hologic = next(r for r in study_result.levels[0].readings if r.vendor == "Hologic")
    assert [float(m.value) for m in groups["L1"].get_measurements(name=BMD)
            if m.method.meaning == "As a Hologic DXA would read"] == [pytest.approx(hologic.bmd)]
    (doc,) = pacs._client.retrieve_series(ct_meta.study_uid, doc_item["series_uid"])
    pdf = (reports / "S1.pdf").read_bytes()
    assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.EncapsulatedDocument[:len(pdf)] == pdf

    # the next run takes only what is new: nothing, then a second study sent later
    state = advance_state(state, summary.series, TODAY, 30)
    save_state(state_path, state)
    state = load_state(state_path, TODAY, 30)
    assert pending_series(pacs, state) == []                         # the SR/PDF stored back are not CT
    meta2 = DicomMeta(patient_name="ROE^ANN", patient_id="MRN0042999", birth_date="19500101", sex="F",
                      accession="ACC20260515", study_uid=dicom_uid(2, "study"), series_uid=dicom_uid(2, "series"),
                      frame_uid=dicom_uid(2, "frame"), study_date="20260515", institution="Site B",
                      manufacturer="SIEMENS", model="Force", kvp=120.0, contrast=True, sop_uid_seed="screen-test-2")
    out2 = tmp_path / "ct2"
    out2.mkdir()
    write_dicom_series(out2, hu, np.diag([0.8, 0.8, 2.5, 1.0]), meta2, np.random.default_rng(4))
    pacs.store([pydicom.dcmread(p) for p in sorted(out2.glob("*.dcm"))])
    assert [s.series_uid for s in pending_series(pacs, state)] == [meta2.series_uid]
