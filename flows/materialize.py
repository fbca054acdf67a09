"""Prefect flow ``materialize_features``: (cohort →) ingest → texture → validate → splits → materialize → training_table.

One Prefect task per DVC stage of ``dvc.yaml``, run in stage order with
``dvc repro --single-item <stage>`` (:mod:`flows.stages`). DVC decides whether
a stage is stale (code, params or inputs changed since ``dvc.lock``) and
records what it ran, so a flow run and ``dvc repro`` share one invalidation
rule and one record: after a flow run ``dvc status`` is clean, and a fix in the
ROI code re-runs ingest and what follows in both. Prefect keeps what it is
good at: retries, states, schedules, notifications.

- Retries: only transient failures (:func:`flows.stages.is_transient`); a data
  error or a failed gate fails at once.
- A re-run after a crash skips the stages DVC recorded as done (the steps are
  idempotent: no duplicated or lost rows). Per-study parallelism stays inside
  the stage commands (``ingest.workers``, ``texture.workers``).
- Validation failure (the validate stage exits non-zero) stops the flow with a
  Failed state naming the failed expectations (counts only: no identifying values).
- The task summaries are read from the JSON files the stages write.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.stages import (DATA_STAGES, DataGateFailed, StageFailed, check_profile, is_transient, repro_stage,
                          stage_env)
from osteo_config.params import load_params


@dataclass(frozen=True)
class FlowSettings:
    """What a flow needs to run the stages: the repository, its paths and the retry policy (``flows:``)."""

    repo: Path
    paths: dict[str, str]
    retries: int
    retry_delay_s: float
    stage_timeout_s: float
    feature_repo: str = "data/feature_repo"

    @classmethod
    def load(cls, repo: str | Path, params_file: str | Path, profile: str | None) -> "FlowSettings":
        repo = Path(repo).resolve()
        tracked = check_profile(repo, params_file, profile)
        params = load_params(repo / "params.yaml", tracked)
        fl = params.get("flows") or {}
        return cls(repo=repo, paths={k: str(v) for k, v in params["paths"].items()},
                   retries=int(fl.get("retries", 2)), retry_delay_s=float(fl.get("retry_delay_s", 5)),
                   stage_timeout_s=float(fl.get("stage_timeout_s", 7200)),
                   feature_repo=str((params.get("features_store") or {}).get("repo_dir", "data/feature_repo")))

    def file(self, key: str, *parts: str) -> Path:
        """A file under a ``paths:`` folder of the repository."""
        return self.repo / self.paths[key] / Path(*parts)


def transient(task_, task_run, state) -> bool:
    """Prefect retry condition: retry only what :func:`flows.stages.is_transient` accepts."""
    return is_transient(state.result(raise_on_failure=False))


def _run_stage(stage: str, repo: str, timeout_s: float, extra_env: dict[str, str] | None = None) -> dict:
    run = repro_stage(stage, Path(repo), timeout_s, stage_env() | (extra_env or {}))
    print(f"  stage {stage:<14} {'ran' if run.ran else 'up to date, skipped'} ({run.seconds:.1f} s)", flush=True)
    return run.to_dict()


def stage_task(stage: str, s: FlowSettings):
    """The Prefect task that runs DVC stage ``stage`` (no Prefect cache: DVC is the cache)."""
    return task(_run_stage, name=stage, task_run_name=stage, cache_policy=NO_CACHE, persist_result=False,
                retries=s.retries, retry_delay_seconds=s.retry_delay_s, retry_condition_fn=transient)


def run_stages(stages: tuple[str, ...], s: FlowSettings, extra_env: dict[str, str] | None = None) -> dict[str, dict]:
    """Run ``stages`` in order, each as its own task; the first failure raises (the flow fails).

    ``extra_env``: variables for the stage commands that DVC does not track (``OSTEO_ACTOR``, ``OSTEO_REASON``:
    who and why, for the promotion audit log).
    """
    return {stage: stage_task(stage, s)(stage, str(s.repo), s.stage_timeout_s, extra_env) for stage in stages}


def read_json(path: Path) -> dict[str, Any] | None:
    """A stage's JSON record, or None when the stage did not write it."""
    return json.loads(path.read_text()) if path.is_file() else None


def validation_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """Counts of a ``reports/validation/*.json`` record and a one-line summary (no values)."""
    suites = record.get("suites") or {}
    evaluated = sum(int(v.get("evaluated", 0)) for v in suites.values())
    failed = sum(int(v.get("failed", 0)) for v in suites.values())
    line = (f"{'passed' if record.get('success') else 'FAILED'}: {len(suites)} suite(s), "
            f"{evaluated} expectations evaluated, {failed} failed")
    return {"suites": suites, "summary": line, "failures": record.get("failures") or []}


def _gate_failure(exc: StageFailed, record: Mapping[str, Any] | None) -> DataGateFailed:
    failures = (record or {}).get("failures") or []
    listed = "; ".join(f"{f.get('suite')}: {f.get('expectation')}({f.get('column')}) "
                       f"{f.get('unexpected_count')} unexpected" for f in failures)
    return DataGateFailed(exc.stage, exc.returncode,
                          f"data gate refused the tables: {listed or 'see the stage output'}\n{exc.tail}")


def data_summaries(s: FlowSettings) -> dict[str, Any]:
    """The data stages' records, as written by them (counts only)."""
    out: dict[str, Any] = {}
    files = {"ingest": s.file("interim", "ingest", "ingest_summary.json"),
             "splits": s.file("interim", "splits", "splits.sha256.json"),
             "materialize": s.repo / s.feature_repo / "data" / "materialize_summary.json",
             "training_table": s.file("data", "processed", "training_table.json")}
    for key, path in files.items():
        record = read_json(path)
        if record is not None:
            out[key] = record
    for key, name in (("validation", "tables.json"), ("training_validation", "training.json")):
        record = read_json(s.file("reports", "validation", name))
        if record is not None:
            out[key] = validation_summary(record)
    return out


@flow(name="materialize_features", log_prints=False, validate_parameters=False)
def materialize_features(params_file: str = "params.yaml", profile: str | None = None, cohort: bool = False,
                         repo: str = ".") -> dict:
    """(cohort →) ingest → texture → validate → splits → materialize → training_table, as DVC stages.

    Args:
        params_file: the repository's params.yaml (DVC reads no other).
        profile: requested profile; must equal params.yaml's ``profile:`` (None: take it).
        cohort: run the ``cohort`` stage first (the synthetic export); False: ingest ``data/raw`` as it is.
        repo: the DVC repository root.

    Returns:
        ``{"stages": {stage: {"ran", "seconds"}}, "ingest", "validation", "splits", "materialize",
        "training_table", "training_validation"}`` (the stages' JSON records).
    """
    s = FlowSettings.load(repo, params_file, profile)
    stages = (("cohort",) if cohort else ()) + DATA_STAGES
    done: dict[str, dict] = {}
    for stage in stages:
        try:
            done.update(run_stages((stage,), s))
        except StageFailed as exc:
            # the gates: validate, and the training table's own suite (its stage ends with `osteo validate --training`)
            gate = {"validate": "tables.json", "training_table": "training.json"}.get(stage)
            record = read_json(s.file("reports", "validation", gate)) if gate else None
            if gate and (stage == "validate" or (record is not None and not record.get("success"))):
                raise _gate_failure(exc, record) from None
            raise
    return {"stages": done, **data_summaries(s)}


def run_materialize_flow(params_file: str = "params.yaml", profile: str | None = None, cohort: bool = False,
                         repo: str = ".") -> dict[str, Any]:
    """Run ``materialize_features`` (call :func:`flows.runtime.configure_prefect` before importing
    this module); never raises for a failed run.

    Returns:
        ``{"state": "completed" | "failed", "error": message or None, **task summaries}``.
    """
    state = materialize_features(params_file, profile, cohort, repo, return_state=True)
    if state.is_completed():
        return {"state": "completed", "error": None, **state.result()}
    exc = state.result(raise_on_failure=False)
    return {"state": "failed", "error": f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException)
            else str(state.message)}


def summary_json(result: Mapping[str, Any]) -> str:
    """The flow result as indented JSON (for logs and the CLI)."""
    return json.dumps(result, indent=2, default=str)
