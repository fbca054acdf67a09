"""Pipeline steps as functions of the merged params: the one entry point per step.

The CLI (`osteo ...`, hence the DVC stages) and the Prefect flows both call
these; each only parses its params section into the library's frozen config,
resolves the stage folders and calls the library function. No step logic here.

Stage folders (each DVC stage owns one):
``paths.raw`` / ``paths.truth`` (cohort) → ``<interim>/ingest`` → ``<interim>/texture``
→ ``<interim>/splits`` → Feast repo (``features_store.repo_dir``) →
``<paths.data>/processed/training_table.parquet`` → ``<models>/pretrain``, ``<models>/finetune``
→ ``<metrics>/evaluate.json`` + ``<reports>/evaluation`` → MLflow registry + ``<metrics>/promotion.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

Params = Mapping[str, Any]


def path(params: Params, key: str) -> Path:
    """A folder of the ``paths:`` section."""
    return Path(params["paths"][key])


def ingest_dir(params: Params) -> Path:
    return path(params, "interim") / "ingest"


def texture_dir(params: Params) -> Path:
    return path(params, "interim") / "texture"


def training_table_path(params: Params) -> Path:
    return path(params, "data") / "processed" / "training_table.parquet"


def cohort(params: Params, sites: list[str] | None = None, n_patients: int | None = None, progress: bool = True):
    """Generate the synthetic cohort as a raw export (``cohort.simulate.run_cohort``)."""
    from cohort.config import CohortConfig
    from cohort.simulate import run_cohort

    return run_cohort(CohortConfig.from_params(params), path(params, "raw"), path(params, "truth"),
                      sites=sites, n_patients=n_patients, progress=progress)


def cohort_report(params: Params, out: Path | None = None) -> dict:
    """Write the cohort calibration report (``cohort.report.write_report``)."""
    from cohort.config import CohortConfig
    from cohort.report import write_report

    out = out or path(params, "reports") / "cohort"
    return write_report(path(params, "raw"), path(params, "truth"), out, CohortConfig.from_params(params))


def ingest(params: Params, progress: bool = True):
    """Raw export → pseudonymised ROIs and tables (``features.ingest.run_ingest``)."""
    from features.ingest import IngestConfig, run_ingest

    return run_ingest(IngestConfig.from_params(params), path(params, "raw"), ingest_dir(params),
                      profile=params["profile"], progress=progress)


def texture(params: Params, progress: bool = True):
    """ROIs → texture pools + scalar radiomics (``features.texture_stage.run_texture``)."""
    from features.texture_stage import TextureConfig, run_texture

    return run_texture(TextureConfig.from_params(params), ingest_dir(params), texture_dir(params), progress=progress)


def splits(params: Params):
    """Patient-level split table + hash (``features.splits.run_splits``)."""
    from features.splits import SplitConfig, run_splits

    return run_splits(SplitConfig.from_params(params), ingest_dir(params), path(params, "interim"))


def validate(params: Params, training: bool = False):
    """Run the Great Expectations suites; returns the report (``data_checks.gate`` stops on it).

    Args:
        params: merged params.
        training: validate only the assembled training table (after materialization);
            otherwise the stage tables (vertebrae, DXA, texture, radiomics).
    """
    from data_checks import ChecksConfig, read_tables, run_checks

    if training:
        tables = {"training": read_tables(path(params, "interim"), training=training_table_path(params))["training"]}
    else:
        tables = read_tables(path(params, "interim"))
    name = "training" if training else "tables"
    report = run_checks(tables, ChecksConfig.from_params(params), docs_dir=path(params, "reports") / "data_docs" / name)
    _write_validation_summary(report, path(params, "reports") / "validation" / f"{name}.json")
    return report


def _write_validation_summary(report, out: Path) -> None:
    """Counts only (no values): the DVC output of the validate stages and a record for reviewers."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "success": report.success,
        "suites": {s.suite: {"evaluated": s.evaluated, "failed": s.failed, "rows": s.rows} for s in report.suites},
        "failures": [{"suite": f.suite, "expectation": f.expectation_type, "column": f.column,
                      "unexpected_count": f.unexpected_count} for f in report.failures],
    }, indent=2, sort_keys=True))


def materialize(params: Params, full: bool = False):
    """Apply the Feast repo and materialize incrementally (``features.store.materialize``)."""
    from features.store import FeatureStoreConfig, materialize as _materialize

    cfg = FeatureStoreConfig.from_params(params)
    return _materialize(cfg, ingest_dir(params), texture_dir(params), Path(cfg.repo_dir), full=full)


def training_table(params: Params):
    """Pair vertebrae with DXA labels through ``osteo_training_v1`` and attach splits."""
    from features.splits import SplitConfig
    from features.store import FeatureStoreConfig
    from features.training_table import build_training_table

    cfg = FeatureStoreConfig.from_params(params)
    splits_path = path(params, "interim") / SplitConfig.from_params(params).file
    return build_training_table(cfg, Path(cfg.repo_dir), splits_path, training_table_path(params))


def latency(params: Params, n: int | None = None):
    """Time online look-ups through ``osteo_screening_v1`` (``features.store.online_latency``)."""
    from features.store import FeatureStoreConfig, online_latency

    cfg = FeatureStoreConfig.from_params(params)
    return online_latency(cfg, Path(cfg.repo_dir), n=n)


# --- models ------------------------------------------------------------------
def models_dir(params: Params) -> Path:
    return path(params, "models")


def metrics_dir(params: Params) -> Path:
    return path(params, "metrics")


def train_method(params: Params, method: str | None = None) -> str:
    """The method to train: the argument, else ``train.method``."""
    return method or str((params.get("train") or {}).get("method", "tp_swav"))


def train_pretrain(params: Params, method: str | None = None, tracking: bool = True) -> dict:
    """Self-supervised pretraining → ``<models>/pretrain/encoder.pt`` (``osteo_model.experiment.run_pretrain_stage``).

    Methods without pretraining (``scratch``) write nothing and return ``{"encoder": None}``.
    """
    from osteo_model.experiment import run_pretrain_stage

    return run_pretrain_stage(params, train_method(params, method), models_dir(params), tracking=tracking)


def train_finetune(params: Params, method: str | None = None, tracking: bool = True) -> dict:
    """Fine-tune, pick the validation threshold, score valid/test (``run_finetune_stage``) → ``<metrics>/train.json``."""
    from osteo_model.experiment import run_finetune_stage

    return run_finetune_stage(params, train_method(params, method), models_dir(params),
                              metrics_dir(params) / "train.json", tracking=tracking)


def ablation(params: Params, arms: list[str] | None = None, out_md: Path = Path("docs/results.md"),
             overrides: Mapping[str, Any] | None = None, tracking: bool = True):
    """The paper's comparison on the cohort → a table in ``out_md`` (``osteo_model.ablation.run_ablation``)."""
    from osteo_model.ablation import run_ablation

    return run_ablation(params, arms, out_md, models_dir(params) / "ablation", overrides=overrides, tracking=tracking)


# --- evaluation and registry ------------------------------------------------------
def evaluation_dir(params: Params) -> Path:
    return path(params, "reports") / "evaluation"


def _registry_config(params: Params):
    from registry.config import RegistryConfig

    return RegistryConfig.from_params(params)


def evaluate(params: Params, tracking: bool = True) -> dict:
    """Evaluate the candidate on the test split with its stored threshold, paired with the champion when the
    registry has one → ``<metrics>/evaluate.json``, ``<metrics>/plots``, ``<reports>/evaluation``, MLflow child run
    ``evaluate`` (``osteo_model.evaluate_stage.run_evaluate_stage``).

    ``tracking=False`` touches no MLflow database at all: no child run and no champion comparison.
    Returns ``{"per_site": [...], "threshold", "champion_version", "n_patients_common", "evaluate_json",
    "metrics_file", "report", "plots", "run_id", "parent_run_id", ...}``.
    """
    from osteo_model.evaluate_stage import run_evaluate_stage
    from registry.pipeline import champion_ref

    champion = champion_ref(_registry_config(params)) if tracking else None
    return run_evaluate_stage(params, models_dir(params), metrics_dir(params), evaluation_dir(params),
                              champion=champion, tracking=tracking)


def format_site_table(rows: list[dict]) -> str:
    """Text table of ``evaluate(...)["per_site"]`` (``osteo_model.evaluate.format_site_table``)."""
    from osteo_model.evaluate import format_site_table as _format

    return _format(rows)


def promote(params: Params, actor: str | None = None, reason: str | None = None) -> dict:
    """Gate the evaluated candidate, register it as a new version and promote it when every gate passes
    → ``<metrics>/promotion.json`` (``registry.pipeline.promote_candidate``).

    Returns ``{"state": "promoted" | "rejected", "version", "failed_gates": [{gate, scope, metric, value,
    bound, ...}], "reasons", "aliases", ...}``; raises ``EvaluationMissingError`` without ``evaluate.json``.
    """
    from registry.gates import GatesConfig
    from registry.pipeline import promote_candidate

    return promote_candidate(_registry_config(params), GatesConfig.from_params(params),
                             models_dir(params) / "finetune" / "finetune.json", metrics_dir(params) / "evaluate.json",
                             metrics_dir(params) / "promotion.json", actor=actor, reason=reason)


def rollback(params: Params, reason: str, actor: str | None = None) -> dict:
    """``previous-champion`` becomes champion again (``registry.pipeline.rollback_champion``)."""
    from registry.pipeline import rollback_champion

    return rollback_champion(_registry_config(params), reason, actor=actor)


def registry_status(params: Params) -> dict:
    """Versions, aliases and the champion's headline metrics (``registry.pipeline.registry_status``)."""
    from registry.pipeline import registry_status as _status

    return _status(_registry_config(params))


def registry_log(params: Params) -> dict:
    """The promotion audit log, formatted, with its hash chain verified (``registry.pipeline.audit_log``)."""
    from registry.pipeline import audit_log

    return audit_log(_registry_config(params))
