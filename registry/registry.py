"""MLflow model-registry operations: register, promote through the gates, roll back.

Aliases replace MLflow stages:

* ``challenger``: the latest registered candidate, under review;
* ``champion``: the version serving; moves only when every gate passes;
* ``previous-champion``: the champion before the last promotion (rollback target).

Every operation runs under :func:`registry.lock.registry_lock` and re-reads the
aliases inside it, so two promotions racing leave one consistent champion and
one linear log. Each event (register / promote / refuse / rollback) is appended
to the audit table (:mod:`registry.audit`) and written as a version tag
``osteo.event.<seq>``. A version's artifacts are locked: their SHA-256 digest
is recorded at registration (``osteo.artifact_sha256``) and re-checked before
promotion and rollback.

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
from registry.errors import ArtifactDigestError, CandidateTagsError, NoPreviousChampionError, RegistryError
from registry.gates import GateReport, GatesConfig
from registry.lock import registry_lock

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
STATUS_TAG, DIGEST_TAG = "osteo.status", "osteo.artifact_sha256"
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


def _log(tracking_uri: str, client: Any, event: str, name: str, version: str | None, actor: str, reason: str,
         before: str | None, after: str | None, payload: Mapping[str, Any]) -> audit.AuditEvent:
    data_version = None
    if version is not None:
        data_version = client.get_model_version(name, version).tags.get("data_version")
    e = audit.append(tracking_uri, event, name, version, actor, reason, before, after, data_version, payload)
    if version is not None:
        client.set_model_version_tag(name, version, f"osteo.event.{e.seq:06d}", _tag_json(e.summary()))
    return e


def register_candidate(model_uri: str, name: str, tags: Mapping[str, str], metrics: Mapping[str, Any],
                       gate_report: GateReport | None, *, tracking_uri: str = DEFAULT_TRACKING_URI,
                       actor: str = "unknown",
                       required_tags: Sequence[str] = ("data_version", "split_hash", "params_hash"),
                       lock_timeout_s: float = 60.0) -> str:
    """Register ``model_uri`` as a new version of ``name`` and make it the ``challenger``.

    Args:
        model_uri: a logged model (``models:/m-...``), ``runs:/<run>/<path>`` or an artifact URI.
        name: registered model name (created on first use).
        tags: lineage tags written as version tags; must hold every key of ``required_tags``.
        metrics: the evaluation dict (stored in full in the audit log, headline as a tag).
        gate_report: the gate report of this evaluation (summary as tags; None = not evaluated).
        tracking_uri: MLflow tracking/registry URI (sqlite:/// or postgresql://).
        actor: who registers.
        required_tags: lineage keys every candidate must carry.
        lock_timeout_s: seconds to wait for the registry lock.

    Returns:
        The new version number (string).

    Raises:
        CandidateTagsError: a required tag is missing or empty.
    """
    missing = [k for k in required_tags if not str(tags.get(k, "")).strip()]
    if missing:
        raise CandidateTagsError(f"candidate for {name!r} lacks tags {missing}: pass the data version, split hash "
                                 "and params hash (from dvc.lock / splits.sha256.json / osteo_config.params.params_hash)")
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    with registry_lock(tracking_uri, lock_timeout_s):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source, run_id, model_id = _source(client, model_uri)
        mv = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                         tags={k: str(v) for k, v in tags.items()})
        version = str(mv.version)
        digest = _version_digest(tracking_uri, name, version)
        system = {DIGEST_TAG: digest, STATUS_TAG: "candidate", "osteo.registered_by": actor,
                  "osteo.metrics.headline": _tag_json(headline(metrics)),
                  "osteo.gates.passed": "none" if gate_report is None else str(gate_report.passed).lower(),
                  "osteo.gates.failed": _tag_json([] if gate_report is None else gate_report.failure_lines())}
        for k, v in system.items():
            client.set_model_version_tag(name, version, k, v)
        before = client.get_registered_model(name).aliases.get(CHAMPION)
        client.set_registered_model_alias(name, CHALLENGER, version)
        _log(tracking_uri, client, "register", name, version, actor, "new candidate",
             None if before is None else str(before), None if before is None else str(before),
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
    """What a promote/rollback call did."""

    name: str
    version: str
    promoted: bool
    champion: str | None
    previous_champion: str | None
    reasons: tuple[str, ...]
    event_seq: int


def promote(name: str, version: str, gate_report: GateReport | None, actor: str, reason: str, *,
            gates: GatesConfig, tracking_uri: str = DEFAULT_TRACKING_URI,
            lock_timeout_s: float = 60.0) -> PromotionOutcome:
    """Promote ``version`` to ``champion`` when :func:`decide_promotion` allows it.

    Inside the registry lock: re-read the aliases, mark the version ``challenger``
    (under review), re-hash its artifacts, decide. On success ``champion`` moves to
    the version and the old champion becomes ``previous-champion``; on refusal the
    version stays registered, gets ``osteo.status=refused`` and its failed gates as
    tags, and loses the ``challenger`` alias. Either way one audit event is appended.

    Returns:
        A :class:`PromotionOutcome` (``promoted`` False with the reasons when refused).
    """
    from mlflow.exceptions import MlflowException

    version = str(version)
    client = _client(tracking_uri)
    with registry_lock(tracking_uri, lock_timeout_s):
        try:
            current = client.get_registered_model(name).aliases
            client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryError(f"{name} v{version} is not registered at {tracking_uri} ({exc.error_code}); "
                                "register it with register_candidate first") from exc
        champion = None if current.get(CHAMPION) is None else str(current[CHAMPION])
        previous = None if current.get(PREVIOUS) is None else str(current[PREVIOUS])
        other_challenger = None if str(current.get(CHALLENGER, version)) == version else str(current[CHALLENGER])
        recorded = client.get_model_version(name, version).tags.get(DIGEST_TAG)
        client.set_registered_model_alias(name, CHALLENGER, version)
        now = _version_digest(tracking_uri, name, version)
        decision = decide_promotion(version, champion, gate_report, gates, recorded, now)
        payload = {"gate_report": None if gate_report is None else gate_report.to_dict(),
                   "reasons": list(decision.reasons), "artifact_sha256": now,
                   "metrics_headline": _json_or_none(
                       client.get_model_version(name, version).tags.get("osteo.metrics.headline"))}
        if other_challenger is None:             # review over; a newer candidate keeps its challenger alias
            client.delete_registered_model_alias(name, CHALLENGER)
        else:
            client.set_registered_model_alias(name, CHALLENGER, other_challenger)
        if decision.promote:
            if champion is not None:
                client.set_registered_model_alias(name, PREVIOUS, champion)
                client.set_model_version_tag(name, champion, STATUS_TAG, "previous-champion")
            client.set_registered_model_alias(name, CHAMPION, version)
            for k, v in {STATUS_TAG: "champion", "osteo.promoted_by": actor, "osteo.promotion_reason": reason,
                         "osteo.gates.passed": "true"}.items():
                client.set_model_version_tag(name, version, k, v)
            e = _log(tracking_uri, client, "promote", name, version, actor, reason, champion, version, payload)
            return PromotionOutcome(name, version, True, version, champion if champion else previous, (), e.seq)
        client.set_model_version_tag(name, version, "osteo.refused.reasons", _tag_json(list(decision.reasons)))
        if version != champion:                  # re-promoting the champion is refused but leaves it champion
            client.set_model_version_tag(name, version, STATUS_TAG, "refused")
        if gate_report is not None and version != champion:
            client.set_model_version_tag(name, version, "osteo.gates.passed", str(gate_report.passed).lower())
            client.set_model_version_tag(name, version, "osteo.gates.failed", _tag_json(gate_report.failure_lines()))
        e = _log(tracking_uri, client, "refuse", name, version, actor, reason, champion, champion, payload)
        return PromotionOutcome(name, version, False, champion, previous, decision.reasons, e.seq)


def rollback(name: str, actor: str, reason: str, *, tracking_uri: str = DEFAULT_TRACKING_URI,
             lock_timeout_s: float = 60.0) -> PromotionOutcome:
    """Make ``previous-champion`` the champion again and log it.

    The rolled-back version keeps its registration with ``osteo.status=rolled_back``;
    the ``previous-champion`` alias is removed (a second rollback needs a new promotion
    first, so a rollback never silently re-promotes the version just rolled back).

    Raises:
        NoPreviousChampionError: nothing to roll back to.
        ArtifactDigestError: the previous champion's files changed since registration.
    """
    client = _client(tracking_uri)
    with registry_lock(tracking_uri, lock_timeout_s):
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
        client.set_registered_model_alias(name, CHAMPION, target)
        client.delete_registered_model_alias(name, PREVIOUS)
        client.set_model_version_tag(name, target, STATUS_TAG, "champion")
        if champion is not None:
            client.set_model_version_tag(name, champion, STATUS_TAG, "rolled_back")
        e = _log(tracking_uri, client, "rollback", name, target, actor, reason, champion, target,
                 {"rolled_back_version": champion, "artifact_sha256": now})
    return PromotionOutcome(name, target, True, target, None, (), e.seq)


def champion_metrics(name: str, tracking_uri: str = DEFAULT_TRACKING_URI) -> tuple[str | None, dict[str, Any] | None]:
    """The champion version and the full metrics it was registered with (from the audit log).

    Returns ``(None, None)`` when there is no champion yet; pass both to
    :func:`registry.gates.evaluate_gates` (``champion_metrics``, ``champion_version``).
    """
    champion = aliases(name, tracking_uri).get(CHAMPION)
    if champion is None:
        return None, None
    for e in reversed(audit.read_log(tracking_uri, name)):
        if e.event == "register" and e.version == champion:
            return champion, e.payload.get("metrics")
    raise RegistryError(f"{name} v{champion} is champion but the audit log holds no registration event for it; "
                        "re-register the model through registry.register_candidate")
