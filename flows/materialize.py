"""Prefect flow ``materialize_features``: ingest → texture → validate → splits → materialize → training table.

Each task calls one function of :mod:`osteo.steps` (the same entry points as
the CLI and the DVC stages) and returns a small JSON-able summary. The flow
composes; it never re-implements a step.

- Retries: only transient failures (I/O, connections) are retried; a data error
  (typed ingestion/texture error, failed validation) fails at once.
- Result persistence + caching: a task's cache key is its name, the hash of the
  params sections it reads and the fingerprint of its input folder, so a re-run
  after a crash skips the tasks that completed and whose outputs are still on
  disk (a task whose output folder is gone is re-run). The steps themselves are
  idempotent, so a re-run never duplicates or loses rows.
- Validation failure stops the flow with a Failed state naming the failed
  expectations (counts only: no identifying values).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from osteo import steps
from osteo_config.params import params_hash

TRANSIENT = (OSError, TimeoutError, ConnectionError)


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {k: v for k, v in dataclasses.asdict(obj).items() if not k.startswith("samples")}
    return dict(obj)


def fingerprint(folder: Path, patterns: tuple[str, ...] = ("*.csv", "*.parquet", "*.json")) -> str:
    """Content hash of a stage folder's tables (top level) plus the names and sizes of all its files.

    Tables are small and hashed in full; bulk arrays (ROIs, pools, CT files) are
    content-addressed or listed by name and size, which is enough to notice a change.
    """
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:24]


def cache_key(context: TaskRunContext, arguments: dict[str, Any]) -> str:
    """Task name + hash of the params sections it reads + fingerprint of its input folder."""
    parts = [context.task.name, arguments["params_digest"], arguments["input_fp"]]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def transient(task_, task_run, state) -> bool:
    """Retry only failures that may pass on their own (I/O, connections)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, TRANSIENT)


def _task(name: str, retries: int, delay: float):
    return task(name=name, retries=retries, retry_delay_seconds=delay, retry_condition_fn=transient,
                cache_key_fn=cache_key, persist_result=True)


def section_digest(params: Mapping[str, Any], *sections: str) -> str:
    return params_hash(params, ("profile", "paths", *sections))


def build_tasks(retries: int, delay: float) -> dict[str, Any]:
    """The flow's tasks, with the retry policy from params (``flows:`` section)."""

    @_task("ingest", retries, delay)
    def ingest(params: dict, params_digest: str, input_fp: str) -> dict:
        return _as_dict(steps.ingest(params, progress=False))

    @_task("texture", retries, delay)
    def texture(params: dict, params_digest: str, input_fp: str) -> dict:
        return _as_dict(steps.texture(params, progress=False))

    @task(name="validate", cache_policy=NO_CACHE, retries=0)
    def validate(params: dict, training: bool) -> dict:
        from data_checks import format_report, gate

        report = steps.validate(params, training=training)
        gate(report)  # raises ValidationFailedError: the flow run fails here, with the summary
        return {"suites": {s.suite: {"evaluated": s.evaluated, "failed": s.failed, "rows": s.rows}
                           for s in report.suites}, "summary": format_report(report).splitlines()[0]}

    @_task("splits", retries, delay)
    def splits(params: dict, params_digest: str, input_fp: str) -> dict:
        return _as_dict(steps.splits(params))

    @_task("materialize", retries, delay)
    def materialize(params: dict, params_digest: str, input_fp: str) -> dict:
        return _as_dict(steps.materialize(params))

    @task(name="training_table", cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=delay,
          retry_condition_fn=transient)
    def training_table(params: dict) -> dict:
        return _as_dict(steps.training_table(params))

    @task(name="online_latency", cache_policy=NO_CACHE)
    def latency(params: dict) -> dict:
        lat = steps.latency(params)
        return {"backend": lat.backend, "n": lat.n, "p50_ms": round(lat.p50_ms, 3), "p99_ms": round(lat.p99_ms, 3)}

    return dict(ingest=ingest, texture=texture, validate=validate, splits=splits, materialize=materialize,
                training_table=training_table, latency=latency)


@flow(name="materialize_features", log_prints=False, validate_parameters=False)
def materialize_features(params: dict) -> dict:
    """ingest → texture → validate (stage tables) → splits → materialize → training table → validate it."""
    fcfg = params.get("flows", {})
    t = build_tasks(int(fcfg.get("retries", 2)), float(fcfg.get("retry_delay_s", 5)))
    raw, ing, tex = steps.path(params, "raw"), steps.ingest_dir(params), steps.texture_dir(params)
    out: dict[str, Any] = {}

    def run(name: str, input_fp: str, output: Path, *sections: str) -> dict:
        # a completed task is skipped on re-run, unless its output folder has gone
        fn = t[name] if output.exists() else t[name].with_options(refresh_cache=True)
        return fn(params, section_digest(params, *sections), input_fp)

    out["ingest"] = run("ingest", fingerprint(raw), ing, "ingest")
    out["texture"] = run("texture", fingerprint(ing), tex, "texture")
    out["validation"] = t["validate"](params, False)
    out["splits"] = run("splits", fingerprint(ing), steps.path(params, "interim") / "splits", "splits")
    repo = Path(params["features_store"]["repo_dir"])
    out["materialize"] = run("materialize", fingerprint(ing) + fingerprint(tex), repo, "features_store", "ingest")
    out["training_table"] = t["training_table"](params)
    out["training_validation"] = t["validate"](params, True)
    out["latency"] = t["latency"](params)
    return out


def run_materialize_flow(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``materialize_features`` (call :func:`flows.runtime.configure_prefect` before importing
    this module); never raises for a failed run.

    Returns:
        ``{"state": "completed" | "failed", "error": message or None, **task summaries}``.
    """
    state = materialize_features(dict(params), return_state=True)
    if state.is_completed():
        return {"state": "completed", "error": None, **state.result()}
    exc = state.result(raise_on_failure=False)
    return {"state": "failed", "error": f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)}


def summary_json(result: Mapping[str, Any]) -> str:
    """The flow result as indented JSON (for logs and the CLI)."""
    return json.dumps(result, indent=2, default=str)
