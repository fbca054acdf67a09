"""Prefect flow ``retrain``: features → pretrain → finetune → evaluate → gates → register/promote.

The MLOps loop as one flow run. Each task calls one function of :mod:`osteo.steps`
(the entry points of the CLI and the DVC stages); the feature part is the
``materialize_features`` flow itself, run as a subflow, so nothing is
re-implemented here.

- Caching: ``pretrain`` and ``finetune`` are keyed by the params sections they
  read and the fingerprint of their inputs (training table, texture index,
  splits, and for fine-tuning the encoder), with results persisted; a re-run
  with unchanged data and params reuses them (a task whose output folder is
  gone runs again). ``evaluate`` and ``promote`` always run: they depend on the
  registry's current champion, which changes between runs.
- Retries: transient failures only (I/O, connections), as in the features flow.
- Final state: ``Promoted`` or ``Rejected`` (both Completed: the flow did its
  job; the rejection message lists every failed gate with its numbers), or
  ``Failed`` (a step raised: bad data stopped by validation, a training error).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.materialize import cache_key, section_digest, transient, fingerprint, materialize_features
from osteo import steps


class RetrainFailed(RuntimeError):
    """A sub-step of the retrain flow ended in a failed state (its message says which)."""


def _file_fp(*paths: Path) -> str:
    """Content hash of the given files (missing files hash as 'missing')."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"missing")
    return h.hexdigest()[:24]


def training_inputs_fp(params: Mapping[str, Any]) -> str:
    """Fingerprint of what training reads: training table, texture index and split table."""
    interim = steps.path(params, "interim")
    split_file = (params.get("splits") or {}).get("file", "splits/splits.parquet")
    return _file_fp(steps.training_table_path(params), steps.texture_dir(params) / "texture.parquet",
                    interim / split_file)


def build_tasks(retries: int, delay: float) -> dict[str, Any]:
    """The flow's tasks (retry policy from the ``flows:`` section)."""
    cached = dict(retries=retries, retry_delay_seconds=delay, retry_condition_fn=transient,
                  cache_key_fn=cache_key, persist_result=True)

    @task(name="pretrain", **cached)
    def pretrain(params: dict, params_digest: str, input_fp: str) -> dict:
        return steps.train_pretrain(params)

    @task(name="finetune", **cached)
    def finetune(params: dict, params_digest: str, input_fp: str) -> dict:
        return steps.train_finetune(params)

    @task(name="evaluate", cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=delay,
          retry_condition_fn=transient)
    def evaluate(params: dict) -> dict:
        return steps.evaluate(params)

    @task(name="gate_and_promote", cache_policy=NO_CACHE, retries=0)
    def promote(params: dict, actor: str | None, reason: str | None) -> dict:
        return steps.promote(params, actor=actor, reason=reason)

    return dict(pretrain=pretrain, finetune=finetune, evaluate=evaluate, promote=promote)


def _summary(outcome: Mapping[str, Any]) -> str:
    if outcome.get("state") == "promoted":
        return f"version {outcome.get('version')} promoted to champion"
    gates = outcome.get("failed_gates") or []
    listed = [g if isinstance(g, str) else
              f"{g.get('gate')} {g.get('scope')}/{g.get('level')} {g.get('metric')} = {g.get('value')} (bound {g.get('bound')})"
              for g in gates]
    why = "; ".join(listed or [str(r) for r in outcome.get("reasons") or []])
    return f"version {outcome.get('version')} rejected: {len(gates)} failed gate(s): {why}"


@flow(name="retrain", log_prints=False, validate_parameters=False)
def retrain(params: dict, materialize: bool = True, actor: str | None = None, reason: str | None = None):
    """features (subflow) → pretrain → finetune → evaluate → gates → register/promote.

    Args:
        params: merged params.yaml.
        materialize: run the ``materialize_features`` subflow first (False: train on the tables on disk).
        actor, reason: recorded in the promotion log (default: $OSTEO_ACTOR / OS user; "scheduled retrain").

    Returns:
        A ``Completed`` state named ``Promoted`` or ``Rejected`` whose data is the run summary.
    """
    fcfg = params.get("flows", {}) or {}
    t = build_tasks(int(fcfg.get("retries", 2)), float(fcfg.get("retry_delay_s", 5)))
    out: dict[str, Any] = {}
    if materialize:
        feat = materialize_features(params, return_state=True)
        if not feat.is_completed():
            exc = feat.result(raise_on_failure=False)
            raise RetrainFailed(f"materialize_features failed: {exc}")
        out["features"] = {k: v for k, v in feat.result().items() if k in ("training_table", "training_validation")}
    models = steps.models_dir(params)
    data_fp = training_inputs_fp(params)

    def run(name: str, output: Path, input_fp: str, *sections: str) -> dict:
        fn = t[name] if output.exists() else t[name].with_options(refresh_cache=True)
        return fn(params, section_digest(params, *sections), input_fp)

    out["pretrain"] = run("pretrain", models / "pretrain" / "pretrain.json", data_fp, "model", "train")
    encoder_fp = _file_fp(models / "pretrain" / "pretrain.json",
                          *([Path(out["pretrain"]["encoder"])] if out["pretrain"].get("encoder") else []))
    out["finetune"] = run("finetune", models / "finetune" / "finetune.json", data_fp + encoder_fp,
                          "model", "train", "evaluate")
    out["evaluate"] = t["evaluate"](params)
    outcome = t["promote"](params, actor, reason or "scheduled retrain")
    out["promotion"] = outcome
    name = "Promoted" if outcome.get("state") == "promoted" else "Rejected"
    return Completed(name=name, message=_summary(outcome), data=out)


def run_retrain_flow(params: Mapping[str, Any], materialize: bool = True, actor: str | None = None,
                     reason: str | None = None) -> dict[str, Any]:
    """Run ``retrain`` (call :func:`flows.runtime.configure_prefect` before importing this module); never raises.

    Returns:
        ``{"state": "promoted" | "rejected" | "failed", "message": ..., **task summaries}``.
    """
    state = retrain(dict(params), materialize, actor, reason, return_state=True)
    if state.is_completed():
        return {"state": state.name.lower(), "message": state.message, **(state.result() or {})}
    exc = state.result(raise_on_failure=False)
    message = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)
    return {"state": "failed", "message": message}


# --------------------------------------------------------------------------- scheduled deployment

@flow(name="retrain-scheduled", log_prints=False)
def retrain_scheduled(profile: str = "demo", params_file: str = "params.yaml") -> dict[str, Any]:
    """Deployment entry point: load params at run time (so a params.yaml change is picked up), then retrain."""
    from osteo_config.params import load_params

    result = run_retrain_flow(load_params(Path(params_file), profile), actor="prefect-schedule")
    if result["state"] == "failed":
        raise RetrainFailed(result["message"])
    return result


def deployment(params: Mapping[str, Any], params_file: str = "params.yaml"):
    """The ``retrain`` deployment for ``flow.serve`` / ``prefect.serve``: cron and name from ``flows.retrain``."""
    cfg = (params.get("flows") or {}).get("retrain") or {}
    cron = cfg.get("cron")
    if not cron:
        raise ValueError("flows.retrain.cron is empty: set a cron expression (e.g. '0 2 * * 0') in params.yaml")
    profile = str(params.get("profile", "demo"))
    return retrain_scheduled.to_deployment(
        name=f"{cfg.get('deployment_name', 'retrain')}-{profile}", cron=cron,
        parameters={"profile": profile, "params_file": str(params_file)},
        tags=["osteo", f"profile:{profile}"], description="Scheduled retraining: features, train, evaluate, gate, promote.")
