"""``osteo screen --pacs URL``: new CT series on the PACS -> a raw export folder -> screen -> reports back.

Story of a run (the screening itself is ``osteo screen`` on the folder, with ``--segmenter``: a PACS
study has no vertebra mask):

1. :func:`load_state`: the last run's record (``<state>.json``: when it ran, the study date it queried
   from, the series it already took);
2. :func:`pending_series`: QIDO-RS for CT series whose StudyDate is on or after that date (DICOMweb
   has no "received since" attribute, so the date query is re-run from the last run's earliest date and
   the series already taken are left out by UID: a study sent late with an old date is found as long
   as its date is within ``lookback_days`` of the last run);
3. :func:`export_series`: WADO-RS retrieve of each study's largest CT series into the raw export
   layout (``docs/data_contract.md`` §1: ``patients.csv``, ``ct_studies.csv``,
   ``ct/<accession>/dicom/IM*.dcm``; the mask path is where the segmenter writes); instances that
   are not CT image storage (scouts sent in the same series, SRs, PDFs) are left out and counted;
4. after screening, :func:`store_reports`: STOW-RS of each study's SR and of its PDF wrapped as
   Encapsulated PDF Storage (:func:`encapsulated_pdf`), in the source study;
5. :func:`advance_state`: the new record, written atomically only after the reports are stored (a
   crash before re-takes the same series next time, never skips one).

The export folder and the reports hold PHI (they are the hospital's); the returned summaries carry
counts only.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from screening.pacs import PacsClient, SeriesRef

CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")   # CT, Enhanced CT Image Storage
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MASK_NAME = "seg.nii.gz"                       # where the segmenter writes the study's multilabel mask
MASK_FORMAT = "totalseg"                       # TotalSegmentator multilabel (v1/v2 detected at ingestion)
STATE_VERSION = 1


@dataclass(frozen=True)
class PacsState:
    """What the last run took: the date its query started from and the series UIDs it exported."""

    since: str                            # DICOM DA (YYYYMMDD): the next query's lower StudyDate bound
    seen: tuple[tuple[str, str], ...] = ()  # (series UID, study date) already exported, study date >= since
    last_run: str = ""                    # ISO 8601 UTC time of the last run


@dataclass
class ExportSummary:
    """Counts of one export (no identifiers)."""

    studies: int = 0                      # rows written to ct_studies.csv
    instances: int = 0                    # CT instances written
    skipped_instances: dict[str, int] = field(default_factory=dict)   # reason -> count (non-CT, ...)
    skipped_series: int = 0               # further CT series of an exported study (the largest one is screened)
    series: tuple[SeriesRef, ...] = ()    # series taken (for the state file)


def load_state(path: Path, today: dt.date, lookback_days: int) -> PacsState:
    """The last run's record, or (first run / unreadable record) one that queries ``lookback_days`` back."""
    path = Path(path)
    fresh = PacsState(since=f"{today - dt.timedelta(days=lookback_days):%Y%m%d}")
    if not path.exists():
        return fresh
    try:
        d = json.loads(path.read_text())
        if d.get("version") != STATE_VERSION or not re.fullmatch(r"\d{8}", str(d.get("since", ""))):
            raise ValueError("unexpected content")
        seen = tuple(sorted((str(u), str(da)) for u, da in dict(d.get("seen") or {}).items()))
        return PacsState(since=str(d["since"]), seen=seen, last_run=str(d.get("last_run", "")))
    except (OSError, ValueError, AttributeError):
        # an unreadable record re-queries the look-back window; series screened before are screened again
        # (a duplicate SR is harmless, a skipped study is not)
        return fresh


def save_state(path: Path, state: PacsState) -> Path:
    """Atomic write of the state record (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": STATE_VERSION, "since": state.since, "seen": dict(state.seen),
                   "last_run": state.last_run}, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def pending_series(client: PacsClient, state: PacsState) -> list[SeriesRef]:
    """CT series with StudyDate >= ``state.since`` not taken by an earlier run (sorted by date, UIDs)."""
    since = dt.datetime.strptime(state.since, "%Y%m%d").date()
    seen = {u for u, _ in state.seen}
    return [s for s in client.ct_series_since(since) if s.series_uid not in seen]


def advance_state(state: PacsState, exported: Iterable[SeriesRef], today: dt.date, lookback_days: int,
                  now: dt.datetime | None = None) -> PacsState:
    """The record after a run: the query window slides to ``today - lookback_days``; UIDs older than it drop."""
    since = max(state.since, f"{today - dt.timedelta(days=lookback_days):%Y%m%d}")
    seen = dict(state.seen) | {s.series_uid: s.study_date for s in exported}
    keep = {u: da for u, da in seen.items() if da >= since}      # older ones fall outside the next query anyway
    now = now or dt.datetime.now(dt.timezone.utc)
    return PacsState(since=since, seen=tuple(sorted(keep.items())), last_run=now.isoformat(timespec="seconds"))


def _folder_name(accession: str, study_uid: str) -> str:
    """A file-system-safe folder per study: the accession when it is plain, else a digest of the study UID."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", accession or "") and accession not in (".", ".."):
        return accession
    return "study-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16]


def _iso(da: str) -> str:
    da = str(da or "").strip()
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if re.fullmatch(r"\d{8}", da) else ""


def export_series(client: PacsClient, refs: Iterable[SeriesRef], raw_dir: Path) -> ExportSummary:
    """Retrieve each study's largest CT series into a raw export folder (``docs/data_contract.md`` §1).

    Args:
        client: the PACS.
        refs: series found by :func:`pending_series` (several per study: the one with most CT instances is used).
        raw_dir: the export root to write (``patients.csv``, ``ct_studies.csv``, ``dxa.csv`` header-only, ``ct/``).

    Raises:
        PacsUnreachableError / PacsRequestError: the PACS failed a retrieve (nothing is half-written:
            the tables are written last).
    """
    raw_dir = Path(raw_dir)
    summary = ExportSummary()
    by_study: dict[str, list[SeriesRef]] = {}
    for s in refs:
        by_study.setdefault(s.study_uid, []).append(s)
    patients: dict[str, dict[str, str]] = {}
    studies: list[dict[str, str]] = []
    exported: list[SeriesRef] = []
    for study_uid, series in sorted(by_study.items()):
        best: tuple[SeriesRef, list[Dataset]] | None = None
        for ref in series:
            kept = []
            for ds in client.retrieve_series(ref.study_uid, ref.series_uid):
                sop = str(getattr(ds, "SOPClassUID", ""))
                if sop not in CT_STORAGE or "LOCALIZER" in list(getattr(ds, "ImageType", []) or []):
                    reason = "localizer" if sop in CT_STORAGE else "not_ct_image_storage"
                    summary.skipped_instances[reason] = summary.skipped_instances.get(reason, 0) + 1
                    continue
                kept.append(ds)
            exported.append(ref)                   # taken: a series without CT images is not asked for again
            if kept and (best is None or len(kept) > len(best[1])):
                if best is not None:
                    summary.skipped_series += 1
                best = (ref, kept)
            elif kept:
                summary.skipped_series += 1
        if best is None:
            continue
        ref, datasets = best
        first = datasets[0]
        accession = str(getattr(first, "AccessionNumber", "") or "").strip()
        folder = _folder_name(accession, study_uid)
        dicom_dir = raw_dir / "ct" / folder / "dicom"
        dicom_dir.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(sorted(datasets, key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0)), 1):
            ds.save_as(dicom_dir / f"IM{i:04d}.dcm", enforce_file_format=True)
        summary.instances += len(datasets)
        mrn = str(getattr(first, "PatientID", "") or "").strip()
        site = str(getattr(first, "InstitutionName", "") or "pacs").strip() or "pacs"
        patients.setdefault(mrn, {"mrn": mrn, "patient_name": str(getattr(first, "PatientName", "") or ""),
                                  "birth_date": _iso(getattr(first, "PatientBirthDate", "")),
                                  "sex": str(getattr(first, "PatientSex", "") or ""), "site": site})
        scanner = " ".join(str(getattr(first, k, "") or "").strip()
                           for k in ("Manufacturer", "ManufacturerModelName")).strip() or "unknown"
        contrast = "1" if str(getattr(first, "ContrastBolusAgent", "") or "").strip() else "0"
        studies.append({"mrn": mrn, "site": site, "scanner": scanner, "accession_number": accession or folder,
                        "study_instance_uid": study_uid, "study_date": _iso(getattr(first, "StudyDate", "")),
                        "contrast": contrast, "ct_path": f"ct/{folder}/dicom", "ct_format": "dicom",
                        "mask_path": f"ct/{folder}/{MASK_NAME}", "mask_format": MASK_FORMAT})
    _write_csv(raw_dir / "patients.csv", ("mrn", "patient_name", "birth_date", "sex", "site"), patients.values())
    _write_csv(raw_dir / "ct_studies.csv", ("mrn", "site", "scanner", "accession_number", "study_instance_uid",
                                            "study_date", "contrast", "ct_path", "ct_format", "mask_path",
                                            "mask_format"), studies)
    summary.studies = len(studies)
    summary.series = tuple(exported)
    return summary


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- results back
PATIENT_STUDY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def encapsulated_pdf(pdf: bytes, like: Dataset, title: str = "Opportunistic osteoporosis screening report",
                     series_uid: str | None = None) -> Dataset:
    """The PDF as an Encapsulated PDF Storage instance in the study of ``like`` (patient and study modules copied).

    Args:
        pdf: the report's bytes (``%PDF-...``).
        like: a dataset of the source study (the SR or a CT header): its patient and study attributes are used.
        title: DocumentTitle.
        series_uid: the new series' UID (default: a fresh one).
    """
    if not pdf.startswith(b"%PDF"):
        raise ValueError("encapsulated_pdf needs a PDF document (bytes starting with %PDF): pass the report file's bytes")
    ds = Dataset()
    for tag in PATIENT_STUDY_TAGS:
        if tag in like:
            setattr(ds, tag, getattr(like, tag))
    now = dt.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "DOC", series_uid or generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 9002, 1
    ds.ConversionType = "WSD"                   # workstation: rendered by software, not scanned
    ds.ContentDate, ds.ContentTime = f"{now:%Y%m%d}", f"{now:%H%M%S}"
    ds.AcquisitionDateTime = f"{now:%Y%m%d%H%M%S}"
    ds.BurnedInAnnotation = "YES"               # the PDF shows the patient's name and identifiers
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")   # OB: even length
    ds.EncapsulatedDocumentLength = len(pdf)
    for tag in ("Manufacturer",):
        setattr(ds, tag, "osteo-platform")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def store_reports(client: PacsClient, report_dir: Path) -> dict[str, int]:
    """STOW-RS every ``<study>.sr.dcm`` of ``report_dir`` and its ``<study>.pdf`` (as Encapsulated PDF).

    Returns:
        {"sr": n, "pdf": n} instances the PACS accepted. A PDF without an SR (a NIfTI study) is not a PACS
        study and stays local.
    """
    stored = {"sr": 0, "pdf": 0}
    for sr_path in sorted(Path(report_dir).glob("*.sr.dcm")):
        sr = pydicom.dcmread(sr_path)
        batch = [sr]
        pdf_path = sr_path.with_name(sr_path.name[: -len(".sr.dcm")] + ".pdf")
        if pdf_path.exists():
            batch.append(encapsulated_pdf(pdf_path.read_bytes(), sr))
        client.store(batch)
        stored["sr"] += 1
        stored["pdf"] += len(batch) - 1
    return stored
