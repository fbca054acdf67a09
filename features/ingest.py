"""``osteo ingest``: raw export -> pseudonymised ROIs and tables (``docs/data_contract.md`` §2).

Story of a run:

1. find the HMAC key (:mod:`features.pseudonym`); no key -> the run stops;
2. read ``patients.csv``, ``ct_studies.csv``, ``dxa.csv`` (:mod:`features.io.tables`);
3. per CT row: known patient, parseable date, unique accession, else quarantine;
4. per study, in ``workers`` processes or on Dask (:mod:`features.parallel`): read CT + mask, check geometry and HU,
   extract one ROI per level (:mod:`features.study`, :mod:`features.roi`);
5. DXA rows: validate, deduplicate, check the CT window (:mod:`features.dxa`);
6. write ``vertebrae.parquet``, ``dxa.parquet``, ``patients.parquet``,
   ``quarantine.parquet``, ``ingest_summary.json``; prune ROI files no row uses.

Nothing is dropped silently: for each kind ``ingested + quarantined == seen``
is checked before anything is written (:class:`CountMismatchError` otherwise).
Re-running on the same input gives identical tables (rows sorted, ids keyed,
ROI files content-addressed).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from features.calibration import RECORD_COLUMNS as CALIBRATION_COLUMNS
from features import atomic
from features.dxa import DxaRules, process_dxa
from features.errors import (CountMismatchError, DuplicateStudyError, IngestError, InvalidRecordError,
                             UnknownPatientError)
from features.io.masks import LEVEL_NAMES
from features.io.tables import RawExport, parse_date, read_raw_export
from features.parallel import open_executor
from features.pseudonym import Pseudonymizer, age_years, check_fingerprint, load_key
from features.quarantine import QuarantineRecord, counts_by_reason, to_frame
from features.roi import DESCRIPTOR_COLUMNS, RoiSpec
from features.study import ExpectedIdentity, StudyChecks, StudyResult, StudyTask, process_study
from features.workspace import holds_workspace_lock
from osteo_config.compute import ComputeConfig
from osteo_config.ingest import IngestConfig  # noqa: F401  (configuration lives in the leaf package)

log = logging.getLogger(__name__)

VERTEBRA_COLUMNS = ("patient_id", "study_id", "level", "level_name", "site", "scanner", "contrast", "ct_date",
                    "sex", "age_at_ct", "roi_path", "roi_sha256", "roi_shape", "spacing_mm", "hu_mean", "hu_std",
                    "hu_p05", "hu_p50", "hu_p95", "body_voxels") + DESCRIPTOR_COLUMNS + CALIBRATION_COLUMNS
DXA_COLUMNS = ("patient_id", "dxa_id", "site", "device_vendor", "device_model", "dxa_date", "region", "level",
               "bmd_g_cm2", "t_score", "who_class")
PATIENT_COLUMNS = ("patient_id", "sex", "birth_year", "site")
KEY_RECORD = "pseudonym_key_fingerprint.json"   # beside the stage folder: the workspace's key, by fingerprint
AGE_TOP_CODE = 90                                 # HIPAA Safe Harbor: every age above 89 is reported as 90


def safe_harbor_age(age: float) -> int:
    """Whole years, top-coded: ages above 89 become 90 (no age stored to a fraction of a year)."""
    return min(int(math.floor(age)), AGE_TOP_CODE)



def roi_spec(cfg: IngestConfig) -> RoiSpec:
    """The ROI extraction settings of an ``ingest:`` config."""
    return RoiSpec(spacing_mm=tuple(map(float, cfg.spacing_mm)), roi_shape=tuple(map(int, cfg.roi_shape)),
                   hu_window=tuple(map(float, cfg.hu_window)), body_opening_mm=float(cfg.body_opening_mm),
                   core_erosion_mm=float(cfg.core_erosion_mm), min_body_voxels=int(cfg.min_body_voxels),
                   ct_spline_order=int(cfg.ct_spline_order))


def study_checks(cfg: IngestConfig) -> StudyChecks:
    """The per-study geometry and HU checks of an ``ingest:`` config."""
    return StudyChecks(alignment_tol_mm=float(cfg.alignment_tol_mm), direction_tol=float(cfg.direction_tol),
                       hu_valid_range=tuple(map(float, cfg.hu_valid_range)),
                       hu_invalid_share=float(cfg.hu_invalid_share),
                       vertebra_median_hu_range=tuple(map(float, cfg.vertebra_median_hu_range)),
                       calibration=cfg.calibration)


@dataclass
class KindCounts:
    """Seen / ingested / quarantined items of one kind."""

    seen: int = 0
    ingested: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestSummary:
    """What a run did (also written, minus ``elapsed_s``, to ``ingest_summary.json``)."""

    profile: str
    key_source: str
    studies: KindCounts
    vertebrae: KindCounts
    dxa: KindCounts
    patients: int
    elapsed_s: float = 0.0
    dicom_filtered: dict[str, int] = field(default_factory=dict)  # DICOM objects left out of series folders
    key_fingerprint: str = ""      # which key pseudonymised this run (an HMAC of a constant; reveals nothing)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("elapsed_s")
        d["vertebrae_written"] = self.vertebrae.ingested
        d["dxa_rows"] = self.dxa.ingested
        return d

    def format(self) -> str:
        """Human-readable counts (what the CLI prints)."""
        lines = [f"ingest ({self.profile}, key from {self.key_source}) in {self.elapsed_s:.1f} s"]
        for name in ("studies", "vertebrae", "dxa"):
            c: KindCounts = getattr(self, name)
            reasons = ", ".join(f"{k} {v}" for k, v in c.quarantined_by_reason.items()) or "-"
            lines.append(f"  {name:9s} seen {c.seen:5d}  ingested {c.ingested:5d}  "
                         f"quarantined {c.quarantined:4d}  ({reasons})")
        lines.append(f"  patients  {self.patients}")
        return "\n".join(lines)


def _valid_patients(patients: pd.DataFrame) -> dict[str, dict]:
    """MRN -> parsed record, for rows with a parseable birth date, sex F/M and a unique MRN."""
    out, bad = {}, set()
    for _, r in patients.iterrows():
        mrn = str(r["mrn"]).strip()
        birth, sex = parse_date(r["birth_date"]), str(r["sex"]).strip().upper()
        if not mrn or birth is None or sex not in ("F", "M") or mrn in out:
            bad.add(mrn)
            continue
        out[mrn] = dict(birth_date=birth, sex=sex, site=str(r["site"]).strip())
    for mrn in bad:
        out.pop(mrn, None)
    return out


def _run_tasks(tasks: list[StudyTask], cfg: IngestConfig, out_dir: Path, progress: bool,
               compute: ComputeConfig | None = None) -> list[StudyResult]:
    spec, checks = roi_spec(cfg), study_checks(cfg)
    bar = tqdm(total=len(tasks), desc="ingest studies", unit="study", disable=not progress)
    job = functools.partial(process_study, spec=spec, checks=checks, out_dir=str(out_dir))
    # serial, `workers` spawned processes, or the Dask cluster of compute.dask_address (features/parallel.py)
    with open_executor(min(cfg.workers, len(tasks)), compute) as ex:
        results = ex.map(job, tasks, on_done=bar.update)
    bar.close()
    return sorted(results, key=lambda r: r.study_id)


def _check_counts(summary: IngestSummary) -> None:
    for name in ("studies", "vertebrae", "dxa"):
        c: KindCounts = getattr(summary, name)
        if c.ingested + c.quarantined != c.seen:
            raise CountMismatchError(f"{name}: ingested {c.ingested} + quarantined {c.quarantined} != seen "
                                     f"{c.seen}: an item was dropped silently (a bug: please report it)")


@holds_workspace_lock("ingest")   # one run per data folder: ROI writes and pruning never race another run
def run_ingest(cfg: IngestConfig, raw_dir: Path, out_dir: Path, profile: str,
               progress: bool = True, key_record: Path | None = None,
               compute: ComputeConfig | None = None, raw: RawExport | None = None) -> IngestSummary:
    """Ingest a raw export into pseudonymised ROIs and tables.

    Args:
        cfg: the ``ingest`` section.
        raw_dir: raw export root (``paths.raw``; PHI).
        out_dir: output root (``paths.interim``; no PHI).
        profile: active params profile (recorded in the summary).
        progress: show a tqdm progress bar.
        key_record: where the key's fingerprint is recorded and checked (default
            ``<out_dir>/../pseudonym_key_fingerprint.json``: outside the stage's output, so it survives re-runs).
        compute: where the per-study work runs (``compute.dask_address``: an existing Dask cluster); None: here.
        raw: the export's tables already read (``osteo screen``: no dxa.csv, rows selected); None: read ``raw_dir``.

    Returns:
        The run's counts (also in ``out_dir/ingest_summary.json``).

    Raises:
        PseudonymKeyError: no usable key. RawExportError: a raw table missing/malformed.
        CountMismatchError: an item was neither ingested nor quarantined (a bug).
        WorkspaceBusyError: another run holds the data folder (``<out_dir>/../.osteo-workspace.lock``).
    """
    t0 = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    key, key_source = load_key(cfg.key_env, cfg.key_file, cfg.allow_demo_key, raw_dir)
    if key_source == "demo":
        log.warning("using the PUBLIC demo pseudonymisation key: the export is the simulator's own (marker verified)")
    fingerprint = check_fingerprint(key, key_record or out_dir.parent / KEY_RECORD)
    pseudo = Pseudonymizer(key=key, date_shift_max_days=int(cfg.date_shift_max_days), key_source=key_source)
    raw = raw if raw is not None else read_raw_export(raw_dir)
    patients = _valid_patients(raw.patients)

    quarantine: list[QuarantineRecord] = []
    tasks, meta, seen_acc = [], {}, set()
    for _, r in raw.ct_studies.iterrows():
        acc, mrn = str(r["accession_number"]).strip(), str(r["mrn"]).strip()
        sid = pseudo.study_id(acc)
        day = parse_date(r["study_date"])
        err: IngestError | None = None
        if acc in seen_acc:
            err = DuplicateStudyError(sid, "accession number already listed in ct_studies.csv",
                                      "list every study once (the first row is used)")
        elif mrn not in patients:
            err = UnknownPatientError(sid, "CT row names a patient missing or invalid in patients.csv",
                                      "add the patient (valid birth date and sex) to patients.csv")
        elif day is None or str(r["contrast"]).strip() not in ("0", "1"):
            err = InvalidRecordError(sid, "study_date is not YYYY-MM-DD or contrast is not 0/1",
                                     "correct the row in ct_studies.csv")
        seen_acc.add(acc)
        if err is not None:
            quarantine.append(QuarantineRecord.from_error(err, "study"))
            continue
        tasks.append(StudyTask(study_id=sid, ct_path=str(raw_dir / r["ct_path"]), ct_format=str(r["ct_format"]),
                               mask_path=str(raw_dir / r["mask_path"]), mask_format=str(r["mask_format"]),
                               identity=ExpectedIdentity.of(mrn, acc), contrast=str(r["contrast"]).strip() == "1"))
        meta[sid] = dict(mrn=mrn, day=day, site=str(r["site"]), scanner=str(r["scanner"]),
                         contrast=int(str(r["contrast"]).strip()))

    out_dir.mkdir(parents=True, exist_ok=True)
    results = _run_tasks(tasks, cfg, out_dir, progress, compute)

    rows: list[dict] = []
    ct_dates: dict[str, list] = {}
    vert_seen = 0
    for res in results:
        quarantine.extend(res.quarantine)
        vert_seen += res.vertebrae_seen
        m = meta[res.study_id]
        if res.rois:
            ct_dates.setdefault(m["mrn"], []).append(m["day"])
        p = patients[m["mrn"]]
        for roi in res.rois:
            rows.append(dict(
                patient_id=pseudo.patient_id(m["mrn"]), study_id=res.study_id, level=int(roi["level"]),
                level_name=LEVEL_NAMES[roi["level"] - 1], site=m["site"], scanner=m["scanner"],
                contrast=m["contrast"], ct_date=pd.Timestamp(pseudo.shift(m["mrn"], m["day"]), tz="UTC"),
                sex=p["sex"], age_at_ct=safe_harbor_age(age_years(p["birth_date"], m["day"])),
                roi_path=roi["roi_path"], roi_sha256=roi["roi_sha256"], roi_shape=list(cfg.roi_shape),
                spacing_mm=[float(s) for s in cfg.spacing_mm],
                **{k: roi[k] for k in ("hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95", "body_voxels")
                   + DESCRIPTOR_COLUMNS},
                **res.calibration))

    rules = DxaRules(window_days=int(cfg.dxa_window_days), bmd_range=tuple(cfg.dxa_bmd_range),
                     t_score_range=tuple(cfg.dxa_t_score_range))
    dxa_rows, dxa_q = process_dxa(raw.dxa, patients, ct_dates, pseudo, rules)
    quarantine.extend(dxa_q)

    patient_rows = [dict(patient_id=pseudo.patient_id(mrn), sex=p["sex"],
                         birth_year=int(pseudo.shift(mrn, p["birth_date"]).year), site=p["site"])
                    for mrn, p in patients.items()]

    def counts(kind: str, seen: int, ingested: int) -> KindCounts:
        q = [r for r in quarantine if r.kind == kind]
        return KindCounts(seen=seen, ingested=ingested, quarantined=len(q),
                          quarantined_by_reason=counts_by_reason(quarantine, kind))

    summary = IngestSummary(
        profile=profile, key_source=key_source, key_fingerprint=fingerprint,
        studies=counts("study", len(raw.ct_studies), sum(r.ok for r in results)),
        vertebrae=counts("vertebra", vert_seen, len(rows)),
        dxa=counts("dxa", len(raw.dxa), len(dxa_rows)),
        patients=len(patient_rows),
        dicom_filtered={k: sum(r.dicom_filtered.get(k, 0) for r in results)
                        for k in sorted({k for r in results for k in r.dicom_filtered})})
    _check_counts(summary)

    _write_tables(out_dir, rows, dxa_rows, patient_rows, quarantine, summary)
    summary.elapsed_s = time.perf_counter() - t0
    log.info("%s", summary.format())
    return summary


def _frame(rows: list[dict], columns: tuple[str, ...], sort: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    return df.sort_values(sort, kind="stable").reset_index(drop=True) if len(df) else df


def _write_tables(out_dir: Path, rows, dxa_rows, patient_rows, quarantine, summary: IngestSummary) -> None:
    vert = _frame(rows, VERTEBRA_COLUMNS, ["patient_id", "study_id", "level"])
    vert["ct_date"] = pd.to_datetime(vert["ct_date"], utc=True).astype("datetime64[ns, UTC]")
    for col, dt in (("level", "int64"), ("contrast", "int64"), ("body_voxels", "int64")):
        vert[col] = vert[col].astype(dt)
    for col in ("age_at_ct", "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95") + DESCRIPTOR_COLUMNS \
            + CALIBRATION_COLUMNS[1:]:
        vert[col] = vert[col].astype("float64")
    dxa = _frame(dxa_rows, DXA_COLUMNS, ["patient_id", "dxa_date", "level", "dxa_id"])
    dxa["dxa_date"] = pd.to_datetime(dxa["dxa_date"], utc=True).astype("datetime64[ns, UTC]")
    for col, dt in (("level", "int64"), ("who_class", "int64"), ("bmd_g_cm2", "float64"), ("t_score", "float64")):
        dxa[col] = dxa[col].astype(dt)
    pats = _frame(patient_rows, PATIENT_COLUMNS, ["patient_id"])
    pats["birth_year"] = pats["birth_year"].astype("int64")
    atomic.write_parquet(out_dir / "vertebrae.parquet", vert, index=False)
    atomic.write_parquet(out_dir / "dxa.parquet", dxa, index=False)
    atomic.write_parquet(out_dir / "patients.parquet", pats, index=False)
    atomic.write_parquet(out_dir / "quarantine.parquet", to_frame(quarantine), index=False)
    atomic.write_text(out_dir / "ingest_summary.json", json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    # ROI files no row references (an earlier run on other data) are removed: outputs mirror this run.
    # Safe only because run_ingest holds the data folder's lock: no other run is writing ROIs here.
    used = set(vert["roi_path"])
    for f in sorted((out_dir / "rois").glob("*/*.npz")) if (out_dir / "rois").is_dir() else []:
        if f.relative_to(out_dir).as_posix() not in used:
            f.unlink()
    for f in atomic.stray_temp_files(out_dir / "rois"):   # temp files of a killed run
        f.unlink()
