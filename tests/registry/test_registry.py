"""MLflow registry round trips on SQLite: register, promote, refuse, roll back, artifact lock, audit log."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa

from registry import audit
from registry.errors import AuditLogError, CandidateTagsError, NoPreviousChampionError
from registry.gates import evaluate_gates
from registry.registry import (CHALLENGER, CHAMPION, PREVIOUS, aliases, artifact_digest, champion_metrics,
                               decide_promotion, promote, register_candidate, rollback)

from .conftest import LINEAGE, fake_metrics, with_paired

NAME = "osteo-screening"


def _register(tracking, gates_cfg, metrics, offset=0.0, tags=LINEAGE):
    champ_version, champ_metrics = champion_metrics(NAME, tracking.uri) if _exists(tracking) else (None, None)
    report = evaluate_gates(with_paired(metrics, champ_metrics, champ_version), champ_metrics, gates_cfg, champ_version)
    version = register_candidate(tracking.log_model(offset), NAME, tags, metrics, report,
                                 tracking_uri=tracking.uri, actor="ci")
    return version, report


def _exists(tracking) -> bool:
    return bool(tracking.client.search_registered_models(f"name = '{NAME}'"))


def test_register_promote_second_promote_rollback_round_trip(tracking, gates_cfg):
    v1, r1 = _register(tracking, gates_cfg, fake_metrics(f1=70.0))
    assert aliases(NAME, tracking.uri) == {CHALLENGER: v1}
    tags = tracking.client.get_model_version(NAME, v1).tags
    assert tags["data_version"] == "dvc:abc123" and tags["osteo.status"] == "candidate"
    assert len(tags["osteo.artifact_sha256"]) == 64 and tags["osteo.gates.passed"] == "true"
    card = tracking.client.get_model_version(NAME, v1).description        # the model card the UI shows first
    assert f"**Version {v1}**" in card and "dvc:abc123" in card and "| site_A |" in card and "**passed**" in card
    assert "Intended use" in tracking.client.get_registered_model(NAME).description

    out1 = promote(NAME, v1, r1, actor="alice", reason="first model", gates=gates_cfg, tracking_uri=tracking.uri)
    assert out1.promoted and aliases(NAME, tracking.uri) == {CHAMPION: v1}
    assert champion_metrics(NAME, tracking.uri) == (v1, fake_metrics(f1=70.0))
    again = promote(NAME, v1, r1, actor="alice", reason="twice", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not again.promoted and any("already the champion" in r for r in again.reasons)
    assert tracking.client.get_model_version(NAME, v1).tags["osteo.status"] == "champion"
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1}

    v2, r2 = _register(tracking, gates_cfg, fake_metrics(f1=72.0), offset=5.0)
    assert r2.champion_version == v1 and any(c.kind == "max_drop" and c.status == "pass" for c in r2.checks)
    out2 = promote(NAME, v2, r2, actor="bob", reason="better F1", gates=gates_cfg, tracking_uri=tracking.uri)
    assert out2.promoted and out2.previous_champion == v1
    assert aliases(NAME, tracking.uri) == {CHAMPION: v2, PREVIOUS: v1}
    assert tracking.client.get_model_version(NAME, v1).tags["osteo.status"] == "previous-champion"

    back = rollback(NAME, actor="carol", reason="drift alarm", tracking_uri=tracking.uri)
    assert back.version == v1 and aliases(NAME, tracking.uri) == {CHAMPION: v1}
    assert tracking.client.get_model_version(NAME, v2).tags["osteo.status"] == "rolled_back"
    with pytest.raises(NoPreviousChampionError):
        rollback(NAME, actor="carol", reason="again", tracking_uri=tracking.uri)

    raw = audit.read_log(tracking.uri, NAME)
    # each change of aliases/tags is an intent row, then the event completing it (intent_seq)
    assert [e.event for e in raw[::2]] == ["intent"] * 6 and not audit.pending_intents(raw)
    assert all(done.payload["intent_seq"] == intent.seq for intent, done in zip(raw[::2], raw[1::2]))
    log = [e for e in raw if e.event != "intent"]
    assert [(e.event, e.version, e.actor, e.champion_before, e.champion_after) for e in log] == [
        ("register", v1, "ci", None, None), ("promote", v1, "alice", None, v1), ("refuse", v1, "alice", v1, v1),
        ("register", v2, "ci", v1, v1), ("promote", v2, "bob", v1, v2),
        ("rollback", v1, "carol", v2, v1)]
    assert [e.reason for e in log][-1] == "drift alarm" and all(e.data_version == "dvc:abc123" for e in log)
    assert log[0].payload["metrics"] == fake_metrics(f1=70.0) and log[4].payload["gate_report"]["passed"]
    assert audit.verify_chain(tracking.uri) == 12
    text = audit.format_log(log)
    assert len(text.splitlines()) == 7 and "carol" in text and f"{v2}->{v1}" in text
    # the same events as version tags (who/what/when/why)
    v1_events = [json.loads(v) for k, v in sorted(tracking.client.get_model_version(NAME, v1).tags.items())
                 if k.startswith("osteo.event.")]
    assert [e["event"] for e in v1_events] == ["register", "promote", "refuse", "rollback"]


def test_refused_promotion_keeps_version_with_failed_gate_tags(tracking, gates_cfg):
    v1, r1 = _register(tracking, gates_cfg, fake_metrics())
    assert promote(NAME, v1, r1, "alice", "first", gates=gates_cfg, tracking_uri=tracking.uri).promoted
    v2, r2 = _register(tracking, gates_cfg, fake_metrics(B={"sen": 35.0}))
    assert not r2.passed
    out = promote(NAME, v2, r2, "bob", "try anyway", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not out.promoted and any("rules[0]" in r and "site_B" in r and "35.0" in r for r in out.reasons)
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1}                # champion untouched, challenger removed
    tags = tracking.client.get_model_version(NAME, v2).tags
    assert tags["osteo.status"] == "refused" and tags["osteo.gates.passed"] == "false"
    assert "site_B" in tags["osteo.gates.failed"] and "35.0" in tags["osteo.gates.failed"]
    assert audit.read_log(tracking.uri, NAME)[-1].event == "refuse"

    # no promotion without a complete evaluation: no report, or a report missing a configured gate
    v3, r3 = _register(tracking, gates_cfg, fake_metrics())
    none = promote(NAME, v3, None, "bob", "no eval", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not none.promoted and "incomplete evaluation" in none.reasons[0]
    from registry.gates import GateReport
    partial = GateReport(tuple(c for c in r3.checks if c.gate != "calibration"), r3.config_digest,
                         r3.champion_version, r3.gate_ids)
    out = promote(NAME, v3, partial, "bob", "partial", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not out.promoted and any("['calibration']" in r for r in out.reasons)
    assert promote(NAME, v3, r3, "bob", "complete", gates=gates_cfg, tracking_uri=tracking.uri).promoted


def test_stale_gate_report_is_refused(tracking, gates_cfg):
    v1, r1 = _register(tracking, gates_cfg, fake_metrics())
    v2, r2 = _register(tracking, gates_cfg, fake_metrics())             # both compared with "no champion"
    assert promote(NAME, v1, r1, "a", "first", gates=gates_cfg, tracking_uri=tracking.uri).promoted
    out = promote(NAME, v2, r2, "b", "second", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not out.promoted and any("stale gate report" in r for r in out.reasons)


def test_artifact_digest_change_refuses_promotion(tracking, gates_cfg):
    v1, r1 = _register(tracking, gates_cfg, fake_metrics())
    local = Path(urlparse(tracking.client.get_model_version_download_uri(NAME, v1)).path)
    assert local.is_dir() and tracking.client.get_model_version(NAME, v1).tags["osteo.artifact_sha256"] == \
        artifact_digest(local)
    with open(local / "MLmodel", "a") as fh:
        fh.write("# tampered\n")
    out = promote(NAME, v1, r1, "mallory", "sneak", gates=gates_cfg, tracking_uri=tracking.uri)
    assert not out.promoted and any("artifact digest changed" in r for r in out.reasons)
    assert CHAMPION not in aliases(NAME, tracking.uri)


def test_candidate_needs_lineage_tags(tracking, gates_cfg):
    with pytest.raises(CandidateTagsError, match="split_hash"):
        register_candidate("models:/m-whatever", NAME, {"data_version": "x", "params_hash": "y"}, {}, None,
                           tracking_uri=tracking.uri)


def test_audit_table_is_append_only_and_tamper_evident(tracking, gates_cfg):
    _register(tracking, gates_cfg, fake_metrics())
    engine = audit.engine_for(tracking.uri)
    for stmt in (f"UPDATE {audit.TABLE} SET actor = 'x'", f"DELETE FROM {audit.TABLE}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
    with engine.begin() as conn:                                          # drop the guard, then edit a row
        conn.exec_driver_sql(f"DROP TRIGGER {audit.TABLE}_no_update")
        conn.exec_driver_sql(f"UPDATE {audit.TABLE} SET reason = 'rewritten'")
    engine.dispose()
    with pytest.raises(AuditLogError, match="hash chain"):
        audit.verify_chain(tracking.uri)


def test_decide_promotion_is_pure_and_lists_every_reason(gates_cfg):
    report = evaluate_gates(fake_metrics(A={"sen": 1.0}), None, gates_cfg)
    d = decide_promotion("2", "1", report, gates_cfg, "a" * 64, "b" * 64)
    assert not d.promote and len(d.reasons) == 3                        # stale, gate failure, digest
    ok = decide_promotion("2", None, evaluate_gates(fake_metrics(), None, gates_cfg), gates_cfg, "a" * 64, "a" * 64)
    assert ok.promote and ok.reasons == ()
