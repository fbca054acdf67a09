"""``osteo registry approve | reject | repair`` end to end through the CLI on a real (SQLite) registry."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from registry import audit
from registry.gates import evaluate_gates
from registry.registry import CHALLENGER, CHAMPION, PREVIOUS, aliases, consistency, promote, register_candidate

from .conftest import LINEAGE, fake_metrics
from .test_audit_key import KEY, _params
from .test_crash import EXIT_CRASHED, NAME as CRASH_NAME, _setup, crash


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from osteo.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OSTEO_TEST_AUDIT_KEY", KEY.decode())
    runner = CliRunner()

    def invoke(uri: str, *args: str, name: str = "osteo-screening"):
        path = _params(tmp_path, uri)
        text = path.read_text().replace("model_name: osteo-screening", f"model_name: {name}")
        path.write_text(text)
        return runner.invoke(app, ["--params", str(path), "registry", *args])

    return invoke


def test_cli_approve_needs_a_named_second_person(tracking, gates_cfg, cli, monkeypatch):
    from osteo.cli import EXIT_ERROR

    name = "osteo-screening"
    report = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), name, LINEAGE, fake_metrics(), report, tracking_uri=tracking.uri,
                            audit_key=KEY)
    assert promote(name, v1, report, "cron", "weekly", gates=gates_cfg, tracking_uri=tracking.uri, audit_key=KEY,
                   approval="required").awaiting_approval
    monkeypatch.setenv("OSTEO_ACTOR", "cron")
    same = cli(tracking.uri, "approve", v1, "--reason", "self-approval")
    assert same.exit_code == EXIT_ERROR and "cannot also approve" in same.output
    # the params' gates are the demo's, not those the report was computed with: re-checked, refused
    other = cli(tracking.uri, "approve", v1, "--reason", "reviewed", "--approver", "dr-jones")
    assert other.exit_code == 3 and "approval REFUSED" in other.output and "gate config" in other.output
    assert CHAMPION not in aliases(name, tracking.uri)
    log = cli(tracking.uri, "log", "--verify")
    assert log.exit_code == 0 and "await_approval" in log.output and "dr-jones" in log.output, log.output


def test_cli_repair_after_a_killed_promotion(tracking, gates_cfg, tmp_path, cli):
    from osteo.cli import EXIT_ERROR

    v1, v2, r2 = _setup(tracking, gates_cfg, KEY)
    assert crash(tracking, gates_cfg, tmp_path, KEY, "promote", v2, r2, crash_after=1).returncode == EXIT_CRASHED
    log = cli(tracking.uri, "log", name=CRASH_NAME)
    assert "CUT SHORT" in log.output and "osteo registry repair" in log.output
    blocked = cli(tracking.uri, "rollback", "--reason", "x", name=CRASH_NAME)
    assert blocked.exit_code == EXIT_ERROR and "was cut short" in blocked.output
    fixed = cli(tracking.uri, "repair", "--actor", "oncall", name=CRASH_NAME)
    assert fixed.exit_code == 0 and "repaired: seq" in fixed.output and "consistent" in fixed.output, fixed.output
    assert aliases(CRASH_NAME, tracking.uri) == {CHAMPION: v2, PREVIOUS: v1}
    assert consistency(CRASH_NAME, tracking_uri=tracking.uri) == []
    again = cli(tracking.uri, "repair", name=CRASH_NAME)
    assert again.exit_code == 0 and "nothing to repair" in again.output
    assert audit.verify_chain(tracking.uri, key=KEY) == len(audit.read_log(tracking.uri))
    assert CHALLENGER not in aliases(CRASH_NAME, tracking.uri)
