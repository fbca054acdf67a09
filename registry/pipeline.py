"""The registry as pipeline steps: promote a trained candidate, roll back, report status and the log.

What ``osteo registry promote|rollback|status|log`` and the retrain flow call (through
:mod:`osteo.steps`). The candidate is described by files, never by objects of
``osteo_model`` (no torch here):

* ``finetune.json`` (``osteo train finetune``): ``model_uri`` of the logged pyfunc and the
  MLflow ``run_id`` of the training run, whose tags carry the lineage
  (``data_version``, ``split_hash``, ``params_hash``);
* ``evaluate.json`` (``osteo evaluate``): the candidate it evaluated and the path + SHA-256 of
  the full metrics dict the gates read.

Promotion = read the evaluation (missing or stale -> typed error, never a promotion),
evaluate the gates against it and the champion's registered metrics, register the
candidate as a new version (lineage + gate report as tags) and move the aliases with
:func:`registry.registry.promote` (which re-checks everything inside the registry lock).
A rejected candidate stays registered with its failed gates; ``promotion.json`` records
the outcome. Payloads hold aggregated metrics only, never patient identifiers.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from registry import audit
from registry.config import RegistryConfig
from registry.errors import (AuditLogError, EvaluationMissingError, RegistryError, StaleEvaluationError)
from registry.gates import GateReport, GatesConfig, evaluate_gates, scope_decisions
from registry.registry import (CHAMPION, _client, aliases, approve, champion_metrics, consistency, headline, promote,
                               register_candidate, reject, repair, rollback)

# training-run tags copied onto the registered version beside the required lineage tags
EXTRA_TAGS = ("method", "profile", "git_commit", "git_dirty", "backbone", "pretrain", "loss", "moe")


def default_actor() -> str:
    """Who acts: ``$OSTEO_ACTOR``, else the OS user name, else ``unknown``."""
    actor = os.environ.get("OSTEO_ACTOR", "").strip()
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):                    # no passwd entry (containers)
        return "unknown"


def audit_key(cfg: RegistryConfig) -> bytes:
    """The audit chain's HMAC key of ``cfg`` (``registry.audit_key_env`` / ``audit_key_file`` / demo on SQLite)."""
    return audit.load_audit_key(cfg.audit_key_env, cfg.audit_key_file, cfg.allow_demo_audit_key, cfg.store_uri)[0]


def _store(cfg: RegistryConfig) -> dict[str, Any]:
    """Keyword arguments naming the registry store of ``cfg`` for :mod:`registry.registry`."""
    return {"tracking_uri": cfg.uri, "store_uri": cfg.store_uri, "audit_key": audit_key(cfg),
            "lock_timeout_s": cfg.lock_timeout_s}


def champion_ref(cfg: RegistryConfig) -> tuple[str, str] | None:
    """``(version, "models:/<name>/<version>")`` of the champion, or None (no champion / model not registered)."""
    version = aliases(cfg.model_name, cfg.uri).get(CHAMPION)
    return None if version is None else (version, f"models:/{cfg.model_name}/{version}")


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise EvaluationMissingError(f"{path} not found: {missing}")
    return json.loads(Path(path).read_text())


def read_candidate(finetune_json: Path) -> dict[str, Any]:
    """The candidate record of ``osteo train finetune`` (must name a logged MLflow model)."""
    cand = _read_json(finetune_json, "run `osteo train pretrain` and `osteo train finetune` first")
    if not cand.get("model_uri") or not cand.get("run_id"):
        raise RegistryError(f"{finetune_json} names no MLflow model (trained with --no-tracking?): "
                            "re-run `osteo train finetune` with tracking on to log the candidate")
    return cand


def read_evaluation(evaluate_json: Path, candidate: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(full metrics, evaluate.json record)`` of the candidate's evaluation.

    Raises:
        EvaluationMissingError: ``evaluate.json`` or the metrics file it names is missing.
        StaleEvaluationError: the evaluation is of another candidate, or its metrics file changed.
    """
    record = _read_json(evaluate_json, "run `osteo evaluate` first: no promotion without a complete evaluation")
    evaluated = record.get("candidate") or {}
    for key in ("run_id", "model_uri"):
        if evaluated.get(key) != candidate.get(key):
            raise StaleEvaluationError(f"{evaluate_json} evaluated {key} {evaluated.get(key)!r} but the candidate is "
                                       f"{candidate.get(key)!r}: run `osteo evaluate` on the current candidate")
    full = Path(str(record.get("metrics_file", "")))
    if not full.is_file():
        raise EvaluationMissingError(f"metrics file {full} named by {evaluate_json} not found: run `osteo evaluate`")
    blob = full.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.get("metrics_sha256"):
        raise StaleEvaluationError(f"{full} changed after {evaluate_json} was written (SHA-256 differs): "
                                   "run `osteo evaluate` again")
    return json.loads(blob), record


def lineage_tags(cfg: RegistryConfig, run_id: str) -> dict[str, str]:
    """The training run's lineage tags (required + :data:`EXTRA_TAGS` present) and ``training_run_id``."""
    tags = _client(cfg.uri).get_run(run_id).data.tags
    keys = [*cfg.required_tags, *(k for k in EXTRA_TAGS if k not in cfg.required_tags)]
    return {**{k: str(tags[k]) for k in keys if k in tags}, "training_run_id": run_id}


def _failed(report: GateReport) -> list[dict[str, Any]]:
    """Failed checks, and checks without enough evidence when those block (``min_evidence.action: block``)."""
    blocking = report.failures + (report.insufficient if report.evidence_blocks else ())
    return [{"gate": c.gate, "kind": c.kind, "scope": c.scope, "level": c.level, "metric": c.metric,
             "value": c.value, "bound": list(c.bound) if isinstance(c.bound, tuple) else c.bound, "note": c.note,
             "status": c.status} for c in blocking]


def _write(out: Path | None, record: Mapping[str, Any]) -> None:
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(audit._strict(record), indent=2, sort_keys=True, allow_nan=False) + "\n")


def promote_candidate(cfg: RegistryConfig, gates: GatesConfig, finetune_json: Path, evaluate_json: Path,
                      out: Path | None = None, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Gate, register and (if every gate passes) promote the candidate of ``finetune_json``.

    Args:
        cfg: registry configuration (model name, URI, lock timeout, required tags).
        gates: the promotion gates.
        finetune_json: the candidate record of ``osteo train finetune``.
        evaluate_json: the record of ``osteo evaluate`` for that candidate.
        out: where to write the outcome (``promotion.json``); None writes nothing.
        actor: who promotes (default :func:`default_actor`).
        reason: why (recorded in the audit log).

    Returns:
        ``{"state": "promoted" | "rejected", "version", "model_name", "failed_gates": [{gate, kind, scope, level,
        metric, value, bound, note}], "reasons", "aliases", "champion", "previous_champion", "actor", "reason",
        "event_seq", "gates_passed", "compared_with_champion", "evaluated_against_champion"}``.

    Raises:
        EvaluationMissingError / StaleEvaluationError: no complete evaluation of this candidate.
        CandidateTagsError: the training run lacks a lineage tag.
    """
    candidate = read_candidate(finetune_json)
    metrics, record = read_evaluation(evaluate_json, candidate)
    actor = actor or default_actor()
    reason = reason or f"osteo registry promote: {candidate.get('method', 'candidate')} run {candidate['run_id']}"
    store = _store(cfg)
    champ_version, champ_metrics = champion_metrics(cfg.model_name, cfg.uri, cfg.store_uri)
    report = evaluate_gates(metrics, champ_metrics, gates, champ_version)
    tags = {**lineage_tags(cfg, candidate["run_id"]), "evaluation_sha256": str(record["metrics_sha256"])}
    version = register_candidate(candidate["model_uri"], cfg.model_name, tags, metrics, report, actor=actor,
                                 required_tags=cfg.required_tags, approval=cfg.approval, **store)
    outcome = promote(cfg.model_name, version, report, actor, reason, gates=gates, approval=cfg.approval, **store)
    state = "promoted" if outcome.promoted else "awaiting_approval" if outcome.awaiting_approval else "rejected"
    result = {"state": state, "model_name": cfg.model_name,
              "version": version, "failed_gates": _failed(report), "reasons": list(outcome.reasons),
              "aliases": aliases(cfg.model_name, cfg.uri), "champion": outcome.champion,
              "previous_champion": outcome.previous_champion, "actor": actor, "reason": reason,
              "event_seq": outcome.event_seq, "gates_passed": report.passed,
              "gate_scopes": scope_decisions(report, metrics),
              "gates_config_digest": report.config_digest,
              "compared_with_champion": report.champion_version,
              "evaluated_against_champion": record.get("champion_version"),
              "training_run_id": candidate["run_id"], "evaluation_sha256": record["metrics_sha256"]}
    _write(out, result)
    return result


def rollback_champion(cfg: RegistryConfig, reason: str, actor: str | None = None) -> dict[str, Any]:
    """``previous-champion`` becomes the champion again (:func:`registry.registry.rollback`).

    Returns:
        ``{"state": "rolled_back", "model_name", "champion", "rolled_back_version", "aliases", "actor",
        "reason", "event_seq"}``.

    Raises:
        NoPreviousChampionError: nothing to roll back to.
    """
    actor = actor or default_actor()
    outcome = rollback(cfg.model_name, actor, reason, **_store(cfg))
    event = next(e for e in audit.read_log(cfg.store_uri, cfg.model_name) if e.seq == outcome.event_seq)
    return {"state": "rolled_back", "model_name": cfg.model_name, "champion": outcome.version,
            "rolled_back_version": event.payload.get("rolled_back_version"),
            "aliases": aliases(cfg.model_name, cfg.uri), "actor": actor, "reason": reason,
            "event_seq": outcome.event_seq}


def _truncation(cfg: RegistryConfig, raw: list[audit.AuditEvent]) -> str | None:
    """The second witness: removing the newest rows leaves a valid shorter chain, but each completed
    event is also a version tag ``osteo.event.<seq>`` in MLflow; a tag beyond the log's end = rows removed."""
    tagged = [int(k.rsplit(".", 1)[-1]) for mv in _client(cfg.uri).search_model_versions(f"name = '{cfg.model_name}'")
              for k in mv.tags if k.startswith("osteo.event.") and k.rsplit(".", 1)[-1].isdigit()]
    last = max((e.seq for e in raw), default=0)
    if tagged and max(tagged) > last:
        return (f"{audit.TABLE} ends at seq={last} but MLflow version tags record event seq={max(tagged)}: the newest "
                "rows were removed; investigate and restore the registry store from backup")
    return None


def audit_log(cfg: RegistryConfig) -> dict[str, Any]:
    """The promotion log of ``cfg.model_name``, the keyed hash-chain check of the whole table and the
    cross-check against the MLflow version tags (:func:`_truncation`: the newest rows removed).

    Completed ``intent`` rows are left out of ``events`` (bookkeeping); pending ones are shown.

    Returns:
        ``{"events": [summary...], "text": formatted table, "chain_ok": bool, "n_verified": int,
        "chain_error": str | None, "pending_intents": [seq...]}``.
    """
    raw = audit.read_log(cfg.store_uri, cfg.model_name)
    pending = audit.pending_intents(raw)
    events = [e for e in raw if e.event != "intent" or e in pending]          # completed intents: bookkeeping
    try:
        n, error = audit.verify_chain(cfg.store_uri, key=audit_key(cfg)), None
    except AuditLogError as exc:
        n, error = 0, str(exc)
    if error is None:
        error = _truncation(cfg, raw)
    return {"events": [e.summary() for e in events], "text": audit.format_log(events), "chain_ok": error is None,
            "n_verified": n, "chain_error": error,
            "pending_intents": [e.seq for e in pending]}


def _outcome(cfg: RegistryConfig, outcome: Any, actor: str, reason: str, state: str) -> dict[str, Any]:
    return {"state": state, "model_name": cfg.model_name, "version": outcome.version,
            "champion": outcome.champion, "previous_champion": outcome.previous_champion,
            "reasons": list(outcome.reasons), "aliases": aliases(cfg.model_name, cfg.uri), "actor": actor,
            "reason": reason, "event_seq": outcome.event_seq}


def approve_version(cfg: RegistryConfig, gates: GatesConfig, version: str, reason: str,
                    approver: str | None = None) -> dict[str, Any]:
    """A named approver moves ``champion`` to ``version`` (:func:`registry.registry.approve`).

    Returns:
        ``{"state": "promoted" | "refused", "version", "champion", "previous_champion", "reasons", "aliases",
        "actor", "reason", "event_seq"}``.

    Raises:
        ApprovalError: no named approver, or ``version`` is not awaiting approval.
    """
    approver = approver or os.environ.get("OSTEO_ACTOR", "").strip()
    outcome = approve(cfg.model_name, version, approver, reason, gates=gates, **_store(cfg))
    return _outcome(cfg, outcome, approver, reason, "promoted" if outcome.promoted else "refused")


def reject_version(cfg: RegistryConfig, version: str, reason: str, approver: str | None = None) -> dict[str, Any]:
    """A named approver turns down ``version`` (:func:`registry.registry.reject`)."""
    approver = approver or os.environ.get("OSTEO_ACTOR", "").strip()
    outcome = reject(cfg.model_name, version, approver, reason, **_store(cfg))
    return _outcome(cfg, outcome, approver, reason, "rejected")


def repair_registry(cfg: RegistryConfig, roll_back: bool = False, actor: str | None = None) -> dict[str, Any]:
    """Finish (or undo) operations cut short by a crash (:func:`registry.registry.repair`).

    Returns:
        ``{"repaired": [event summary...], "aliases", "problems": [...]}`` (``problems`` empty = consistent).
    """
    events = repair(cfg.model_name, actor or default_actor(), roll_back=roll_back, **_store(cfg))
    return {"repaired": [e.summary() for e in events], "aliases": aliases(cfg.model_name, cfg.uri),
            "problems": consistency(cfg.model_name, tracking_uri=cfg.uri, store_uri=cfg.store_uri)}


def registry_status(cfg: RegistryConfig) -> dict[str, Any]:
    """Versions (status, aliases, lineage, gate outcome), aliases and the champion's headline metrics.

    Returns:
        ``{"model_name", "registered": bool, "aliases": {alias: version}, "versions": [{version, status,
        aliases, data_version, training_run_id, gates_passed, created}], "champion", "champion_headline"}``.
    """
    from datetime import datetime, timezone

    current = aliases(cfg.model_name, cfg.uri)
    client = _client(cfg.uri)
    found = client.search_model_versions(f"name = '{cfg.model_name}'")
    by_version: dict[str, list[str]] = {}
    for alias, v in current.items():
        by_version.setdefault(v, []).append(alias)
    versions = [{"version": str(mv.version), "status": mv.tags.get("osteo.status", "-"),
                 "aliases": sorted(by_version.get(str(mv.version), [])), "data_version": mv.tags.get("data_version"),
                 "training_run_id": mv.tags.get("training_run_id", mv.run_id),
                 "gates_passed": mv.tags.get("osteo.gates.passed"),
                 "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(
                     timespec="seconds")}
                for mv in sorted(found, key=lambda m: int(m.version))]
    champion, metrics = (champion_metrics(cfg.model_name, cfg.uri, cfg.store_uri) if current.get(CHAMPION)
                         else (None, None))
    return {"model_name": cfg.model_name, "registered": bool(versions), "aliases": current, "versions": versions,
            "champion": champion, "champion_headline": None if metrics is None else headline(metrics)}
