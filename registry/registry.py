"""MLflow model-registry operations: register, promote through the gates, approve, roll back, repair.

Aliases replace MLflow stages:

* ``challenger``: the latest registered candidate, under review (or awaiting approval);
* ``champion``: the version serving; moves only when every gate passes (and, with
  ``registry.approval: required``, only when a named person approves);
* ``previous-champion``: the champion before the last promotion (rollback target).

The tracking URI may be a database or an MLflow tracking server (``http(s)://``); the
lock, the keyed audit log and the intents live in the registry store (``store_uri``:
``registry.lock_uri``, else the tracking database; see :mod:`registry.audit`).

Every operation runs under :func:`registry.lock.registry_lock` and re-reads the
aliases inside it, so two promotions racing leave one consistent champion and one
linear log. **Crash consistency**: a change of aliases and tags is planned as a list
of idempotent operations (and their undo), written to the audit log as an ``intent``
row *before* the first alias moves; the operations run; the completing event
(``register`` / ``promote`` / ``refuse`` / ``await_approval`` / ``approve`` / ``reject`` /
``rollback``) carries ``intent_seq``. A crash in between leaves an intent without its
completion: every later operation refuses (:class:`PendingIntentError`) until
:func:`repair` (``osteo registry repair``) replays the operations (or, with
``roll_back``, their undo) and appends the completion (or ``abort``). Each event is also
a version tag ``osteo.event.<seq>``. A version's artifacts are locked: their SHA-256
digest is recorded at registration (``osteo.artifact_sha256``) and re-checked before
promotion, approval and rollback.

The promotion decision itself is the pure :func:`decide_promotion`.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from registry import audit
from registry.errors import (ApprovalError, ArtifactDigestError, CandidateTagsError, NoPreviousChampionError,
                             PendingIntentError, RegistryError)
from registry.gates import GateReport, GatesConfig, scope_decisions
from registry.model_card import model_description, version_description
from registry.lock import registry_lock

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
STATUS_TAG, DIGEST_TAG = "osteo.status", "osteo.artifact_sha256"
APPROVAL_MODES = ("none", "required")
# MLflow bookkeeping written into the model folder at registration; not part of the model
DIGEST_EXCLUDE = frozenset({"registered_model_meta"})
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"      # params.yaml tracking.uri (local profile)
MAX_TAG = 8000                                    # MLflow's tag value limit (characters)
HEADLINE = ("acc", "sen", "spe", "f1", "auroc")


def artifact_digest(directory: str | Path) -> str:
    """SHA-256 over every file of a model folder: sorted relative paths, each with its content hash."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in DIGEST_EXCLUDE:
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Compact ``{scope: {level: {metric: value}}}`` of the headline metrics (fits a tag)."""
    out: dict[str, Any] = {}
    for scope, block in metrics.items():
        if isinstance(block, Mapping) and {"vertebra", "patient"} & set(block):
            out[scope] = {lvl: {k: block[lvl].get(k) for k in HEADLINE} for lvl in ("vertebra", "patient")
                          if isinstance(block.get(lvl), Mapping)}
    return out


def _tag_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 40] + "...(truncated; see the audit log)"


def _json_or_none(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:                            # a truncated tag; the full value is in the audit log
        return None


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def aliases(name: str, tracking_uri: str = DEFAULT_TRACKING_URI) -> dict[str, str]:
    """Alias -> version of a registered model (empty when it has none or is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {k: str(v) for k, v in model.aliases.items()}


def _version_digest(tracking_uri: str, name: str, version: str) -> str:
    from mlflow.artifacts import download_artifacts

    # the version's own artifact location: MLflow resolves a models:/ URI through the process-global
    # registry URI, which is not this registry's in a fresh `osteo registry ...` process
    source = _client(tracking_uri).get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="osteo-digest-") as tmp:
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        return artifact_digest(local)


def _source(client: Any, model_uri: str) -> tuple[str, str | None, str | None]:
    """(source, run_id, model_id) for ``create_model_version`` from a logged-model or run URI.

    A logged model is registered from its artifact location (not ``models:/m-...``): MLflow's SQL
    registry store resolves a ``models:/`` source through the process-global tracking URI, which
    is not the registry's in a fresh ``osteo registry promote`` process.
    """
    if model_uri.startswith("models:/m-"):
        model_id = model_uri[len("models:/"):].split("/")[0]
        logged = client.get_logged_model(model_id)
        return logged.artifact_location, logged.source_run_id, model_id
    if model_uri.startswith("runs:/"):
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        return RunsArtifactRepository.get_underlying_uri(model_uri), model_uri[len("runs:/"):].split("/")[0], None
    return model_uri, None, None


# --------------------------------------------------------------------------- planned, idempotent changes
# An operation is a JSON list: ["alias", alias, version] | ["unalias", alias] | ["tag", version, key, value]
# | ["untag", version, key]; all on one registered model. Replaying one twice is harmless.

def _apply(client: Any, name: str, ops: Sequence[Sequence[Any]]) -> None:
    from mlflow.exceptions import MlflowException

    for op in ops:
        kind = op[0]
        if kind == "alias":
            client.set_registered_model_alias(name, op[1], op[2])
        elif kind == "tag":
            client.set_model_version_tag(name, op[1], op[2], op[3])
        else:
            try:
                if kind == "unalias":
                    client.delete_registered_model_alias(name, op[1])
                elif kind == "untag":
                    client.delete_model_version_tag(name, op[1], op[2])
                else:
                    raise RegistryError(f"unknown registry operation {op!r} in an intent: the audit log was written "
                                        "by a newer version of the platform; repair with that version")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":      # already gone: the replay's aim
                    raise


def _undo(client: Any, name: str, ops: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The operations that restore today's aliases and tags touched by ``ops`` (in reverse order)."""
    current = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    tags: dict[str, dict[str, str]] = {}
    undo: list[list[Any]] = []
    for op in ops:
        if op[0] in ("alias", "unalias"):
            was = current.get(op[1])
            undo.append(["unalias", op[1]] if was is None else ["alias", op[1], was])
        else:
            version = str(op[1])
            if version not in tags:
                tags[version] = dict(client.get_model_version(name, version).tags)
            was = tags[version].get(op[2])
            undo.append(["untag", version, op[2]] if was is None else ["tag", version, op[2], was])
    return undo[::-1]


@dataclass(frozen=True)
class Store:
    """Where a registry operation reads and writes: tracking/registry URI, registry store, audit key."""

    tracking_uri: str
    store_uri: str
    key: bytes

    @classmethod
    def of(cls, tracking_uri: str, store_uri: str | None, key: bytes | None) -> "Store":
        store = store_uri or tracking_uri
        if not store.startswith(("sqlite:///", "postgresql")):
            raise RegistryError(f"tracking URI {tracking_uri!r} is not a database: pass store_uri "
                                "(registry.lock_uri) for the lock and the audit log")
        return cls(tracking_uri, store, audit.default_key(store, key))


def _data_version(client: Any, name: str, version: str | None) -> str | None:
    return None if version is None else client.get_model_version(name, version).tags.get("data_version")


def _tag_event(client: Any, name: str, e: audit.AuditEvent) -> None:
    if e.version is not None:
        client.set_model_version_tag(name, e.version, f"osteo.event.{e.seq:06d}", _tag_json(e.summary()))


def _commit(store: Store, client: Any, event: str, name: str, version: str | None, actor: str, reason: str,
            before: str | None, after: str | None, ops: Sequence[Sequence[Any]],
            payload: Mapping[str, Any]) -> audit.AuditEvent:
    """Intent (durable) -> operations -> completing event. The caller holds the registry lock."""
    ops = [list(op) for op in ops]
    data_version = _data_version(client, name, version)
    intent = audit.append(store.store_uri, "intent", name, version, actor, f"{event}: {reason}", before, after,
                          data_version, {"event": event, "ops": ops, "undo": _undo(client, name, ops),
                                         "payload": dict(payload)}, key=store.key)
    _apply(client, name, ops)
    e = audit.append(store.store_uri, event, name, version, actor, reason, before, after, data_version,
                     {**payload, "intent_seq": intent.seq}, key=store.key)
    _tag_event(client, name, e)
    return e


def _refuse_pending(store: Store, name: str) -> None:
    pending = audit.pending_intents(audit.read_log(store.store_uri, name))
    if pending:
        first = pending[0]
        raise PendingIntentError(f"{name}: {first.payload.get('event')} of v{first.version} (intent seq={first.seq}, "
                                 f"{first.ts}) was cut short; aliases and log may disagree: run `osteo registry "
                                 "repair` (finishes it) or `osteo registry repair --roll-back` first")


def register_candidate(model_uri: str, name: str, tags: Mapping[str, str], metrics: Mapping[str, Any],
                       gate_report: GateReport | None, *, tracking_uri: str = DEFAULT_TRACKING_URI,
                       actor: str = "unknown",
                       required_tags: Sequence[str] = ("data_version", "split_hash", "params_hash"),
                       lock_timeout_s: float = 60.0, store_uri: str | None = None,
                       audit_key: bytes | None = None, approval: str = "none") -> str:
    """Register ``model_uri`` as a new version of ``name`` and make it the ``challenger``.

    The registered model and the version get their model-card descriptions
    (:mod:`registry.model_card`): what the MLflow UI shows a reviewer first.

    Args:
        model_uri: a logged model (``models:/m-...``), ``runs:/<run>/<path>`` or an artifact URI.
        name: registered model name (created on first use).
        tags: lineage tags written as version tags; must hold every key of ``required_tags``.
        metrics: the evaluation dict (stored in full in the audit log, headline as a tag).
        gate_report: the gate report of this evaluation (summary as tags; None = not evaluated).
        tracking_uri: MLflow tracking/registry URI (sqlite:///, postgresql:// or an http(s):// server).
        actor: who registers.
        required_tags: lineage keys every candidate must carry.
        lock_timeout_s: seconds to wait for the registry lock.
        store_uri: the registry store (lock + audit log); None = ``tracking_uri`` (must then be a database).
        audit_key: HMAC key of the audit chain (None: the demo key, accepted on a SQLite store only).
        approval: ``registry.approval`` (named in the registered model's description).

    Returns:
        The new version number (string).

    Raises:
        CandidateTagsError: a required tag is missing or empty.
        PendingIntentError: an earlier operation was cut short (run :func:`repair`).
    """
    missing = [k for k in required_tags if not str(tags.get(k, "")).strip()]
    if missing:
        raise CandidateTagsError(f"candidate for {name!r} lacks tags {missing}: pass the data version, split hash "
                                 "and params hash (from dvc.lock / splits.sha256.json / osteo_config.params.params_hash)")
    from mlflow.exceptions import MlflowException

    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    with registry_lock(store.store_uri, lock_timeout_s):
        _refuse_pending(store, name)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        client.update_registered_model(name, description=model_description(name, approval))
        source, run_id, model_id = _source(client, model_uri)
        mv = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                         tags={k: str(v) for k, v in tags.items()})
        version = str(mv.version)
        scopes = () if gate_report is None else scope_decisions(gate_report, metrics)
        client.update_model_version(name, version, description=version_description(
            version, {k: str(v) for k, v in tags.items()}, metrics, scopes,
            None if gate_report is None else gate_report.passed,
            None if gate_report is None else gate_report.champion_version))
        digest = _version_digest(tracking_uri, name, version)
        system = {DIGEST_TAG: digest, STATUS_TAG: "candidate", "osteo.registered_by": actor,
                  "osteo.metrics.headline": _tag_json(headline(metrics)),
                  "osteo.gates.passed": "none" if gate_report is None else str(gate_report.passed).lower(),
                  "osteo.gates.failed": _tag_json([] if gate_report is None else gate_report.failure_lines())}
        before = client.get_registered_model(name).aliases.get(CHAMPION)
        before = None if before is None else str(before)
        ops = [["tag", version, k, v] for k, v in system.items()] + [["alias", CHALLENGER, version]]
        _commit(store, client, "register", name, version, actor, "new candidate", before, before, ops,
                {"model_uri": model_uri, "tags": dict(tags), "artifact_sha256": digest, "metrics": dict(metrics),
                 "gate_report": None if gate_report is None else gate_report.to_dict()})
    return version


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to move ``champion`` and, if not, every reason why."""

    promote: bool
    reasons: tuple[str, ...]


def decide_promotion(version: str, champion: str | None, gate_report: GateReport | None, gates: GatesConfig,
                     recorded_digest: str | None, current_digest: str | None) -> PromotionDecision:
    """Pure promotion rule: a complete, current, passing gate report on unchanged artifacts."""
    reasons: list[str] = []
    if champion == version:
        reasons.append(f"version {version} is already the champion")
    if gate_report is None:
        reasons.append("incomplete evaluation: no gate report; evaluate the candidate and run the gates first")
    else:
        if gate_report.config_digest != gates.digest():
            reasons.append(f"incomplete evaluation: gate report computed with gate config {gate_report.config_digest}, "
                           f"current config is {gates.digest()}; re-run the gates")
        uncovered = sorted(gates.gate_ids() - {c.gate for c in gate_report.checks})
        if uncovered:
            reasons.append(f"incomplete evaluation: no check for configured gates {uncovered}")
        if gate_report.champion_version != champion:
            reasons.append(f"stale gate report: compared with champion {gate_report.champion_version}, "
                           f"the champion is now {champion}; re-evaluate against the current champion")
        reasons.extend(f"gate failed: {line}" for line in gate_report.failure_lines())
    if recorded_digest is None:
        reasons.append("no artifact digest recorded at registration: register the model with register_candidate")
    elif current_digest != recorded_digest:
        reasons.append(f"artifact digest changed: recorded {recorded_digest[:16]}..., "
                       f"now {str(current_digest)[:16]}...;"
                       " the files of a registered version must not change")
    return PromotionDecision(not reasons, tuple(reasons))


@dataclass(frozen=True)
class PromotionOutcome:
    """What a promote/approve/reject/rollback call did."""

    name: str
    version: str
    promoted: bool
    champion: str | None
    previous_champion: str | None
    reasons: tuple[str, ...]
    event_seq: int
    awaiting_approval: bool = False


def _promotion_ops(version: str, champion: str | None, challenger_after: str | None, tags: Mapping[str, str]
                   ) -> list[list[Any]]:
    """Champion moves to ``version``; the old champion becomes previous-champion; challenger as given."""
    ops: list[list[Any]] = []
    if champion is not None:
        ops += [["alias", PREVIOUS, champion], ["tag", champion, STATUS_TAG, "previous-champion"]]
    ops.append(["unalias", CHALLENGER] if challenger_after is None else ["alias", CHALLENGER, challenger_after])
    ops.append(["alias", CHAMPION, version])
    ops += [["tag", version, k, v] for k, v in {STATUS_TAG: "champion", **tags}.items()]
    return ops


def _state(client: Any, name: str, version: str, tracking_uri: str) -> tuple[str | None, str | None, str | None]:
    """(champion, previous-champion, challenger) of a registered model whose ``version`` exists."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_registered_model(name).aliases
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name} v{version} is not registered at {tracking_uri} ({exc.error_code}); "
                            "register it with register_candidate first") from exc
    return tuple(None if current.get(a) is None else str(current[a])  # type: ignore[return-value]
                 for a in (CHAMPION, PREVIOUS, CHALLENGER))


def promote(name: str, version: str, gate_report: GateReport | None, actor: str, reason: str, *,
            gates: GatesConfig, tracking_uri: str = DEFAULT_TRACKING_URI,
            lock_timeout_s: float = 60.0, store_uri: str | None = None, audit_key: bytes | None = None,
            approval: str = "none") -> PromotionOutcome:
    """Promote ``version`` to ``champion`` when :func:`decide_promotion` allows it.

    Inside the registry lock: re-read the aliases, re-hash the version's artifacts, decide.
    On success ``champion`` moves to the version and the old champion becomes
    ``previous-champion`` -- unless ``approval="required"``: then the version becomes
    ``challenger`` with ``osteo.status=awaiting-approval`` and only :func:`approve` moves
    ``champion``. On refusal the version stays registered, gets ``osteo.status=refused`` and
    its failed gates as tags, and loses the ``challenger`` alias. Each outcome is one intent
    + one completing event in the audit log.

    Returns:
        A :class:`PromotionOutcome` (``promoted`` False with the reasons when refused or awaiting approval).

    Raises:
        PendingIntentError: an earlier operation was cut short (run :func:`repair`).
    """
    if approval not in APPROVAL_MODES:
        raise RegistryError(f"approval={approval!r}: use one of {list(APPROVAL_MODES)}")
    version = str(version)
    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    with registry_lock(store.store_uri, lock_timeout_s):
        _refuse_pending(store, name)
        champion, previous, challenger = _state(client, name, version, tracking_uri)
        other_challenger = None if challenger in (None, version) else challenger
        recorded = client.get_model_version(name, version).tags.get(DIGEST_TAG)
        now = _version_digest(tracking_uri, name, version)
        decision = decide_promotion(version, champion, gate_report, gates, recorded, now)
        payload = {"gate_report": None if gate_report is None else gate_report.to_dict(),
                   "reasons": list(decision.reasons), "artifact_sha256": now,
                   "metrics_headline": _json_or_none(
                       client.get_model_version(name, version).tags.get("osteo.metrics.headline"))}
        if decision.promote and approval == "required":
            ops = [["alias", CHALLENGER, version], ["tag", version, STATUS_TAG, "awaiting-approval"],
                   ["tag", version, "osteo.gates.passed", "true"], ["tag", version, "osteo.requested_by", actor]]
            e = _commit(store, client, "await_approval", name, version, actor, reason, champion, champion, ops,
                        {**payload, "approval": approval})
            return PromotionOutcome(name, version, False, champion, previous,
                                    ("gates passed; awaiting approval: `osteo registry approve "
                                     f"{version} --reason ...` by a named approver",), e.seq, True)
        if decision.promote:
            ops = _promotion_ops(version, champion, other_challenger,
                                 {"osteo.promoted_by": actor, "osteo.promotion_reason": reason,
                                  "osteo.gates.passed": "true"})
            e = _commit(store, client, "promote", name, version, actor, reason, champion, version, ops, payload)
            return PromotionOutcome(name, version, True, version, champion if champion else previous, (), e.seq)
        ops = [["unalias", CHALLENGER] if other_challenger is None else ["alias", CHALLENGER, other_challenger],
               ["tag", version, "osteo.refused.reasons", _tag_json(list(decision.reasons))]]
        if version != champion:                  # re-promoting the champion is refused but leaves it champion
            ops.append(["tag", version, STATUS_TAG, "refused"])
        if gate_report is not None and version != champion:
            ops += [["tag", version, "osteo.gates.passed", str(gate_report.passed).lower()],
                    ["tag", version, "osteo.gates.failed", _tag_json(gate_report.failure_lines())]]
        e = _commit(store, client, "refuse", name, version, actor, reason, champion, champion, ops, payload)
        return PromotionOutcome(name, version, False, champion, previous, decision.reasons, e.seq)


_REVIEW_EVENTS = ("await_approval", "approve", "reject", "refuse", "promote", "rollback")


def _awaiting(store: Store, name: str, version: str) -> audit.AuditEvent:
    """The ``await_approval`` event of ``version`` if it is still awaiting a decision."""
    last = [e for e in audit.read_log(store.store_uri, name) if e.version == version and e.event in _REVIEW_EVENTS]
    if not last or last[-1].event != "await_approval":
        state = last[-1].event if last else "no review"
        raise ApprovalError(f"{name} v{version} is not awaiting approval (last review event: {state}): "
                            "only a version that passed the gates under registry.approval=required can be approved")
    return last[-1]


def _check_approver(approver: str, requested_by: str) -> str:
    approver = (approver or "").strip()
    if not approver or approver == "unknown":
        raise ApprovalError("an approval needs a named approver: pass --approver NAME or set $OSTEO_ACTOR")
    if approver == requested_by:
        raise ApprovalError(f"{approver!r} requested this promotion and cannot also approve it: a second, "
                            "named person approves (change control)")
    return approver


def approve(name: str, version: str, approver: str, reason: str, *, gates: GatesConfig,
            tracking_uri: str = DEFAULT_TRACKING_URI, lock_timeout_s: float = 60.0, store_uri: str | None = None,
            audit_key: bytes | None = None) -> PromotionOutcome:
    """A named person moves ``champion`` to a version awaiting approval.

    Inside the registry lock the decision is re-made with the version's recorded gate
    report against the *current* gate configuration, champion and artifact digest
    (:func:`decide_promotion`): a report computed under another config, against another
    champion, or changed files turn the approval into a logged refusal.

    Raises:
        ApprovalError: no named approver, the approver requested the promotion, or nothing awaits approval.
        PendingIntentError: an earlier operation was cut short (run :func:`repair`).
    """
    version = str(version)
    if not reason.strip():
        raise ApprovalError("an approval needs a reason (--reason TEXT): it is recorded in the audit log")
    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    with registry_lock(store.store_uri, lock_timeout_s):
        _refuse_pending(store, name)
        request = _awaiting(store, name, version)
        approver = _check_approver(approver, request.actor)
        champion, previous, challenger = _state(client, name, version, tracking_uri)
        report = None if request.payload.get("gate_report") is None else GateReport.from_dict(
            request.payload["gate_report"])
        recorded = client.get_model_version(name, version).tags.get(DIGEST_TAG)
        now = _version_digest(tracking_uri, name, version)
        decision = decide_promotion(version, champion, report, gates, recorded, now)
        payload = {"request_seq": request.seq, "requested_by": request.actor, "approver": approver,
                   "reasons": list(decision.reasons), "artifact_sha256": now,
                   "gates_config_digest": gates.digest()}
        keep = None if challenger in (None, version) else challenger
        if not decision.promote:
            ops = [["unalias", CHALLENGER] if keep is None else ["alias", CHALLENGER, keep],
                   ["tag", version, STATUS_TAG, "refused"],
                   ["tag", version, "osteo.refused.reasons", _tag_json(list(decision.reasons))]]
            e = _commit(store, client, "refuse", name, version, approver, f"approval refused: {reason}", champion,
                        champion, ops, payload)
            return PromotionOutcome(name, version, False, champion, previous, decision.reasons, e.seq)
        ops = _promotion_ops(version, champion, keep, {"osteo.promoted_by": request.actor,
                                                       "osteo.approved_by": approver, "osteo.approval_reason": reason})
        e = _commit(store, client, "approve", name, version, approver, reason, champion, version, ops, payload)
        return PromotionOutcome(name, version, True, version, champion if champion else previous, (), e.seq)


def reject(name: str, version: str, approver: str, reason: str, *, tracking_uri: str = DEFAULT_TRACKING_URI,
           lock_timeout_s: float = 60.0, store_uri: str | None = None,
           audit_key: bytes | None = None) -> PromotionOutcome:
    """A named person turns down a version awaiting approval (it loses ``challenger``; ``osteo.status=rejected``).

    Raises:
        ApprovalError: no named approver, no reason, or nothing awaits approval.
    """
    version = str(version)
    if not reason.strip():
        raise ApprovalError("a rejection needs a reason (--reason TEXT): it is recorded in the audit log")
    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    with registry_lock(store.store_uri, lock_timeout_s):
        _refuse_pending(store, name)
        request = _awaiting(store, name, version)
        approver = _check_approver(approver, "")
        champion, previous, challenger = _state(client, name, version, tracking_uri)
        ops = [["tag", version, STATUS_TAG, "rejected"], ["tag", version, "osteo.rejected_by", approver]]
        if challenger == version:
            ops.insert(0, ["unalias", CHALLENGER])
        e = _commit(store, client, "reject", name, version, approver, reason, champion, champion, ops,
                    {"request_seq": request.seq, "requested_by": request.actor, "approver": approver})
        return PromotionOutcome(name, version, False, champion, previous, (f"rejected by {approver}: {reason}",),
                                e.seq)


def rollback(name: str, actor: str, reason: str, *, tracking_uri: str = DEFAULT_TRACKING_URI,
             lock_timeout_s: float = 60.0, store_uri: str | None = None,
             audit_key: bytes | None = None) -> PromotionOutcome:
    """Make ``previous-champion`` the champion again and log it.

    The rolled-back version keeps its registration with ``osteo.status=rolled_back``;
    the ``previous-champion`` alias is removed (a second rollback needs a new promotion
    first, so a rollback never silently re-promotes the version just rolled back).

    Raises:
        NoPreviousChampionError: nothing to roll back to.
        ArtifactDigestError: the previous champion's files changed since registration.
        PendingIntentError: an earlier operation was cut short (run :func:`repair`).
    """
    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    with registry_lock(store.store_uri, lock_timeout_s):
        _refuse_pending(store, name)
        current = client.get_registered_model(name).aliases
        if current.get(PREVIOUS) is None:
            raise NoPreviousChampionError(f"{name}: no version has the {PREVIOUS!r} alias; nothing to roll back to "
                                          "(promote a version explicitly instead)")
        target = str(current[PREVIOUS])
        champion = None if current.get(CHAMPION) is None else str(current[CHAMPION])
        recorded = client.get_model_version(name, target).tags.get(DIGEST_TAG) or ""
        now = _version_digest(tracking_uri, name, target)
        if now != recorded:
            raise ArtifactDigestError(name, target, recorded, now)
        ops = [["alias", CHAMPION, target], ["unalias", PREVIOUS], ["tag", target, STATUS_TAG, "champion"]]
        if champion is not None:
            ops.append(["tag", champion, STATUS_TAG, "rolled_back"])
        e = _commit(store, client, "rollback", name, target, actor, reason, champion, target, ops,
                    {"rolled_back_version": champion, "artifact_sha256": now})
    return PromotionOutcome(name, target, True, target, None, (), e.seq)


def repair(name: str, actor: str, *, tracking_uri: str = DEFAULT_TRACKING_URI, roll_back: bool = False,
           lock_timeout_s: float = 60.0, store_uri: str | None = None,
           audit_key: bytes | None = None) -> list[audit.AuditEvent]:
    """Finish (or, with ``roll_back``, undo) every operation of ``name`` cut short by a crash.

    For each ``intent`` without its completing event, inside the registry lock: replay its
    operations (idempotent) and append the event it planned, with ``intent_seq`` and
    ``repaired_by``; or apply its recorded undo and append an ``abort``. Afterwards aliases,
    tags and the log agree again. Nothing pending: nothing done, ``[]``.

    Returns:
        The events appended (one per repaired intent).
    """
    store = Store.of(tracking_uri, store_uri, audit_key)
    client = _client(tracking_uri)
    done: list[audit.AuditEvent] = []
    with registry_lock(store.store_uri, lock_timeout_s):
        audit.verify_chain(store.store_uri, key=store.key)     # replay only what this key signed
        for intent in audit.pending_intents(audit.read_log(store.store_uri, name)):
            plan = intent.payload
            if roll_back:
                _apply(client, name, plan["undo"])
                e = audit.append(store.store_uri, "abort", name, intent.version, actor,
                                 f"rolled back the cut-short {plan['event']} ({intent.reason})",
                                 intent.champion_after, intent.champion_before, intent.data_version,
                                 {"intent_seq": intent.seq, "undone": plan["undo"]}, key=store.key)
            else:
                _apply(client, name, plan["ops"])
                e = audit.append(store.store_uri, plan["event"], name, intent.version, intent.actor,
                                 intent.reason.split(": ", 1)[-1] + f" (completed by `osteo registry repair`, {actor})",
                                 intent.champion_before, intent.champion_after, intent.data_version,
                                 {**plan["payload"], "intent_seq": intent.seq, "repaired_by": actor}, key=store.key)
            _tag_event(client, name, e)
            done.append(e)
    return done


def consistency(name: str, *, tracking_uri: str = DEFAULT_TRACKING_URI, store_uri: str | None = None
                ) -> list[str]:
    """Disagreements between the aliases and the log ([] = consistent): pending intents, and a
    ``champion`` alias other than the last completed event's ``champion_after``."""
    store_uri = store_uri or tracking_uri
    events = audit.read_log(store_uri, name)
    problems = [f"intent seq={e.seq} ({e.payload.get('event')} of v{e.version}) never completed"
                for e in audit.pending_intents(events)]
    moved = [e for e in events if e.event not in ("intent", "register")]
    expected = moved[-1].champion_after if moved else None
    champion = aliases(name, tracking_uri).get(CHAMPION)
    if moved and champion != expected:
        problems.append(f"champion alias is {champion}, the log's last event ({moved[-1].event} seq={moved[-1].seq}) "
                        f"says {expected}")
    return problems


def champion_metrics(name: str, tracking_uri: str = DEFAULT_TRACKING_URI,
                     store_uri: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """The champion version and the full metrics it was registered with (from the audit log).

    Returns ``(None, None)`` when there is no champion yet; pass both to
    :func:`registry.gates.evaluate_gates` (``champion_metrics``, ``champion_version``).
    """
    champion = aliases(name, tracking_uri).get(CHAMPION)
    if champion is None:
        return None, None
    for e in reversed(audit.read_log(store_uri or tracking_uri, name)):
        if e.event == "register" and e.version == champion:
            return champion, e.payload.get("metrics")
    raise RegistryError(f"{name} v{champion} is champion but the audit log holds no registration event for it; "
                        "re-register the model through registry.register_candidate")
