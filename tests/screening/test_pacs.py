"""PACS round trip against a real Orthanc (DICOMweb plugin): upload a CT series, query, retrieve, store an SR, find it."""
from __future__ import annotations

import socket
from datetime import date

import highdicom as hd
import numpy as np
import pydicom
import pytest

from screening.pacs import PacsClient, PacsRequestError, PacsUnreachableError
from screening.sr import BMD, build_sr


@pytest.mark.slow    # > 20 s: `make test-slow` (the PACS client's retries / Dask start-up / long loops)
def test_unreachable_pacs_is_a_typed_error_naming_the_url_and_the_fix():
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dicom-web"
    with pytest.raises(PacsUnreachableError, match=f"127.0.0.1:{port}/dicom-web") as e:
        PacsClient(url, timeout_s=5).ct_series_since(date(2026, 1, 1))
    assert "--pacs" in str(e.value) and "orthanc-dicomweb" in str(e.value)


def test_round_trip_ct_query_retrieve_store_sr_find(orthanc, ct_series, ct_meta, study_result):
    folder, hu = ct_series
    files = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    pacs = PacsClient(orthanc, timeout_s=60)
    assert pacs.store(files) == len(files)

    # QIDO-RS: found since the study date, not after it
    found = pacs.ct_series_since(date(2026, 5, 11))
    assert [(s.study_uid, s.series_uid, s.n_instances) for s in found] == \
        [(ct_meta.study_uid, ct_meta.series_uid, len(files))]
    assert pacs.ct_series_since(date(2026, 5, 12)) == []

    # WADO-RS: the same instances and pixels come back
    back = pacs.retrieve_series(ct_meta.study_uid, ct_meta.series_uid)
    assert {d.SOPInstanceUID for d in back} == {d.SOPInstanceUID for d in files}
    by_uid = {d.SOPInstanceUID: d for d in files}
    for d in back:
        np.testing.assert_array_equal(d.pixel_array, by_uid[d.SOPInstanceUID].pixel_array)

    # STOW-RS: the SR built from the retrieved headers goes back and is found with its references and values
    sr = build_sr(back, study_result)
    assert pacs.store([sr]) == 1
    (item,) = pacs.find_instances(ct_meta.study_uid, modality="SR")
    assert item["sop_uid"] == sr.SOPInstanceUID
    assert [s.series_uid for s in pacs.ct_series_since(date(2026, 5, 11))] == [ct_meta.series_uid]  # SR is not CT
    (stored,) = pacs._client.retrieve_series(ct_meta.study_uid, item["series_uid"])    # WADO-RS of the SR series
    ref = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct_meta.series_uid and stored.PatientID == ct_meta.patient_id
    groups = {g.tracking_identifier: g for g in hd.sr.Comprehensive3DSR.from_dataset(stored).content
              .get_image_measurement_groups()}
    hologic = next(r for r in study_result.levels[0].readings if r.vendor == "Hologic")
    values = [float(m.value) for m in groups["L1"].get_measurements(name=BMD)
              if m.method.meaning == "As a Hologic DXA would read"]
    assert values == [pytest.approx(hologic.bmd)]


def test_a_rejected_request_is_a_typed_error(orthanc):
    with pytest.raises(PacsRequestError, match="HTTP"):
        PacsClient(orthanc).retrieve_series("1.2.3.4", "1.2.3.4.5")
