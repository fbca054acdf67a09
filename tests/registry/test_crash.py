"""Crash consistency: a promotion killed between its alias moves is found, refused and repaired.

A worker process promotes (or rolls back) and ``os._exit``s right after the Nth alias move
(``crash_worker.py``): MLflow holds what was already moved, the audit log holds the intent
but not its completion. Then every registry operation refuses until ``repair`` finishes the
intent (or rolls it back), after which aliases, tags and the keyed log agree again.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from registry import audit
from registry.errors import PendingIntentError
from registry.gates import evaluate_gates
from registry.registry import (CHALLENGER, CHAMPION, PREVIOUS, aliases, champion_metrics, consistency, promote,
                               register_candidate, repair, rollback)

from .conftest import LINEAGE, fake_metrics, with_paired
from .test_race import _gates_params


NAME = "osteo-crash"
WORKER = Path(__file__).with_name("crash_worker.py")
EXIT_CRASHED = 70


def _setup(tracking, gates_cfg, key: bytes, store_uri: str | None = None):
    """v1 champion, v2 registered challenger with a passing report against v1."""
    kw = {"tracking_uri": tracking.uri, "store_uri": store_uri, "audit_key": key}
    r1 = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), NAME, LINEAGE, fake_metrics(), r1, **kw)
    assert promote(NAME, v1, r1, "setup", "first", gates=gates_cfg, **kw).promoted
    cv, cm = champion_metrics(NAME, tracking.uri, store_uri)
    m2 = fake_metrics(f1=72.0)
    r2 = evaluate_gates(with_paired(m2, cm, cv), cm, gates_cfg, cv)
    v2 = register_candidate(tracking.log_model(1.0), NAME, LINEAGE, m2, r2, **kw)
    assert r2.passed and aliases(NAME, tracking.uri) == {CHAMPION: v1, CHALLENGER: v2}
    return v1, v2, r2


def crash(tracking, gates_cfg, tmp_path: Path, key: bytes, op: str, version: str | None, report, crash_after: int,
          store_uri: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    job = {"tracking_uri": tracking.uri, "store_uri": store_uri or tracking.uri, "audit_key": key.hex(),
           "name": NAME, "version": version, "op": op, "report": None if report is None else report.to_dict(),
           "gates_params": _gates_params(gates_cfg), "actor": "cron", "crash_after": crash_after}
    path = tmp_path / f"crash-{op}-{crash_after}.json"
    path.write_text(json.dumps(job))
    import os
    return subprocess.run([sys.executable, str(WORKER), str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def assert_consistent(tracking, key: bytes, store_uri: str | None = None) -> list[audit.AuditEvent]:
    store = store_uri or tracking.uri
    assert consistency(NAME, tracking_uri=tracking.uri, store_uri=store) == []
    events = audit.read_log(store, NAME)
    assert audit.verify_chain(store, key=key) == len(audit.read_log(store))
    assert not audit.pending_intents(events)
    return events


def test_promotion_killed_after_first_alias_move_is_refused_then_finished_by_repair(tracking, gates_cfg, tmp_path):
    key = secrets.token_bytes(32)
    v1, v2, r2 = _setup(tracking, gates_cfg, key)
    n_before = len(audit.read_log(tracking.uri, NAME))
    done = crash(tracking, gates_cfg, tmp_path, key, "promote", v2, r2, crash_after=1)
    assert done.returncode == EXIT_CRASHED, done.stderr[-2000:]
    # half done: previous-champion moved, champion not; the log holds the intent only
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1, PREVIOUS: v1, CHALLENGER: v2}
    events = audit.read_log(tracking.uri, NAME)
    assert [e.event for e in events[n_before:]] == ["intent"]
    problems = consistency(NAME, tracking_uri=tracking.uri)
    assert problems and "never completed" in problems[0]
    # nothing else may move the aliases while an intent is open (the lock was freed by the kernel)
    with pytest.raises(PendingIntentError, match="osteo registry repair"):
        promote(NAME, v2, r2, "bob", "retry", gates=gates_cfg, tracking_uri=tracking.uri, audit_key=key)
    with pytest.raises(PendingIntentError):
        rollback(NAME, "bob", "retry", tracking_uri=tracking.uri, audit_key=key)

    repaired = repair(NAME, "oncall", tracking_uri=tracking.uri, audit_key=key)
    assert [(e.event, e.version, e.actor) for e in repaired] == [("promote", v2, "cron")]
    assert repaired[0].payload["repaired_by"] == "oncall" and repaired[0].payload["intent_seq"] == events[-1].seq
    assert aliases(NAME, tracking.uri) == {CHAMPION: v2, PREVIOUS: v1}
    tags = tracking.client.get_model_version(NAME, v2).tags
    assert tags["osteo.status"] == "champion" and f"osteo.event.{repaired[0].seq:06d}" in tags
    assert tracking.client.get_model_version(NAME, v1).tags["osteo.status"] == "previous-champion"
    assert_consistent(tracking, key)
    assert repair(NAME, "oncall", tracking_uri=tracking.uri, audit_key=key) == []        # idempotent
    assert rollback(NAME, "bob", "works again", tracking_uri=tracking.uri, audit_key=key).version == v1


def test_promotion_killed_after_champion_moved_rolls_back_to_the_state_before(tracking, gates_cfg, tmp_path):
    key = secrets.token_bytes(32)
    v1, v2, r2 = _setup(tracking, gates_cfg, key)
    tags_v1 = dict(tracking.client.get_model_version(NAME, v1).tags)
    done = crash(tracking, gates_cfg, tmp_path, key, "promote", v2, r2, crash_after=2)
    assert done.returncode == EXIT_CRASHED, done.stderr[-2000:]
    assert aliases(NAME, tracking.uri)[CHAMPION] == v2                              # moved, tags and log not
    assert tracking.client.get_model_version(NAME, v2).tags["osteo.status"] != "champion"
    out = repair(NAME, "oncall", tracking_uri=tracking.uri, audit_key=key, roll_back=True)
    assert [e.event for e in out] == ["abort"]
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1, CHALLENGER: v2}           # exactly as before
    assert tracking.client.get_model_version(NAME, v1).tags["osteo.status"] == tags_v1["osteo.status"]
    assert_consistent(tracking, key)
    # and the promotion can simply be run again
    assert promote(NAME, v2, r2, "cron", "again", gates=gates_cfg, tracking_uri=tracking.uri, audit_key=key).promoted


def test_rollback_killed_midway_is_finished_by_repair(tracking, gates_cfg, tmp_path):
    key = secrets.token_bytes(32)
    v1, v2, r2 = _setup(tracking, gates_cfg, key)
    assert promote(NAME, v2, r2, "cron", "second", gates=gates_cfg, tracking_uri=tracking.uri, audit_key=key).promoted
    done = crash(tracking, gates_cfg, tmp_path, key, "rollback", None, None, crash_after=1)
    assert done.returncode == EXIT_CRASHED, done.stderr[-2000:]
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1, PREVIOUS: v1}             # champion back, previous not cleared
    assert consistency(NAME, tracking_uri=tracking.uri)
    out = repair(NAME, "oncall", tracking_uri=tracking.uri, audit_key=key)
    assert [(e.event, e.version) for e in out] == [("rollback", v1)]
    assert aliases(NAME, tracking.uri) == {CHAMPION: v1}
    assert tracking.client.get_model_version(NAME, v2).tags["osteo.status"] == "rolled_back"
    assert_consistent(tracking, key)
