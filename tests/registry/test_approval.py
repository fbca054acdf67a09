"""Human sign-off (registry.approval: required): gates make a challenger, only a named second person a champion."""
from __future__ import annotations

import dataclasses

import pytest

from registry import audit
from registry.config import RegistryConfig
from registry.errors import ApprovalError
from registry.gates import GateRule, evaluate_gates
from registry.pipeline import approve_version, reject_version
from registry.registry import CHALLENGER, CHAMPION, PREVIOUS, aliases, approve, promote, register_candidate, reject

from .conftest import LINEAGE, fake_metrics, with_paired

NAME = "osteo-screening"


def _awaiting(tracking, gates_cfg, offset=0.0, champion=None, champion_metrics=None):
    report = evaluate_gates(with_paired(fake_metrics(), champion_metrics, champion), champion_metrics, gates_cfg,
                            champion)
    v = register_candidate(tracking.log_model(offset), NAME, LINEAGE, fake_metrics(), report,
                           tracking_uri=tracking.uri, actor="ci")
    out = promote(NAME, v, report, "cron", "weekly retrain", gates=gates_cfg, tracking_uri=tracking.uri,
                  approval="required")
    return v, report, out


def test_passing_candidate_waits_for_a_named_second_person(tracking, gates_cfg):
    v1, r1, out = _awaiting(tracking, gates_cfg)
    assert r1.passed and not out.promoted and out.awaiting_approval
    assert aliases(NAME, tracking.uri) == {CHALLENGER: v1}                     # no champion without sign-off
    assert tracking.client.get_model_version(NAME, v1).tags["osteo.status"] == "awaiting-approval"
    with pytest.raises(ApprovalError, match="named approver"):
        approve(NAME, v1, "", "ok", gates=gates_cfg, tracking_uri=tracking.uri)
    with pytest.raises(ApprovalError, match="cannot also approve"):            # the cron's actor is not a reviewer
        approve(NAME, v1, "cron", "self", gates=gates_cfg, tracking_uri=tracking.uri)
    with pytest.raises(ApprovalError, match="needs a reason"):
        approve(NAME, v1, "dr-jones", " ", gates=gates_cfg, tracking_uri=tracking.uri)
    ok = approve(NAME, v1, "dr-jones", "reviewed the site table", gates=gates_cfg, tracking_uri=tracking.uri)
    assert ok.promoted and aliases(NAME, tracking.uri) == {CHAMPION: v1}
    tags = tracking.client.get_model_version(NAME, v1).tags
    assert (tags["osteo.status"], tags["osteo.approved_by"], tags["osteo.promoted_by"]) == ("champion", "dr-jones",
                                                                                           "cron")
    log = [e for e in audit.read_log(tracking.uri, NAME) if e.event != "intent"]
    assert [(e.event, e.actor, e.champion_after) for e in log] == [
        ("register", "ci", None), ("await_approval", "cron", None), ("approve", "dr-jones", v1)]
    assert log[-1].payload["request_seq"] == log[1].seq and log[-1].reason == "reviewed the site table"
    with pytest.raises(ApprovalError, match="not awaiting approval"):          # once only
        approve(NAME, v1, "dr-smith", "again", gates=gates_cfg, tracking_uri=tracking.uri)
    assert audit.verify_chain(tracking.uri) == len(audit.read_log(tracking.uri))


def test_approval_rechecks_the_gates_under_the_current_config(tracking, gates_cfg):
    v1, _, _ = _awaiting(tracking, gates_cfg)
    assert approve(NAME, v1, "dr-jones", "first", gates=gates_cfg, tracking_uri=tracking.uri).promoted
    v2, r2, out = _awaiting(tracking, gates_cfg, 1.0, champion=v1, champion_metrics=fake_metrics())
    assert out.awaiting_approval, out.reasons
    stricter = dataclasses.replace(gates_cfg, rules=gates_cfg.rules + (GateRule("pooled", "patient", "sen", min=99.0),))
    refused = approve(NAME, v2, "dr-jones", "looks fine", gates=stricter, tracking_uri=tracking.uri)
    assert not refused.promoted and any("gate config" in r for r in refused.reasons)
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1}                       # champion untouched
    assert tracking.client.get_model_version(NAME, v2).tags["osteo.status"] == "refused"
    last = audit.read_log(tracking.uri, NAME)[-1]
    assert (last.event, last.actor) == ("refuse", "dr-jones")


def test_reject_and_the_pipeline_steps(tracking, gates_cfg, monkeypatch):
    cfg = RegistryConfig(uri=tracking.uri, model_name=NAME, approval="required", allow_demo_audit_key=True)
    v1, _, _ = _awaiting(tracking, gates_cfg)
    monkeypatch.setenv("OSTEO_ACTOR", "")
    with pytest.raises(ApprovalError, match="--approver NAME or set \\$OSTEO_ACTOR"):
        approve_version(cfg, gates_cfg, v1, "ok")
    monkeypatch.setenv("OSTEO_ACTOR", "dr-jones")
    out = approve_version(cfg, gates_cfg, v1, "ok")
    assert out["state"] == "promoted" and out["aliases"] == {CHAMPION: v1} and out["actor"] == "dr-jones"
    v2, _, _ = _awaiting(tracking, gates_cfg, 1.0, champion=v1, champion_metrics=fake_metrics())
    rej = reject_version(cfg, v2, "subgroup table not reviewed yet", approver="dr-smith")
    assert rej["state"] == "rejected" and rej["aliases"] == {CHAMPION: v1}
    assert tracking.client.get_model_version(NAME, v2).tags["osteo.status"] == "rejected"
    with pytest.raises(ApprovalError, match="last review event: reject"):
        approve(NAME, v2, "dr-jones", "changed my mind", gates=gates_cfg, tracking_uri=tracking.uri)
    with pytest.raises(ApprovalError, match="not awaiting approval"):
        reject(NAME, v1, "dr-smith", "too late", tracking_uri=tracking.uri)
    assert PREVIOUS not in aliases(NAME, tracking.uri)
