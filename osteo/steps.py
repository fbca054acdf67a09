"""Pipeline steps as functions of the parsed :class:`osteo_config.Config`: the one entry point per step.

The CLI (`osteo ...`, hence the DVC stages, which the Prefect flows run) calls these; each
hands the library its typed section config and explicit stage folders. No step logic here.

Stage folders (each DVC stage owns one):
``paths.raw`` / ``paths.truth`` (cohort) → ``<interim>/ingest`` → ``<interim>/texture``
→ ``<interim>/splits`` → Feast repo (``features_store.repo_dir``) →
``<paths.data>/processed/training_table.parquet`` → ``<models>/pretrain``, ``<models>/finetune``
→ ``<metrics>/evaluate.json`` + ``<reports>/evaluation`` → MLflow registry + ``<metrics>/promotion.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from osteo_config import Config


def cohort(cfg: Config, sites: list[str] | None = None, n_patients: int | None = None, progress: bool = True):
    """Generate the synthetic cohort as a raw export (``cohort.simulate.run_cohort``)."""
    from cohort.simulate import run_cohort

    return run_cohort(cfg.cohort, cfg.paths.raw, cfg.paths.truth, sites=sites, n_patients=n_patients,
                      progress=progress)


def cohort_report(cfg: Config, out: Path | None = None) -> dict:
    """Write the cohort calibration report (``cohort.report.write_report``)."""
    from cohort.report import write_report

    return write_report(cfg.paths.raw, cfg.paths.truth, out or cfg.paths.reports / "cohort", cfg.cohort)


def ingest(cfg: Config, progress: bool = True):
    """Raw export → pseudonymised ROIs and tables (``features.ingest.run_ingest``)."""
    from features.ingest import run_ingest

    return run_ingest(cfg.ingest, cfg.paths.raw, cfg.paths.ingest_dir, profile=cfg.profile, progress=progress,
                      compute=cfg.compute)


def texture(cfg: Config, progress: bool = True):
    """ROIs → texture pools + scalar radiomics (``features.texture_stage.run_texture``)."""
    from features.texture_stage import run_texture

    return run_texture(cfg.texture, cfg.paths.ingest_dir, cfg.paths.texture_dir, progress=progress,
                       compute=cfg.compute)


def splits(cfg: Config):
    """Patient-level split table + hash (``features.splits.run_splits``)."""
    from features.splits import run_splits

    return run_splits(cfg.splits, cfg.paths.ingest_dir, cfg.paths.interim)


def validate(cfg: Config, training: bool = False):
    """Run the Great Expectations suites; returns the report (``data_checks.gate`` stops on it).

    Args:
        cfg: the parsed configuration.
        training: validate only the assembled training table (after materialization);
            otherwise the stage tables (vertebrae, DXA, texture, radiomics).
    """
    from data_checks import read_tables, run_checks

    interim = cfg.paths.interim
    if training:
        tables = {"training": read_tables(interim, training=cfg.paths.training_table)["training"]}
    else:
        tables = read_tables(interim)
    name = "training" if training else "tables"
    report = run_checks(tables, cfg.checks, docs_dir=cfg.paths.reports / "data_docs" / name)
    _write_validation_summary(report, cfg.paths.reports / "validation" / f"{name}.json")
    return report


def _write_validation_summary(report, out: Path) -> None:
    """Counts only (no values): the DVC output of the validate stages and a record for reviewers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "success": report.success,
        "suites": {s.suite: {"evaluated": s.evaluated, "failed": s.failed, "rows": s.rows} for s in report.suites},
        "failures": [{"suite": f.suite, "expectation": f.expectation_type, "column": f.column,
                      "unexpected_count": f.unexpected_count} for f in report.failures],
    }, indent=2, sort_keys=True))


def materialize(cfg: Config, full: bool = False):
    """Apply the Feast repo and materialize incrementally (``features.store.materialize``)."""
    from features.store import materialize as _materialize

    return _materialize(cfg.store, cfg.paths.ingest_dir, cfg.paths.texture_dir, Path(cfg.store.repo_dir), full=full)


def training_table(cfg: Config):
    """Pair vertebrae with DXA labels through ``osteo_training_v1`` and attach splits."""
    from features.training_table import build_training_table

    return build_training_table(cfg.store, Path(cfg.store.repo_dir), cfg.paths.splits_table, cfg.paths.training_table)


def latency(cfg: Config, n: int | None = None):
    """Time online look-ups through ``osteo_screening_v1`` (``features.store.online_latency``)."""
    from features.store import online_latency

    return online_latency(cfg.store, Path(cfg.store.repo_dir), n=n)


# --- models ------------------------------------------------------------------
def train_method(cfg: Config, method: str | None = None) -> str:
    """The method to train: the argument, else ``train.method``."""
    return method or cfg.method


def train_pretrain(cfg: Config, method: str | None = None, tracking: bool = True) -> dict:
    """Self-supervised pretraining → ``<models>/pretrain/encoder.pt`` (``osteo_model.stages.run_pretrain_stage``).

    Methods without pretraining (``scratch``) write nothing and return ``{"encoder": None}``.
    """
    from osteo_model.stages import run_pretrain_stage
    from osteo_model.train import distributed_from_env

    with distributed_from_env(cfg.pretrain.device):             # torchrun: DDP, rank 0 writes
        return run_pretrain_stage(cfg.experiment(), train_method(cfg, method), cfg.paths.models, tracking=tracking)


def train_finetune(cfg: Config, method: str | None = None, tracking: bool = True) -> dict:
    """Fine-tune, pick the validation operating point, score valid/test (``run_finetune_stage``) → ``<metrics>/train.json``."""
    from osteo_model.stages import run_finetune_stage
    from osteo_model.train import distributed_from_env

    with distributed_from_env(cfg.finetune.device):             # torchrun: DDP, rank 0 writes
        return run_finetune_stage(cfg.experiment(), train_method(cfg, method), cfg.paths.models,
                                  cfg.paths.metrics / "train.json", tracking=tracking)


def ablation(cfg: Config, arms: list[str] | None = None, out_md: Path = Path("docs/results.md"),
             overrides: Mapping[str, Any] | None = None, tracking: bool = True, seeds: int = 1):
    """The paper's comparison on the cohort → a table in ``out_md`` (``osteo_model.ablation.run_ablation``).

    ``overrides`` applies to every arm; each arm's own overlay (``ARMS``) is applied here, at the edge, and so
    are the seeds: seed k of every arm trains with ``train.seed + k``. The oracle row reads the simulator
    truth (``paths.truth``) when it exists (:func:`oracle_truth`).
    """
    from osteo_model.ablation import ARMS, run_ablation

    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: pass >= 1 (3 or more to report mean ± SD)")
    base = cfg.override(overrides)
    seed0 = int(base.section("train").get("seed", base.finetune.seed))
    overlay = {arm: ARMS[arm][1] if arm in ARMS else {} for arm in (arms or ARMS)}  # unknown arms: run_ablation refuses
    specs = {arm: [base.override(o).override({"train": {"seed": seed0 + k}}).experiment() for k in range(seeds)]
             for arm, o in overlay.items()}
    return run_ablation(base.experiment(), specs, out_md, cfg.paths.models / "ablation", tracking=tracking,
                        truth=oracle_truth(cfg))


def oracle_truth(cfg: Config):
    """The simulator truth keyed by pseudonymous ``patient_id`` (``<paths.truth>/truth.parquet``), or None.

    The simulator keys its truth by MRN; the ablation's test patients carry the ingestion's
    pseudonyms, so the MRNs are pseudonymised here, at the edge, with the ingestion key, and dropped:
    no MRN travels into ``osteo_model``. None when there is no truth (a hospital export).
    """
    import pandas as pd

    from features.pseudonym import Pseudonymizer, load_key

    path = Path(cfg.paths.truth) / "truth.parquet"
    if not path.is_file():
        return None
    truth = pd.read_parquet(path, columns=["mrn", "level", "true_bmc_g", "true_area_cm2"])
    key, source = load_key(cfg.ingest.key_env, cfg.ingest.key_file, cfg.ingest.allow_demo_key, cfg.paths.raw)
    pseudo = Pseudonymizer(key=key, date_shift_max_days=int(cfg.ingest.date_shift_max_days), key_source=source)
    truth["patient_id"] = [pseudo.patient_id(m) for m in truth["mrn"].astype(str)]
    return truth.drop(columns="mrn")


def robustness(cfg: Config, shifts: list[str] | None = None, n_patients: int | None = None,
               work: Path | None = None, out_json: Path | None = None, out_md: Path | None = Path("docs/results.md"),
               model_uri: str | None = None, keep_work: bool | None = None, tracking: bool = True,
               progress: bool = True) -> dict:
    """Scanner-shift sites screened by the champion vs the re-simulated base site (``screening.robustness``).

    ``shifts`` picks named shifts of ``robustness.shifts`` (default all); ``n_patients`` / ``keep_work`` override
    the section. Work folders default to ``<paths.data>/robustness``, the table to ``<paths.metrics>/robustness.json``.
    """
    import dataclasses

    from screening.robustness import RobustnessInputs, run_robustness

    rcfg = cfg.robustness.select(shifts)
    if n_patients is not None:
        rcfg = dataclasses.replace(rcfg, n_patients=int(n_patients))
    if keep_work is not None:
        rcfg = dataclasses.replace(rcfg, keep_work=bool(keep_work))
    inputs = RobustnessInputs(robustness=rcfg, cohort=cfg.cohort, ingest=cfg.ingest, texture=cfg.texture,
                              store=cfg.store, evaluate=cfg.evaluate, tracking=cfg.tracking,
                              geometry=cfg.io_geometry(), model_name=cfg.registry.model_name, profile=cfg.profile,
                              compute=cfg.compute)
    return run_robustness(inputs, work or cfg.paths.data / "robustness",
                          out_json or cfg.paths.metrics / "robustness.json", out_md, model_uri=model_uri,
                          tracking=tracking, progress=progress)


# --- evaluation and registry ------------------------------------------------------
def evaluate(cfg: Config, tracking: bool = True) -> dict:
    """Evaluate the candidate on the test split with its stored threshold, paired with the champion when the
    registry has one → ``<metrics>/evaluate.json``, ``<metrics>/plots``, ``<reports>/evaluation``, MLflow child run
    ``evaluate`` (``osteo_model.evaluate_stage.run_evaluate_stage``).

    ``tracking=False`` touches no MLflow database at all: no child run and no champion comparison.
    Returns ``{"per_site": [...], "threshold", "champion_version", "n_patients_common", "evaluate_json",
    "metrics_file", "report", "plots", "run_id", "parent_run_id", ...}``.
    """
    from osteo_model.evaluate_stage import run_evaluate_stage
    from registry.pipeline import champion_ref

    champion = champion_ref(cfg.registry) if tracking else None
    return run_evaluate_stage(cfg.evaluate, cfg.tracking, cfg.paths.data_paths(), cfg.paths.models,
                              cfg.paths.metrics, cfg.paths.evaluation_dir, champion=champion, tracking=tracking)


def format_site_table(rows: list[dict]) -> str:
    """Text table of ``evaluate(...)["per_site"]`` (``osteo_model.report.format_site_table``)."""
    from osteo_model.report import format_site_table as _format

    return _format(rows)


def promote(cfg: Config, actor: str | None = None, reason: str | None = None) -> dict:
    """Gate the evaluated candidate, register it as a new version and promote it when every gate passes
    → ``<metrics>/promotion.json`` (``registry.pipeline.promote_candidate``).

    Returns ``{"state": "promoted" | "rejected", "version", "failed_gates": [{gate, scope, metric, value,
    bound, ...}], "reasons", "aliases", ...}``; raises ``EvaluationMissingError`` without ``evaluate.json``.
    """
    from registry.pipeline import promote_candidate

    models, metrics = cfg.paths.models, cfg.paths.metrics
    return promote_candidate(cfg.registry, cfg.gates, models / "finetune" / "finetune.json",
                             metrics / "evaluate.json", metrics / "promotion.json", actor=actor, reason=reason)


def rollback(cfg: Config, reason: str, actor: str | None = None) -> dict:
    """``previous-champion`` becomes champion again (``registry.pipeline.rollback_champion``)."""
    from registry.pipeline import rollback_champion

    return rollback_champion(cfg.registry, reason, actor=actor)


def registry_approve(cfg: Config, version: str, reason: str, approver: str | None = None) -> dict:
    """A named approver moves champion to ``version`` (``registry.pipeline.approve_version``)."""
    from registry.pipeline import approve_version

    return approve_version(cfg.registry, cfg.gates, version, reason, approver=approver)


def registry_reject(cfg: Config, version: str, reason: str, approver: str | None = None) -> dict:
    """A named approver turns down ``version`` (``registry.pipeline.reject_version``)."""
    from registry.pipeline import reject_version

    return reject_version(cfg.registry, version, reason, approver=approver)


def registry_repair(cfg: Config, roll_back: bool = False, actor: str | None = None) -> dict:
    """Finish or undo operations cut short by a crash (``registry.pipeline.repair_registry``)."""
    from registry.pipeline import repair_registry

    return repair_registry(cfg.registry, roll_back=roll_back, actor=actor)


def registry_status(cfg: Config) -> dict:
    """Versions, aliases and the champion's headline metrics (``registry.pipeline.registry_status``)."""
    from registry.pipeline import registry_status as _status

    return _status(cfg.registry)


def registry_log(cfg: Config) -> dict:
    """The promotion audit log, formatted, with its hash chain verified (``registry.pipeline.audit_log``)."""
    from registry.pipeline import audit_log

    return audit_log(cfg.registry)


def screen(cfg: Config, input_dir: Path | None, out_dir: Path, model_uri: str | None = None,
           segmenter: str | None = None, rescreen: bool = False, batch_id: str | None = None, progress: bool = True,
           pacs_url: str | None = None, dask_address: str | None = None):
    """New CT studies → tables, reports, one MLflow run (``screening.batch.screen_folder``).

    ``input_dir``: an export folder; or ``pacs_url``: the PACS's new CT series, reports stored back
    (``screening.pacs_batch.screen_pacs``; returns its ``PacsRun``). The per-study work runs in
    ``compute.local_workers`` processes, or on the Dask cluster of ``dask_address`` / ``compute.dask_address``.
    """
    import dataclasses

    from screening.batch import ScreenRequest, new_batch_id, screen_folder

    compute = cfg.compute if not dask_address else dataclasses.replace(cfg.compute, dask_address=dask_address)
    batch_id = batch_id or new_batch_id()

    def run(folder: Path):
        request = ScreenRequest(input_dir=Path(folder), out_dir=Path(out_dir), model_uri=model_uri,
                                segmenter=segmenter, rescreen=rescreen, batch_id=batch_id, progress=progress)
        return screen_folder(request, screen=cfg.screen, ingest=cfg.ingest, texture=cfg.texture,
                             geometry=cfg.io_geometry(), model_name=cfg.registry.model_name,
                             tracking_uri=cfg.tracking.active_uri, profile=cfg.profile,
                             artifact_location=cfg.tracking.artifact_location,
                             workers=cfg.compute.local_workers, compute=compute)

    if pacs_url is None:
        return run(Path(input_dir))
    from screening.pacs_batch import screen_pacs

    return screen_pacs(pacs_url, Path(out_dir), pacs=cfg.screen.pacs, screen_export=run, batch_id=batch_id,
                       review=cfg.screen.review)


def screen_review(out_dir: Path, batch_id: str, reviewer: str, approve: bool, reason: str | None = None) -> dict:
    """Release (approve) or discard (reject) a batch's pending reports (``screening.reports``)."""
    from screening.reports import reject, release

    batch = Path(out_dir) / "batches" / batch_id
    if not approve:
        return reject(batch, reviewer, reason)
    out = release(batch, reviewer)
    from screening.pacs_batch import store_approved

    stored = store_approved(batch)             # a PACS batch: the approved SRs + PDFs go back now
    return {**out, "stored": stored} if stored is not None else out
