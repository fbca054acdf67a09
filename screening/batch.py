"""``osteo screen``: a folder of new CT studies (raw-export layout, no DXA) -> per-vertebra and per-patient
results, PDFs and SRs, one MLflow run per batch. The entry point the CLI, the Prefect flow ``screen`` and
the PACS client call: :func:`screen_folder`.

Story of a batch (``<out>/batches/<batch_id>/``):

1. load the model (champion alias by default) and refuse it on train/serve skew of the configuration
   (:func:`screening.model.check_skew`) before any study is read;
2. read the export (``dxa.csv`` optional), pseudonymise with the same key as training, skip the studies the
   ledger says this model version already screened (another version: skipped unless ``rescreen``);
3. studies without a mask: the ``segmenter`` command writes one (:mod:`features.segment`); no segmenter ->
   :class:`~features.errors.MissingMaskError`, quarantined, the batch continues;
4. the training pipeline's own ingestion (:func:`features.ingest.run_ingest`: geometry and HU checks,
   calibration, ROIs, quarantine with typed reasons) and texture stage (:func:`features.texture_stage.run_texture`)
   into ``work/``; the calibration versions of the batch are checked against the model's;
5. the pyfunc predicts per vertebra: the score (unknown-device embedding) and per report vendor the BMD
   ("what a Hologic would read") with its split-conformal interval, T-score, WHO class and sBMD
   (:mod:`screening.tscore`); quality flags (:mod:`screening.quality`) exclude levels from the patient
   decision (any measured level's score >= the stored threshold, the training's any-vertebra rule);
6. tables ``vertebrae`` / ``patients`` / ``quarantine`` (parquet + CSV, pseudonymous ids only), reports
   (:mod:`screening.reports`: into ``reports/`` or, with ``screen.review: required``, ``pending/``),
   ``summary.json``, the ledger; one MLflow run with counts and drift metrics (no identifier).

Every file is written atomically; a re-run of the same folder with the same model version screens nothing.

Steps 1-2 run once (:func:`plan_batch`), steps 3-4 and the study's quality flags per study
(:func:`screen_study`: in-process, in processes, on a Dask cluster or as Prefect tasks), steps 5-6 once
(:func:`finish_batch`); :func:`screen_folder` composes the three.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from osteo_config.compute import ComputeConfig
from osteo_config.ingest import IngestConfig
from osteo_config.screen import ScreenConfig
from osteo_config.texture import TextureConfig
from screening import model as serving
from screening.results import LevelResult, StudyResult, VendorResult

log = logging.getLogger(__name__)

LEDGER = "ledger.parquet"
KEY_RECORD = "pseudonym_key_fingerprint.json"
TSCORE_LEVELS = {13: "L1", 14: "L2", 15: "L3", 16: "L4"}    # DXA reference regions


@dataclass(frozen=True)
class ScreenRequest:
    """One batch: where the studies are, where outputs go, which model, how to segment."""

    input_dir: Path
    out_dir: Path
    model_uri: str | None = None       # None: models:/<registry.model_name>@champion
    segmenter: str | None = None       # "CMD {ct} {out}" for studies without a mask
    rescreen: bool = False             # re-screen studies an older model version screened
    batch_id: str | None = None
    progress: bool = False


@dataclass
class BatchSummary:
    """What a batch did (``summary.json``; counts only, no identifier)."""

    batch_id: str
    batch_dir: str
    model_uri: str
    model_version: str
    studies_seen: int = 0
    screened: int = 0
    skipped_same_version: int = 0
    skipped_other_version: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    vertebrae: int = 0
    vertebrae_excluded: int = 0
    screen_positive: int = 0
    reports_released: int = 0
    reports_pending: int = 0
    review: str = "none"
    drift_alert: bool = False
    drifted_features: list[str] = field(default_factory=list)
    run_id: str | None = None

    def format(self) -> str:
        q = ", ".join(f"{k} {v}" for k, v in self.quarantined_by_reason.items()) or "-"
        lines = [f"batch {self.batch_id}: model {self.model_uri} (version {self.model_version})",
                 f"  studies seen {self.studies_seen}, screened {self.screened}, skipped (same version) "
                 f"{self.skipped_same_version}, skipped (other version) {self.skipped_other_version}, "
                 f"quarantined {self.quarantined} ({q})",
                 f"  vertebrae {self.vertebrae} ({self.vertebrae_excluded} excluded), screen positive "
                 f"{self.screen_positive}; reports released {self.reports_released}, pending {self.reports_pending}",
                 f"  outputs {self.batch_dir}; MLflow run {self.run_id or '-'}"]
        if self.drift_alert:
            lines.append(f"  DRIFT ALERT: {', '.join(self.drifted_features)} differ from the training distribution")
        return "\n".join(lines)


# --- small helpers --------------------------------------------------------------------------
def slug(vendor: str) -> str:
    """Column-safe vendor name: "GE Lunar" -> "ge_lunar"."""
    return re.sub(r"[^a-z0-9]+", "_", vendor.lower()).strip("_")


def _atomic_table(df: pd.DataFrame, stem: Path) -> None:
    """``<stem>.parquet`` and ``<stem>.csv``, each written to a temporary file and renamed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext, write in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                       (".csv", lambda p: df.to_csv(p, index=False))):
        fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=ext, dir=stem.parent)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, stem.with_suffix(ext))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def read_ledger(out_dir: Path) -> pd.DataFrame:
    path = Path(out_dir) / LEDGER
    cols = ["study_id", "model_name", "model_version", "batch_id", "screened_at"]
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame({c: pd.Series(dtype=str) for c in cols})


def _append_ledger(out_dir: Path, rows: list[dict]) -> None:
    if not rows:
        return
    led = pd.concat([read_ledger(out_dir), pd.DataFrame(rows)], ignore_index=True)
    path = Path(out_dir) / LEDGER
    fd, tmp = tempfile.mkstemp(prefix=".ledger.", suffix=".parquet", dir=out_dir)
    os.close(fd)
    led.to_parquet(tmp, index=False)
    os.replace(tmp, path)


# --- per-study quality (the same readers and body rule as ingestion) ---------------------------
def _study_quality(src: Mapping[str, str], study_id: str, screen: ScreenConfig, ingest: IngestConfig):
    """(flags by level, thumbnail PNG) of one study; flags are [(kind, reason)]."""
    from features.io.masks import read_mask
    from features.io.volume import to_ras
    from features.roi import body_mask
    from features.study import StudyTask, read_ct
    from screening.pdf import sagittal_thumbnail
    from screening.quality import assess_vertebrae, level_name

    task = StudyTask(study_id=study_id, ct_path=src["ct_path"], ct_format=src["ct_format"],
                     mask_path=src["mask_path"], mask_format=src["mask_format"])
    ct = to_ras(read_ct(task))
    levels = to_ras(read_mask(Path(task.mask_path), task.mask_format, study_id).volume)
    lv_arr = np.where((levels.array >= 1) & (levels.array <= 18), levels.array, 0).astype(np.int16)  # (X, Y, Z)
    spacing = tuple(float(s) for s in ct.spacing)
    bodies = {int(v): body_mask(lv_arr == v, np.asarray(spacing), ingest.body_opening_mm)
              for v in np.unique(lv_arr) if v > 0}
    report = assess_vertebrae(lv_arr, ct.array, spacing, screen.quality, bodies)
    flags = {lv: [(f.kind.value, f.reason) for f in fl] for lv, fl in report.excluded().items()}
    present = set(bodies)
    thumb = sagittal_thumbnail(ct.array, lv_arr, spacing, present - set(flags), set(flags),
                               {v: level_name(v) for v in present})
    return flags, thumb


# --- the batch: planned once, its studies screened one by one (anywhere), finished once -----------
def new_batch_id() -> str:
    """``YYYYmmddTHHMMSSZ-<6 hex>``: sortable by time, unique across concurrent runs."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class StudyContext:
    """What the per-study work needs besides the study itself (picklable: it travels to Dask workers)."""

    input_dir: Path
    work: Path
    screen: ScreenConfig
    segmenter: str | None
    segmenter_timeout_s: float
    ingest: IngestConfig
    texture: TextureConfig
    profile: str
    key_record: Path


@dataclass(frozen=True)
class StudyItem:
    """One study of the batch: its ``ct_studies`` rows and its patient's row (PHI: never logged)."""

    study_id: str
    rows: pd.DataFrame
    patients: pd.DataFrame


@dataclass
class StudyOutcome:
    """What one study's work produced: its vertebrae (with absolute ``pool_uri``), quarantine rows, source, and
    its quality flags + thumbnail (``quality_error``: why they could not be assessed, then every level is excluded)."""

    study_id: str
    vertebrae: pd.DataFrame
    quarantine: list[dict[str, str]]
    source: dict[str, str] | None
    flags: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    thumbnail: bytes | None = None
    quality_error: str | None = None


@dataclass
class BatchPlan:
    """A batch before its studies run: the model (checked for skew), the studies to do, the counts so far."""

    request: ScreenRequest
    batch_id: str
    bdir: Path
    input_dir: Path
    out_dir: Path
    model: serving.ServingModel
    summary: BatchSummary
    context: StudyContext
    items: list[StudyItem]
    t0: float


def plan_batch(request: ScreenRequest, *, screen: ScreenConfig, ingest: IngestConfig, texture: TextureConfig,
               geometry: Mapping[str, Any], model_name: str, tracking_uri: str, profile: str) -> BatchPlan:
    """Steps 1-2 of the module docstring: model + skew, export, key, ledger -> the studies to screen."""
    from features.io.tables import read_raw_export
    from features.pseudonym import Pseudonymizer, check_fingerprint, load_key

    t0 = time.perf_counter()
    input_dir, out_dir = Path(request.input_dir).resolve(), Path(request.out_dir).resolve()
    batch_id = request.batch_id or new_batch_id()
    bdir = out_dir / "batches" / batch_id
    work = bdir / "work"
    work.mkdir(parents=True, exist_ok=True)

    model = serving.load(model_name, request.model_uri, tracking_uri, work / "model")
    serving.check_skew(model.contract, geometry, None, model.uri)
    summary = BatchSummary(batch_id=batch_id, batch_dir=str(bdir), model_uri=model.uri, model_version=model.version,
                           review=screen.review)

    raw = read_raw_export(input_dir, require_dxa=False)
    key, key_source = load_key(ingest.key_env, ingest.key_file, ingest.allow_demo_key, input_dir)
    check_fingerprint(key, out_dir / KEY_RECORD)         # recorded once here, only read by the studies' ingestion
    pseudo = Pseudonymizer(key=key, date_shift_max_days=int(ingest.date_shift_max_days), key_source=key_source)
    ledger = read_ledger(out_dir)
    done = ledger.groupby("study_id")["model_version"].agg(lambda s: set(map(str, s))).to_dict()

    by_study: dict[str, list[int]] = {}
    summary.studies_seen = len(raw.ct_studies)
    for i, (_, r) in enumerate(raw.ct_studies.iterrows()):
        sid = pseudo.study_id(str(r["accession_number"]).strip())
        prev = done.get(sid, set())
        if model.version in prev:
            summary.skipped_same_version += 1
        elif prev and not request.rescreen:
            summary.skipped_other_version += 1
        else:
            by_study.setdefault(sid, []).append(i)
    items = []
    for sid, idx in sorted(by_study.items()):
        rows = raw.ct_studies.iloc[idx].reset_index(drop=True)
        mrns = set(rows["mrn"].astype(str).str.strip())
        items.append(StudyItem(sid, rows, raw.patients[raw.patients["mrn"].astype(str).str.strip().isin(mrns)]
                               .reset_index(drop=True)))
    # one level of parallelism: across studies (a Dask worker is a daemon process and may not start a pool)
    context = StudyContext(input_dir=input_dir, work=work, screen=screen, segmenter=request.segmenter,
                           segmenter_timeout_s=screen.segmenter_timeout_s, ingest=replace(ingest, workers=1),
                           texture=replace(texture, workers=1), profile=profile, key_record=out_dir / KEY_RECORD)
    return BatchPlan(request, batch_id, bdir, input_dir, out_dir, model, summary, context, items, t0)


def screen_study(item: StudyItem, ctx: StudyContext) -> StudyOutcome:
    """Steps 3-4 for one study: its mask (given, or the segmenter's), ingestion, texture, quality flags + thumbnail.

    A module-level function of picklable arguments: the CLI runs it here, in processes or on a Dask cluster
    (:mod:`features.parallel`), the ``screen`` flow as one Prefect task per study. It writes only under
    ``<work>/studies/<study_id>/`` (and ``<work>/masks/``), so studies never share a file.
    """
    from features.errors import MissingMaskError, SegmenterError
    from features.ingest import run_ingest
    from features.io.tables import DXA_COLUMNS, RawExport
    from features.quarantine import COLUMNS as Q_COLUMNS, QuarantineRecord
    from features.segment import MASK_FORMAT, run_segmenter
    from features.texture_stage import run_texture

    sid, sdir = item.study_id, ctx.work / "studies" / item.study_id
    quarantine: list[QuarantineRecord] = []
    keep, source = [], None
    for _, r in item.rows.iterrows():
        r = r.copy()
        declared = str(r["mask_path"]).strip()
        if not declared or not (ctx.input_dir / declared).exists():   # a PACS study: the mask path is left for us
            if not ctx.segmenter:
                why = "the CT row has no mask_path" if not declared else "the CT row's mask file does not exist"
                quarantine.append(QuarantineRecord.from_error(MissingMaskError(
                    sid, why, "add the vertebra mask to the export or pass "
                    "--segmenter 'TotalSegmentator -i {ct} -o {out} --ml'"), "study"))
                continue
            try:
                mask = run_segmenter(ctx.segmenter, ctx.input_dir / r["ct_path"], ctx.work / "masks" / f"{sid}.nii.gz",
                                     sid, ctx.segmenter_timeout_s)
            except SegmenterError as err:
                quarantine.append(QuarantineRecord.from_error(err, "study"))
                continue
            r["mask_path"], r["mask_format"] = str(mask), MASK_FORMAT
        keep.append(r)
        source = source or {"ct_rel": str(r["ct_path"]), "ct_path": str(ctx.input_dir / r["ct_path"]),
                            "ct_format": str(r["ct_format"]), "mask_path": str(ctx.input_dir / r["mask_path"]),
                            "mask_format": str(r["mask_format"])}

    vert = pd.DataFrame()
    if keep:
        sub = RawExport(patients=item.patients, ct_studies=pd.DataFrame(keep, columns=item.rows.columns),
                        dxa=pd.DataFrame({c: pd.Series(dtype=str) for c in DXA_COLUMNS}))   # screening: no labels
        ing = run_ingest(ctx.ingest, ctx.input_dir, sdir / "ingest", ctx.profile, progress=False,
                         key_record=ctx.key_record, raw=sub)
        tables = [sdir / "ingest" / "quarantine.parquet"]
        if ing.vertebrae.ingested:
            run_texture(ctx.texture, sdir / "ingest", sdir / "texture", progress=False)
            tables.append(sdir / "texture" / "quarantine.parquet")
            vert = pd.read_parquet(sdir / "ingest" / "vertebrae.parquet")
            tex = pd.read_parquet(sdir / "texture" / "texture.parquet")[["study_id", "level", "pool_path"]]
            vert = vert.merge(tex, on=["study_id", "level"], how="inner")
            vert["pool_uri"] = [str((sdir / "texture" / p).resolve()) for p in vert["pool_path"]]
        for t in tables:
            if t.is_file():
                quarantine += [QuarantineRecord(**{c: str(row[c]) for c in Q_COLUMNS})
                               for _, row in pd.read_parquet(t).iterrows()]
    out = StudyOutcome(sid, vert, [asdict(q) for q in quarantine], source)
    if len(vert):
        from features.errors import IngestError
        from screening.quality import QualityInputError
        try:
            out.flags, out.thumbnail = _study_quality(source, sid, ctx.screen, ctx.ingest)
        except (IngestError, QualityInputError) as err:
            out.quality_error = type(err).__name__
    return out


def finish_batch(plan: BatchPlan, outcomes: list[StudyOutcome], *, screen: ScreenConfig,
                 geometry: Mapping[str, Any], tracking_uri: str, artifact_location: str | None = None) -> BatchSummary:
    """Steps 5-6: predict, reports (with the studies' quality flags), tables, drift, the MLflow run, the ledger."""
    from features.quarantine import COLUMNS as Q_COLUMNS

    model, summary, bdir = plan.model, plan.summary, plan.bdir
    outcomes = sorted(outcomes, key=lambda o: o.study_id)
    quarantine = [q for o in outcomes for q in o.quarantine]
    parts = [o.vertebrae for o in outcomes if len(o.vertebrae)]
    vert = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(vert):
        cal = vert["cal_version"].astype(str).tolist() if "cal_version" in vert.columns else None
        serving.check_skew(model.contract, geometry, cal, model.uri)

    vrows, prows = _predict_and_report(vert, model, screen, {o.study_id: o for o in outcomes}, bdir, plan.batch_id,
                                       plan.input_dir, summary)

    vtab = pd.DataFrame(vrows)
    ptab = pd.DataFrame(prows)
    qtab = pd.DataFrame(quarantine, columns=list(Q_COLUMNS))
    _atomic_table(vtab, bdir / "vertebrae")
    _atomic_table(ptab, bdir / "patients")
    _atomic_table(qtab, bdir / "quarantine")
    summary.screened = len(ptab)
    summary.vertebrae = len(vtab)
    summary.vertebrae_excluded = int(vtab["excluded"].sum()) if len(vtab) else 0
    summary.screen_positive = int((ptab["screen_positive"] == True).sum()) if len(ptab) else 0  # noqa: E712
    studies_q = qtab[qtab["kind"] == "study"]
    summary.quarantined = len(studies_q)
    summary.quarantined_by_reason = {k: int(v) for k, v in sorted(studies_q["reason"].value_counts().items())}

    drift = None
    if model.drift is not None and len(vert):
        from osteo_model.drift import drift_verdict
        drift = drift_verdict(model.drift, {f: vert[f].to_numpy() for f in model.drift.features}, screen.drift)
        summary.drift_alert = drift.drifted
        summary.drifted_features = [f.name for f in drift.features if f.status == "drift"]
    summary.run_id = _log_run(summary, drift, model, tracking_uri, screen.experiment, artifact_location,
                              time.perf_counter() - plan.t0)
    _append_ledger(plan.out_dir, [{"study_id": sid, "model_name": model.name, "model_version": model.version,
                                   "batch_id": plan.batch_id, "screened_at": pd.Timestamp.now(tz="UTC").isoformat()}
                                  for sid in (ptab["study_id"] if len(ptab) else [])])
    from screening.reports import write_json
    write_json(bdir / "summary.json", asdict(summary))
    log.info("screen batch %s: %d screened, %d quarantined, %d skipped; drift alert %s", plan.batch_id,
             summary.screened, summary.quarantined, summary.skipped_same_version + summary.skipped_other_version,
             summary.drift_alert)
    return summary


def _screen_one(args: tuple[StudyItem, StudyContext]) -> StudyOutcome:
    return screen_study(*args)


def screen_folder(request: ScreenRequest, *, screen: ScreenConfig, ingest: IngestConfig, texture: TextureConfig,
                  geometry: Mapping[str, Any], model_name: str, tracking_uri: str, profile: str,
                  artifact_location: str | None = None, workers: int = 1,
                  compute: ComputeConfig | None = None) -> BatchSummary:
    """Screen every new study of ``request.input_dir`` (module docstring); returns the batch's counts.

    :func:`plan_batch`, then :func:`screen_study` per study (here, in ``workers`` processes or on the Dask
    cluster of ``compute.dask_address``: :mod:`features.parallel`, outputs identical to the serial run),
    then :func:`finish_batch`. The ``screen`` flow composes the same three as Prefect tasks.

    Args:
        request: folders, model URI, segmenter, rescreen.
        screen / ingest / texture: the configuration sections (the same ingest and texture as training).
        geometry: :meth:`osteo_config.Config.io_geometry` of this run (compared with the model's contract).
        model_name: ``registry.model_name`` (the default URI is its ``@champion``).
        tracking_uri: MLflow tracking + registry URI.
        profile: active params profile (recorded with the ingestion summary).
        artifact_location: artifact root of the screening experiment when it is created.
        workers: processes for the per-study work when ``compute.dask_address`` is unset (<= 1: in-process).
        compute: the ``compute:`` section (an existing Dask cluster).

    Raises:
        ModelNotFoundError: the model URI or alias does not resolve.
        TrainServeSkewError: the model was trained on pools made otherwise.
        RawExportError / PseudonymKeyError: the export or the key is unusable (nothing is screened).
        DaskUnreachableError: ``compute.dask_address`` is set and no scheduler answers.
    """
    from features.parallel import map_items

    plan = plan_batch(request, screen=screen, ingest=ingest, texture=texture, geometry=geometry,
                      model_name=model_name, tracking_uri=tracking_uri, profile=profile)
    outcomes = map_items(_screen_one, [(it, plan.context) for it in plan.items], workers=workers, compute=compute) \
        if plan.items else []
    return finish_batch(plan, outcomes, screen=screen, geometry=geometry, tracking_uri=tracking_uri,
                        artifact_location=artifact_location)


def _predict_and_report(vert: pd.DataFrame, model: serving.ServingModel, screen: ScreenConfig,
                        outcomes: Mapping[str, StudyOutcome], bdir: Path, batch_id: str,
                        input_dir: Path, summary: BatchSummary) -> tuple[list[dict], list[dict]]:
    """Per-vertebra and per-study rows; writes each study's reports (released or pending)."""
    from osteo_model.conformal import predict_interval
    from screening import reports
    from screening.quality import level_name
    from screening.tscore import to_sbmd, t_score, who_class

    if vert.empty:
        return [], []
    tables = screen.references
    vendors = list(screen.report_vendors)
    from features.roi import DESCRIPTOR_CHOICES
    table = pd.DataFrame({"pool_uri": vert["pool_uri"].astype(str).to_numpy(),
                          "contrast": vert["contrast"].to_numpy(),
                          # the same ingestion wrote them: the model reads those it was trained with
                          **{c: vert[c].to_numpy() for c in DESCRIPTOR_CHOICES if c in vert.columns}})
    base = model.pyfunc.predict(table, params={"device_vendor": "unknown"})
    bmd = {v: model.pyfunc.predict(table, params={"device_vendor": v})["bmd_g_cm2"].to_numpy() for v in vendors}
    bounds = {v: (predict_interval(model.interval, bmd[v]) if model.interval is not None
                  else (np.full(len(vert), np.nan), np.full(len(vert), np.nan))) for v in vendors}
    vrows, prows = [], []
    for sid, idx in vert.groupby("study_id", sort=True).indices.items():
        rows = vert.iloc[idx]
        notes: list[str] = []
        flags, thumb = outcomes[sid].flags, outcomes[sid].thumbnail
        if outcomes[sid].quality_error:
            notes.append(f"quality flags not assessed ({outcomes[sid].quality_error}): every level excluded")
            flags = {int(lv): [("quality_unavailable", f"{level_name(int(lv))}: quality flags could not be assessed")]
                     for lv in rows["level"]}
        levels = []
        for i, (_, r) in zip(idx, rows.iterrows()):
            lv = int(r["level"])
            fl = tuple(flags.get(lv, ()))
            region = TSCORE_LEVELS.get(lv)
            rec = {"patient_id": r["patient_id"], "study_id": sid, "level": lv, "level_name": level_name(lv),
                   "site": r["site"], "scanner": r["scanner"], "contrast": int(r["contrast"]), "sex": r["sex"],
                   "age_at_ct": float(r["age_at_ct"]), "score": float(base["score"].iloc[i]),
                   "vertebra_positive": bool(base["score"].iloc[i] >= model.threshold), "excluded": bool(fl),
                   "flags": ";".join(k for k, _ in fl), "flag_reasons": " | ".join(t for _, t in fl)}
            readings = []
            for v in vendors:
                b, lo, hi = float(bmd[v][i]), float(bounds[v][0][i]), float(bounds[v][1][i])
                t = float(t_score(b, v, r["sex"], region, tables)) if region else None
                who = who_class(t).name.lower() if t is not None else None
                sb = float(to_sbmd(b, v, tables)) if region else None
                s = slug(v)
                rec.update({f"bmd_{s}": b, f"bmd_lower_{s}": lo, f"bmd_upper_{s}": hi, f"t_score_{s}": t,
                            f"who_{s}": who, f"sbmd_{s}": sb})
                readings.append(VendorResult(v, b, lo, hi, t, who, sb))
            rec.update(model_name=model.name, model_version=model.version, threshold=model.threshold,
                       interval_level=model.interval.level if model.interval else None,
                       reference_version=tables.version, batch_id=batch_id)
            if "cal_version" in r.index:
                rec["cal_version"] = str(r["cal_version"])
            vrows.append(rec)
            levels.append(LevelResult(lv, readings=() if fl else tuple(readings), flags=fl))
        measured = [x for x in vrows[-len(rows):] if not x["excluded"]]
        score = max((x["score"] for x in measured), default=None)
        positive = None if score is None else bool(score >= model.threshold)
        result = StudyResult(levels=tuple(levels), model_name=model.name, model_version=model.version,
                             reference_version=tables.version,
                             interval_level=model.interval.level if model.interval else screen.interval_level,
                             screen_positive=positive, score=score, threshold=model.threshold, notes=tuple(notes))
        src = outcomes[sid].source
        if screen.review == "required":
            reports.queue(bdir / "pending", sid, result, input_dir, src["ct_rel"], thumb)
            summary.reports_pending += 1
        else:
            reports.write_reports(bdir / "reports", sid, result, input_dir, src["ct_rel"], thumb)
            summary.reports_released += 1
        prow = {"patient_id": rows["patient_id"].iloc[0], "study_id": sid, "n_levels": len(rows),
                "n_measured": len(measured), "n_excluded": len(rows) - len(measured), "score": score,
                "threshold": model.threshold, "screen_positive": positive}
        for v in vendors:
            ts = [x[f"t_score_{slug(v)}"] for x in measured if x[f"t_score_{slug(v)}"] is not None]
            prow[f"min_t_score_{slug(v)}"] = min(ts) if ts else None
            prow[f"who_{slug(v)}"] = who_class(min(ts)).name.lower() if ts else None
        prow.update(model_name=model.name, model_version=model.version, reference_version=tables.version,
                    batch_id=batch_id, review=screen.review)
        prows.append(prow)
    return vrows, prows


def _log_run(summary: BatchSummary, drift, model: serving.ServingModel, tracking_uri: str, experiment: str,
             artifact_location: str | None, seconds: float) -> str:
    """One MLflow run per batch: counts and drift metrics, the model version; no identifier."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    run = client.create_run(exp_id, run_name=f"screen-{summary.batch_id}",
                            tags={"kind": "screening", "model_version": model.version,
                                  "drift_alert": str(summary.drift_alert).lower()})
    now = int(time.time() * 1000)
    values = {"studies_seen": summary.studies_seen, "screened": summary.screened,
              "skipped_same_version": summary.skipped_same_version,
              "skipped_other_version": summary.skipped_other_version, "quarantined": summary.quarantined,
              "vertebrae": summary.vertebrae, "vertebrae_excluded": summary.vertebrae_excluded,
              "screen_positive": summary.screen_positive, "reports_released": summary.reports_released,
              "reports_pending": summary.reports_pending, "seconds": seconds,
              **{f"quarantined_{k}": v for k, v in summary.quarantined_by_reason.items()},
              **(drift.metrics() if drift is not None else {})}
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                     params=[Param("model_uri", model.uri), Param("model_version", model.version),
                             Param("batch_id", summary.batch_id), Param("review", summary.review)],
                     tags=[RunTag("drifted_features", ",".join(summary.drifted_features) or "-")])
    client.set_terminated(run.info.run_id)
    return run.info.run_id
