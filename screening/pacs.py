"""A small DICOMweb client for the hospital PACS (Orthanc with its DICOMweb plugin, or any DICOMweb server).

- **QIDO-RS** :meth:`PacsClient.ct_series_since`: CT series whose study date is on or after a date
  (DICOM range matching ``StudyDate=YYYYMMDD-``);
- **WADO-RS** :meth:`PacsClient.retrieve_series`: every instance of one series as pydicom datasets;
- **STOW-RS** :meth:`PacsClient.store`: send SRs (or encapsulated PDFs) back;
- :meth:`PacsClient.find_instances`: instances of a study by modality (e.g. the SRs stored back).

Transport is ``dicomweb-client`` (requests underneath). A PACS that does not
answer is :class:`PacsUnreachableError` naming the URL and the fix; an HTTP
error is :class:`PacsRequestError` with the status. The QIDO answers carry the
patient's identifiers: :class:`SeriesRef` keeps only UIDs, modality, study
date and instance count, and nothing here logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from io import BytesIO
from typing import Any, Sequence

import pydicom
import requests
from pydicom.dataset import Dataset

from screening.errors import ScreeningError


class PacsError(ScreeningError):
    """Base class of PACS errors (``osteo screen run --pacs`` exits 5 on them)."""


class PacsUnreachableError(PacsError):
    """The PACS did not answer (connection refused, DNS, timeout)."""


class PacsRequestError(PacsError):
    """The PACS answered with an HTTP error."""


@dataclass(frozen=True)
class SeriesRef:
    """One series found by QIDO-RS (no patient identifiers)."""

    study_uid: str
    series_uid: str
    modality: str
    study_date: str          # DICOM DA (YYYYMMDD), for the "since the last run" bookkeeping
    n_instances: int | None


def _value(item: dict[str, Any], tag: str) -> Any:
    """First value of a DICOM JSON attribute (PS3.18 F.2), or None."""
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def _part10(ds: Dataset) -> Dataset:
    """``ds`` as a DICOM File Format (PS3.10) dataset: preamble, DICM and a complete file meta.

    STOW-RS takes Part 10 instances; dicomweb-client writes each dataset "like the original", so a dataset
    built in memory (no preamble) would reach the server without its DICM prefix (Orthanc then stores a
    file that no reader opens). Writing it once with the file format enforced and reading it back fixes that.
    """
    if getattr(ds, "preamble", None) is not None and "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return ds
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


class PacsClient:
    """DICOMweb client of one PACS.

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc's plugin default).
        timeout_s: per-request timeout (seconds).
        session: optional requests session (authentication, certificates).
    """

    def __init__(self, url: str, timeout_s: float = 30.0, session: requests.Session | None = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise PacsUnreachableError(
                f"PACS at {self.url} did not answer ({what}: {type(e).__name__}): check that the server runs and "
                f"that the URL is its DICOMweb root (Orthanc: http://HOST:8042/dicom-web with the orthanc-dicomweb "
                f"plugin enabled), then rerun with --pacs URL") from None
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            raise PacsRequestError(f"PACS at {self.url} refused {what}: HTTP {status}; check the UIDs and the "
                                   f"server log") from None

    def ct_series_since(self, since: date, modality: str = "CT") -> list[SeriesRef]:
        """QIDO-RS: series of ``modality`` whose StudyDate >= ``since``, sorted by (study date, UIDs)."""
        items = self._call("QIDO-RS series search", self._client.search_for_series,
                           search_filters={"Modality": modality, "StudyDate": f"{since:%Y%m%d}-"},
                           fields=["StudyDate", "NumberOfSeriesRelatedInstances"], get_remaining=True)
        out = []
        for it in items:
            if (_value(it, "00080060") or modality) != modality:      # servers may ignore the filter
                continue
            n = _value(it, "00201209")
            out.append(SeriesRef(study_uid=str(_value(it, "0020000D")), series_uid=str(_value(it, "0020000E")),
                                 modality=modality, study_date=str(_value(it, "00080020") or ""),
                                 n_instances=int(n) if n is not None else None))
        return sorted(out, key=lambda s: (s.study_date, s.study_uid, s.series_uid))

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS: every instance of one series (pydicom datasets with pixel data)."""
        return self._call(f"WADO-RS retrieve of series {series_uid}", self._client.retrieve_series,
                          study_uid, series_uid)

    def store(self, datasets: Sequence[Dataset]) -> int:
        """STOW-RS: store instances (one study per call); returns how many the server accepted.

        Raises:
            PacsRequestError: the server rejected some instance (its FailedSOPSequence is non-empty).
        """
        if not datasets:
            return 0
        studies = {str(d.StudyInstanceUID) for d in datasets}
        if len(studies) != 1:
            raise ValueError(f"STOW-RS stores one study per call; got {len(studies)}: store each study separately")
        resp = self._call("STOW-RS store", self._client.store_instances, [_part10(d) for d in datasets],
                          studies.pop())
        failed = getattr(resp, "FailedSOPSequence", None) or []
        if failed:
            raise PacsRequestError(f"PACS at {self.url} rejected {len(failed)} of {len(datasets)} instances "
                                   f"(FailureReason {failed[0].get('FailureReason', '?')}): check the SR's IOD")
        return len(getattr(resp, "ReferencedSOPSequence", []) or []) or len(datasets)

    def find_instances(self, study_uid: str, modality: str | None = None) -> list[dict[str, str]]:
        """QIDO-RS: instances of a study (optionally of one modality) as {study_uid, series_uid, sop_uid, modality}."""
        filters = {"Modality": modality} if modality else None
        items = self._call("QIDO-RS instance search", self._client.search_for_instances, study_uid,
                           search_filters=filters, fields=["Modality"], get_remaining=True)
        out = []
        for it in items:
            mod = str(_value(it, "00080060") or "")
            if modality and mod and mod != modality:
                continue
            out.append({"study_uid": str(_value(it, "0020000D")), "series_uid": str(_value(it, "0020000E")),
                        "sop_uid": str(_value(it, "00080018")), "modality": mod})
        return out
