"""registry.pipeline on a tiny pyfunc: the promote/rollback/status/log steps read files, gate, and move aliases."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from registry import audit
from registry.config import RegistryConfig
from registry.errors import EvaluationMissingError, NoPreviousChampionError, RegistryError, StaleEvaluationError
from registry.pipeline import (audit_log, champion_ref, default_actor, promote_candidate, registry_status,
                               rollback_champion)
from registry.registry import CHAMPION, PREVIOUS

from .conftest import LINEAGE, fake_metrics, with_paired

NAME = "osteo-pipeline"


class Candidate:
    """A logged tiny model with lineage tags on its run, plus its finetune.json / evaluate.json files."""

    def __init__(self, tracking, root: Path, metrics: dict, offset: float = 0.0) -> None:
        self.uri = tracking.log_model(offset)
        run_id = tracking.client.get_logged_model(self.uri.split("/")[-1]).source_run_id
        for k, v in {**LINEAGE, "method": "tp_swav"}.items():
            tracking.client.set_tag(run_id, k, v)
        root.mkdir(parents=True, exist_ok=True)
        self.finetune = root / "finetune.json"
        self.finetune.write_text(json.dumps({"method": "tp_swav", "run_id": run_id, "model_uri": self.uri}))
        full = root / "metrics_full.json"
        full.write_text(json.dumps(metrics))
        self.evaluate = root / "evaluate.json"
        self.evaluate.write_text(json.dumps({
            "candidate": {"method": "tp_swav", "run_id": run_id, "model_uri": self.uri},
            "metrics_file": str(full), "metrics_sha256": hashlib.sha256(full.read_bytes()).hexdigest()}))
        self.run_id, self.metrics_file = run_id, full


@pytest.fixture(autouse=True)
def foreign_globals(tmp_path, monkeypatch):
    """MLflow's process-global URIs point at another database (restored afterwards): the steps must
    pass their own URI everywhere, as in a fresh `osteo registry ...` process; that database is never created."""
    import mlflow.tracking._model_registry.utils as reg
    import mlflow.tracking._tracking_service.utils as trk

    other = tmp_path / "elsewhere.db"
    for module, attr, env in ((reg, "_registry_uri", "MLFLOW_REGISTRY_URI"),
                              (trk, "_tracking_uri", "MLFLOW_TRACKING_URI")):
        monkeypatch.setattr(module, attr, f"sqlite:///{other}")
        monkeypatch.setenv(env, f"sqlite:///{other}")
    yield other
    assert not other.exists(), "a registry step used MLflow's process-global URI instead of its own"


def _promote(cfg, gates_cfg, cand: Candidate, out: Path, **kw) -> dict:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{Path(cfg.uri[len('sqlite:///'):]).parent / 'elsewhere.db'}")
    return promote_candidate(cfg, gates_cfg, cand.finetune, cand.evaluate, out, **kw)


def test_promote_reject_rollback_through_the_pipeline_steps(tracking, gates_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("OSTEO_ACTOR", "ci-bot")
    cfg = RegistryConfig(uri=tracking.uri, model_name=NAME, allow_demo_audit_key=True)
    assert champion_ref(cfg) is None                                          # model not registered yet
    good = Candidate(tracking, tmp_path / "c1", fake_metrics(f1=70.0))
    out1 = _promote(cfg, gates_cfg, good, tmp_path / "promotion.json")
    assert out1["state"] == "promoted" and out1["aliases"] == {CHAMPION: out1["version"]}
    assert out1["actor"] == "ci-bot" and out1["failed_gates"] == [] and out1["compared_with_champion"] is None
    assert json.loads((tmp_path / "promotion.json").read_text())["state"] == "promoted"
    tags = tracking.client.get_model_version(NAME, out1["version"]).tags
    assert {k: tags[k] for k in LINEAGE} == LINEAGE and tags["training_run_id"] == good.run_id
    assert champion_ref(cfg) == (out1["version"], f"models:/{NAME}/{out1['version']}")

    # later candidates are evaluated against the champion on the same test patients (osteo evaluate's vs_champion)
    bad = Candidate(tracking, tmp_path / "c2", with_paired(fake_metrics(B={"sen": 35.0}), fake_metrics(f1=70.0),
                                                           out1["version"]), offset=3.0)
    out2 = _promote(cfg, gates_cfg, bad, tmp_path / "promotion.json")
    assert out2["state"] == "rejected" and out2["aliases"] == {CHAMPION: out1["version"]}
    assert out2["compared_with_champion"] == out1["version"]
    assert [(g["gate"], g["scope"], g["metric"], g["value"], g["bound"]) for g in out2["failed_gates"]] == [
        ("rules[0]", "site_B", "sen", 35.0, [60.0, None])]
    assert tracking.client.get_model_version(NAME, out2["version"]).tags["osteo.status"] == "refused"
    assert json.loads((tmp_path / "promotion.json").read_text())["failed_gates"] == out2["failed_gates"]

    better = Candidate(tracking, tmp_path / "c3", with_paired(fake_metrics(f1=74.0), fake_metrics(f1=70.0),
                                                              out1["version"]), offset=5.0)
    out3 = _promote(cfg, gates_cfg, better, tmp_path / "promotion.json", actor="alice", reason="better F1")
    assert out3["state"] == "promoted" and out3["previous_champion"] == out1["version"]
    assert out3["aliases"] == {CHAMPION: out3["version"], PREVIOUS: out1["version"]}

    back = rollback_champion(cfg, "drift alarm", actor="carol")
    assert back["champion"] == out1["version"] and back["rolled_back_version"] == out3["version"]
    assert back["aliases"] == {CHAMPION: out1["version"]}
    with pytest.raises(NoPreviousChampionError):
        rollback_champion(cfg, "again")

    log = audit_log(cfg)
    assert [(e["event"], e["version"], e["actor"]) for e in log["events"]] == [
        ("register", out1["version"], "ci-bot"), ("promote", out1["version"], "ci-bot"),
        ("register", out2["version"], "ci-bot"), ("refuse", out2["version"], "ci-bot"),
        ("register", out3["version"], "alice"), ("promote", out3["version"], "alice"),
        ("rollback", out1["version"], "carol")]
    assert log["chain_ok"] and log["n_verified"] == 14 and "drift alarm" in log["text"]

    status = registry_status(cfg)
    assert status["champion"] == out1["version"] and status["aliases"] == {CHAMPION: out1["version"]}
    assert [(v["version"], v["status"]) for v in status["versions"]] == [
        (out1["version"], "champion"), (out2["version"], "refused"), (out3["version"], "rolled_back")]
    assert status["champion_headline"]["pooled"]["patient"]["f1"] == 70.0


def test_no_promotion_without_a_complete_evaluation_of_this_candidate(tracking, gates_cfg, tmp_path):
    cfg = RegistryConfig(uri=tracking.uri, model_name=NAME, allow_demo_audit_key=True)
    cand = Candidate(tracking, tmp_path / "c", fake_metrics())
    cand.evaluate.rename(tmp_path / "moved.json")
    with pytest.raises(EvaluationMissingError, match="run `osteo evaluate` first"):
        _promote(cfg, gates_cfg, cand, None)
    record = json.loads((tmp_path / "moved.json").read_text())
    cand.evaluate.write_text(json.dumps({**record, "candidate": {**record["candidate"], "run_id": "another-run"}}))
    with pytest.raises(StaleEvaluationError, match="another-run"):
        _promote(cfg, gates_cfg, cand, None)
    cand.evaluate.write_text(json.dumps(record))
    cand.metrics_file.write_text(json.dumps(fake_metrics(f1=99.0)))          # edited after the evaluation
    with pytest.raises(StaleEvaluationError, match="SHA-256 differs"):
        _promote(cfg, gates_cfg, cand, None)
    cand.finetune.write_text(json.dumps({"method": "tp_swav", "run_id": None, "model_uri": None}))
    with pytest.raises(RegistryError, match="--no-tracking"):
        _promote(cfg, gates_cfg, cand, None)
    assert champion_ref(cfg) is None and audit.read_log(tracking.uri, NAME) == []   # nothing was registered


def test_audit_log_step_reports_a_broken_chain(tracking, gates_cfg, tmp_path):
    cfg = RegistryConfig(uri=tracking.uri, model_name=NAME, allow_demo_audit_key=True)
    _promote(cfg, gates_cfg, Candidate(tracking, tmp_path / "c", fake_metrics()), None)
    assert audit_log(cfg)["chain_ok"]
    engine = audit.engine_for(tracking.uri)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TRIGGER {audit.TABLE}_no_update")
        conn.exec_driver_sql(f"UPDATE {audit.TABLE} SET actor = 'mallory'")
    engine.dispose()
    broken = audit_log(cfg)
    assert not broken["chain_ok"] and "hash chain" in broken["chain_error"] and broken["n_verified"] == 0


def test_default_actor_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("OSTEO_ACTOR", "  release-bot ")
    assert default_actor() == "release-bot"
    monkeypatch.delenv("OSTEO_ACTOR")
    assert default_actor() not in ("", "release-bot")
