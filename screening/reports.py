"""Clinician-facing outputs of a screened study (PDF per patient study, DICOM SR per study) and the review queue.

Real identifiers enter here and only here, read from the SOURCE at write time: the DICOM headers of
the screened CT series (SR evidence and PDF header), else the export's ``patients.csv`` /
``ct_studies.csv`` row (NIfTI studies: a PDF, no SR, since an SR must reference DICOM instances).
Nothing identifying is returned to the caller (only file paths named by the pseudonymous study id).

Review queue (``screen.review: required``): drafts (no reviewer) and a pseudonymous ``<study>.json``
(the result, the thumbnail and where the source lies in the export) wait in ``pending/``;
:func:`release` re-renders them with the reviewer (SR verifying observer, PDF footer) into ``reports/``,
:func:`reject` deletes the drafts; either is recorded in ``review.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from screening.errors import ReviewError
from screening.results import LevelResult, PatientHeader, StudyResult, VendorResult

CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")   # CT, Enhanced CT Image Storage
REVIEW_FILE = "review.json"


def write_json(path: Path, obj: Any) -> Path:
    """Atomic JSON write (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def source_headers(ct_dir: Path) -> list[pydicom.Dataset]:
    """Headers of the largest CT image series in a DICOM folder (scouts, dose reports and others left out)."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for p in sorted(Path(ct_dir).rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:          # not DICOM (a DICOMDIR, a README): not part of the series
            continue
        if str(getattr(ds, "SOPClassUID", "")) in CT_STORAGE and "LOCALIZER" not in list(getattr(ds, "ImageType", [])):
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(series.values(), key=len) if series else []


def _dicom_date(text: str) -> str:
    return str(text).strip().replace("-", "")


def read_source(export: Path, ct_path: str) -> tuple[PatientHeader, list[pydicom.Dataset] | None]:
    """The patient's identifiers (and the DICOM headers, for a DICOM study) from the source, now.

    Raises:
        ReviewError: the export no longer lists the study (moved or re-exported since screening).
    """
    from features.io.tables import read_raw_export

    raw = read_raw_export(Path(export), require_dxa=False)
    rows = raw.ct_studies[raw.ct_studies["ct_path"] == ct_path]
    if rows.empty:
        raise ReviewError(f"the export {export} no longer lists the screened CT: restore the export the batch "
                          "was screened from, or re-screen the study")
    r = rows.iloc[0]
    if str(r["ct_format"]) == "dicom":
        headers = source_headers(Path(export) / ct_path)
        if headers:
            return PatientHeader.from_dicom(headers[0]), headers
    pats = raw.patients[raw.patients["mrn"].str.strip() == str(r["mrn"]).strip()]
    p = pats.iloc[0] if len(pats) else {"patient_name": "", "birth_date": "", "sex": ""}
    return PatientHeader(patient_name=str(p["patient_name"]), patient_id=str(r["mrn"]).strip(),
                         birth_date=_dicom_date(p["birth_date"]), sex=str(p["sex"]),
                         accession=str(r["accession_number"]).strip(), study_date=_dicom_date(r["study_date"]),
                         study_uid=str(r["study_instance_uid"]), series_uid=""), None


def write_reports(dest: Path, study_id: str, result: StudyResult, export: Path, ct_path: str,
                  thumbnail: bytes | None) -> dict[str, str]:
    """PDF (always) and SR (DICOM sources) of one study into ``dest``; returns {kind: file name}."""
    from screening.pdf import write_pdf
    from screening.sr import write_sr

    patient, headers = read_source(export, ct_path)
    out = {"pdf": write_pdf(Path(dest) / f"{study_id}.pdf", result, patient, thumbnail).name}
    if headers:
        out["sr"] = write_sr(Path(dest) / f"{study_id}.sr.dcm", headers, result).name
    return out


# --- results as pseudonymous JSON (the pending queue) ---------------------------------------------
def result_to_dict(result: StudyResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def result_from_dict(d: dict[str, Any]) -> StudyResult:
    levels = tuple(LevelResult(level=int(lv["level"]), readings=tuple(VendorResult(**r) for r in lv["readings"]),
                               flags=tuple(tuple(f) for f in lv["flags"])) for lv in d["levels"])
    return StudyResult(**{**d, "levels": levels, "notes": tuple(d.get("notes") or ())})


def queue(pending: Path, study_id: str, result: StudyResult, export: Path, ct_path: str,
          thumbnail: bytes | None) -> dict[str, str]:
    """Write the drafts and the pseudonymous record of one study into the pending area."""
    pending = Path(pending)
    files = write_reports(pending, study_id, result, export, ct_path, thumbnail)
    if thumbnail:
        (pending / f"{study_id}.png").write_bytes(thumbnail)
    write_json(pending / f"{study_id}.json", {"result": result_to_dict(result),
                                              "source": {"export": str(Path(export).resolve()), "ct_path": ct_path}})
    return files


def _pending(batch_dir: Path) -> tuple[Path, list[Path]]:
    pending = Path(batch_dir) / "pending"
    if not Path(batch_dir).is_dir():
        raise ReviewError(f"no batch folder {batch_dir}: pass a batch id printed by `osteo screen run`")
    items = sorted(pending.glob("*.json")) if pending.is_dir() else []
    if not items:
        raise ReviewError(f"batch {Path(batch_dir).name} has no report waiting for review (already released or "
                          "rejected? see its review.json)")
    return pending, items


def _record(batch_dir: Path, state: str, reviewer: str, studies: list[str], reason: str | None) -> None:
    path = Path(batch_dir) / REVIEW_FILE
    log = json.loads(path.read_text()) if path.is_file() else {"events": []}
    log["events"].append({"state": state, "reviewer": reviewer, "studies": studies, "reason": reason,
                          "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log["state"] = state
    write_json(path, log)


def release(batch_dir: Path, reviewer: str) -> dict[str, Any]:
    """Approve a batch: every pending study is re-rendered with ``reviewer`` into ``reports/``; drafts removed."""
    if not reviewer or not reviewer.strip():
        raise ReviewError("approve needs --reviewer NAME (recorded in every report)")
    pending, items = _pending(batch_dir)
    released = []
    for item in items:
        sid = item.stem
        rec = json.loads(item.read_text())
        result = dataclasses.replace(result_from_dict(rec["result"]), reviewer=reviewer.strip())
        thumb = pending / f"{sid}.png"
        write_reports(Path(batch_dir) / "reports", sid, result, Path(rec["source"]["export"]),
                      rec["source"]["ct_path"], thumb.read_bytes() if thumb.is_file() else None)
        for f in pending.glob(f"{sid}.*"):
            f.unlink()
        released.append(sid)
    _record(batch_dir, "approved", reviewer.strip(), released, None)
    return {"state": "approved", "released": len(released), "reviewer": reviewer.strip()}


def reject(batch_dir: Path, reviewer: str, reason: str | None = None) -> dict[str, Any]:
    """Reject a batch: the drafts are deleted (nothing is released); the rejection is recorded."""
    if not reviewer or not reviewer.strip():
        raise ReviewError("reject needs --reviewer NAME")
    pending, items = _pending(batch_dir)
    sids = [i.stem for i in items]
    for sid in sids:
        for f in pending.glob(f"{sid}.*"):
            f.unlink()
    _record(batch_dir, "rejected", reviewer.strip(), sids, reason)
    return {"state": "rejected", "rejected": len(sids), "reviewer": reviewer.strip()}
