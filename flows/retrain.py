"""Prefect flow ``retrain``: features → pretrain → finetune → evaluate → promote, as DVC stages.

The MLOps loop as one flow run. The feature part is the ``materialize_features``
flow itself, run as a subflow; then one task per DVC stage (``pretrain``,
``finetune``, ``evaluate``, ``promote``), each ``dvc repro --single-item``
(:mod:`flows.stages`), so DVC decides what is stale: unchanged data, code and
params reuse the trained model; a change in the gates (``registry`` params)
re-runs only ``promote``. The champion is registry state, not a file: after a
promotion elsewhere, ``dvc repro -f evaluate`` re-compares (see dvc.yaml).

- Retries: transient failures only, as in the features flow.
- Final state: ``Promoted``, ``AwaitingApproval`` (``registry.approval: required``: a cron job
  never moves ``champion`` without a named approver) or ``Rejected`` (all Completed: the flow did its
  job; the rejection message lists every failed gate with its numbers, read
  from ``metrics/promotion.json``), or ``Failed`` (a stage failed: bad data
  stopped by validation, a training error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from prefect import flow
from prefect.states import Completed

from flows.materialize import FlowSettings, materialize_features, read_json, run_stages
from flows.stages import MODEL_STAGES


class RetrainFailed(RuntimeError):
    """A sub-step of the retrain flow ended in a failed state (its message says which)."""


def outcome_message(outcome: Mapping[str, Any]) -> str:
    """One line from ``promotion.json``: promoted, or rejected with every failed gate and its numbers."""
    if outcome.get("state") == "promoted":
        return f"version {outcome.get('version')} promoted to champion"
    if outcome.get("state") == "awaiting_approval":                     # registry.approval: required
        return (f"version {outcome.get('version')} passed the gates, awaiting approval: "
                f"`osteo registry approve {outcome.get('version')} --reason TEXT --approver NAME`")
    gates = outcome.get("failed_gates") or []
    listed = [g if isinstance(g, str) else
              f"{g.get('gate')} {g.get('scope')}/{g.get('level')} {g.get('metric')} = {g.get('value')} (bound {g.get('bound')})"
              for g in gates]
    why = "; ".join(listed or [str(r) for r in outcome.get("reasons") or []])
    return f"version {outcome.get('version')} rejected: {len(gates)} failed gate(s): {why}"


def model_summaries(s: FlowSettings) -> dict[str, Any]:
    """The model stages' records (``finetune.json``, ``evaluate.json``, ``promotion.json``)."""
    files = {"pretrain": s.file("models", "pretrain", "pretrain.json"),
             "finetune": s.file("models", "finetune", "finetune.json"),
             "evaluate": s.file("metrics", "evaluate.json"),
             "promotion": s.file("metrics", "promotion.json")}
    return {k: v for k, v in ((k, read_json(p)) for k, p in files.items()) if v is not None}


@flow(name="retrain", log_prints=False, validate_parameters=False)
def retrain(params_file: str = "params.yaml", profile: str | None = None, materialize: bool = True,
            cohort: bool = False, repo: str = ".", actor: str | None = None, reason: str | None = None):
    """features (subflow) → pretrain → finetune → evaluate → promote.

    Args:
        params_file: the repository's params.yaml (DVC reads no other).
        profile: requested profile; must equal params.yaml's ``profile:`` (None: take it).
        materialize: run the ``materialize_features`` subflow first (False: train on the tables on disk).
        cohort: with ``materialize``, run the ``cohort`` stage first (the synthetic export).
        repo: the DVC repository root.
        actor, reason: recorded in the promotion log when ``promote`` runs (``$OSTEO_ACTOR`` / ``$OSTEO_REASON``
            of the stage command; default: the OS user, "dvc repro").

    Returns:
        A ``Completed`` state named ``Promoted`` or ``Rejected`` whose data is the run summary.
    """
    s = FlowSettings.load(repo, params_file, profile)
    out: dict[str, Any] = {}
    if materialize:
        feat = materialize_features(params_file, profile, cohort, repo, return_state=True)
        if not feat.is_completed():
            exc = feat.result(raise_on_failure=False)
            raise RetrainFailed(f"materialize_features failed: {type(exc).__name__}: {exc}")
        out["features"] = feat.result()
    who = {k: v for k, v in (("OSTEO_ACTOR", actor), ("OSTEO_REASON", reason)) if v}
    out["stages"] = run_stages(MODEL_STAGES, s, who)
    out.update(model_summaries(s))
    outcome = out.get("promotion")
    if outcome is None:
        raise RetrainFailed(f"the promote stage wrote no {s.file('metrics', 'promotion.json')}")
    name = {"promoted": "Promoted", "awaiting_approval": "AwaitingApproval"}.get(outcome.get("state"), "Rejected")
    message = outcome_message(outcome)
    if not out["stages"]["promote"]["ran"]:
        message += " (recorded earlier: nothing changed since, DVC skipped the stages)"
    return Completed(name=name, message=message, data=out)


def run_retrain_flow(params_file: str = "params.yaml", profile: str | None = None, materialize: bool = True,
                     cohort: bool = False, repo: str = ".", actor: str | None = None, reason: str | None = None
                     ) -> dict[str, Any]:
    """Run ``retrain`` (call :func:`flows.runtime.configure_prefect` before importing this module); never raises.

    Returns:
        ``{"state": "promoted" | "rejected" | "failed", "message": ..., **task summaries}``.
    """
    state = retrain(params_file, profile, materialize, cohort, repo, actor, reason, return_state=True)
    if state.is_completed():
        return {"state": state.name.lower(), "message": state.message, **(state.result() or {})}
    exc = state.result(raise_on_failure=False)
    message = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message)
    return {"state": "failed", "message": message}


# --------------------------------------------------------------------------- scheduled deployment

@flow(name="retrain-scheduled", log_prints=False)
def retrain_scheduled(profile: str = "demo", params_file: str = "params.yaml", repo: str = ".") -> dict[str, Any]:
    """Deployment entry point: the retrain flow on the repository as it is at run time (DVC re-runs what changed)."""
    result = run_retrain_flow(params_file, profile, materialize=True, repo=repo, actor="prefect-schedule",
                              reason="scheduled retrain")
    if result["state"] == "failed":
        raise RetrainFailed(result["message"])
    return result


def deployment(flows_cfg: Mapping[str, Any], profile: str, params_file: str = "params.yaml", repo: str = "."):
    """The ``retrain`` deployment for ``prefect.serve``: cron and name from ``flows.retrain``; one run at a time.

    ``concurrency_limit=1``: a cron run never overlaps a manual or a late run (both would write the same
    DVC outputs and registry); a run that finds the slot taken waits (Prefect's default collision strategy).
    """
    cfg = (flows_cfg or {}).get("retrain") or {}
    cron = cfg.get("cron")
    if not cron:
        raise ValueError("flows.retrain.cron is empty: set a cron expression (e.g. '0 2 * * 0') in params.yaml")
    return retrain_scheduled.to_deployment(
        name=f"{cfg.get('deployment_name', 'retrain')}-{profile}", cron=cron, concurrency_limit=1,
        parameters={"profile": profile, "params_file": str(params_file), "repo": str(Path(repo).resolve())},
        tags=["osteo", f"profile:{profile}"], description="Scheduled retraining: features, train, evaluate, gate, promote.")
