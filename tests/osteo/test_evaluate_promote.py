"""`osteo evaluate` / `osteo registry ...` through osteo.steps and the CLI, on a real tiny candidate.

One tiny pretrain + finetune (MLflow on SQLite) is shared by the module; each test works on
its own copy of the tracking database and of ``models/``, so registries never leak between
tests. Candidate quality is set by rewriting the test scores of ``predictions.parquet`` (the
file contract between training and evaluation); the champion is always re-scored by the real
model through its registered pyfunc.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from osteo import steps
from osteo.cli import EXIT_CHAIN_BROKEN, EXIT_ERROR, EXIT_REJECTED, app
from osteo_model.evaluate import EvaluationError
from osteo_model.evaluate_stage import stored_threshold
from osteo_model.frames import assemble_frames
from osteo_model.stages import run_finetune_stage, run_pretrain_stage
from registry import audit
from registry.errors import NoPreviousChampionError
from osteo_config import Config

pytestmark = pytest.mark.slow          # one tiny training (~15 s) + an evaluate/promote cycle per test (~5 s)

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_fixture", REPO / "tests" / "osteo_model" / "test_experiment.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)

NAME = "osteo-screening"
GATES = {"rules": [{"scope": "pooled", "level": "vertebra", "metric": "auroc", "min": 0.7}],
         "max_drop": [{"scope": "pooled", "level": "patient", "metric": "f1", "max": 5.0}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidate")
    params = _fixture.write_inputs(root)
    params["registry"]["gates"] = GATES
    run_pretrain_stage(Config.from_params(params).experiment(), "tp_swav", root / "models")
    run_finetune_stage(Config.from_params(params).experiment(), "tp_swav", root / "models", root / "metrics" / "train.json")
    return root, params


@pytest.fixture
def ws(trained, tmp_path, monkeypatch):
    """A private workspace: params pointing at a copy of the tracking DB and of models/.

    MLflow's process-global URIs point at another database meanwhile, as in a fresh
    `osteo ...` process: every step must pass its own URI (that database is never created).
    """
    import mlflow.tracking._model_registry.utils as reg
    import mlflow.tracking._tracking_service.utils as trk

    root, base = trained
    foreign = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    for module, attr, env in ((reg, "_registry_uri", "MLFLOW_REGISTRY_URI"),
                              (trk, "_tracking_uri", "MLFLOW_TRACKING_URI")):
        monkeypatch.setattr(module, attr, foreign)
        monkeypatch.setenv(env, foreign)
    monkeypatch.setenv("OSTEO_ACTOR", "ci-bot")
    monkeypatch.delenv("OSTEO_PROFILE", raising=False)                        # the CLI reads the params file's
    shutil.copy(root / "mlflow.db", tmp_path / "mlflow.db")
    shutil.copytree(root / "models", tmp_path / "models")
    params = copy.deepcopy(base)
    params["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["paths"].update(models=str(tmp_path / "models"), metrics=str(tmp_path / "metrics"),
                           reports=str(tmp_path / "reports"))
    yield params
    assert not (tmp_path / "elsewhere.db").exists(), "a step used MLflow's process-global URI instead of its own"


def _foreign_globals(params) -> None:
    """Steps before this one (the Tracker) set the global tracking URI: point it away again."""
    mlflow.set_tracking_uri(f"sqlite:///{Path(params['paths']['metrics']).parent / 'elsewhere.db'}")


def _record(params) -> dict:
    return json.loads((Path(params["paths"]["models"]) / "finetune" / "finetune.json").read_text())


def _evaluation(params) -> dict:
    return json.loads((Path(params["paths"]["metrics"]) / "evaluate.json").read_text())


def set_test_scores(params, kind: str) -> None:
    """Rewrite the candidate's test scores: ``good`` (one positive vertebra missed), ``better`` (every
    vertebra on the right side of the stored threshold) or ``inverted`` (1 - good: a broken model)."""
    path = Path(params["paths"]["models"]) / "predictions.parquet"
    pred = pd.read_parquet(path)
    test = pred["split"] == "test"
    t = stored_threshold(Path(_record(params)["model"]))
    y = pred.loc[test, "y_true"].to_numpy()
    u = np.random.default_rng(0).uniform(0.1, 0.9, y.size)
    score = np.where(y == 1, t + (1 - t) * u, t * u)                          # (n_test,) perfect at threshold t
    if kind in ("good", "inverted"):
        score[np.flatnonzero(y == 1)[0]] = t * 0.95                           # one positive vertebra missed
    if kind == "inverted":
        score = 1.0 - score
    pred.loc[test, "score"] = score
    pred.to_parquet(path, index=False)


def _cycle(params, kind: str, **promote_kw) -> tuple[dict, dict]:
    set_test_scores(params, kind)
    _foreign_globals(params)
    evaluated = steps.evaluate(Config.from_params(params))
    _foreign_globals(params)
    return evaluated, steps.promote(Config.from_params(params), **promote_kw)


def test_evaluate_uses_the_stored_threshold_and_never_the_test_labels(ws):
    record = _record(ws)
    stored = stored_threshold(Path(record["model"]))
    first = steps.evaluate(Config.from_params(ws))
    ev = _evaluation(ws)
    assert first["threshold"] == ev["threshold"] == pytest.approx(stored) == pytest.approx(record["threshold"])
    assert first["champion_version"] is None and "vs_champion" not in ev           # empty registry: no comparison
    assert [r["scope"] for r in first["per_site"]] == ["site_A", "site_B", "site_C", "site_D", "internal",
                                                       "external", "pooled"]
    assert next(r for r in first["per_site"] if r["scope"] == "site_C")["n_patients"] == 0   # no site C in fixture
    assert next(r for r in first["per_site"] if r["scope"] == "site_D")["external"]

    path = Path(ws["paths"]["models"]) / "predictions.parquet"
    pred = pd.read_parquet(path)
    test = pred["split"] == "test"
    pred.loc[test, "y_true"] = 1 - pred.loc[test, "y_true"]                    # different test labels
    pred.to_parquet(path, index=False)
    second = steps.evaluate(Config.from_params(ws))
    assert second["threshold"] == first["threshold"]                             # not re-tuned on test data
    assert _evaluation(ws)["pooled"]["n_pos"] != ev["pooled"]["n_pos"]           # ...although the labels were read

    # files: DVC metrics + plots, report; no patient identifier in any of them
    metrics_dir, report = Path(ws["paths"]["metrics"]), Path(ws["paths"]["reports"]) / "evaluation"
    assert {"roc_patient_pooled.csv", "reliability_vertebra_pooled.csv", "confusion_patient.csv"} <= {
        p.name for p in (metrics_dir / "plots").iterdir()}
    assert {"metrics.json", "report.html", "roc.png"} <= {p.name for p in report.iterdir()}
    ids = set(pred["patient_id"]) | {v.split(":")[1] for v in pred["vertebra_id"]}
    texts = [p.read_text() for p in [*(metrics_dir / "plots").iterdir(), *report.glob("*.json"),
                                     report / "report.html", metrics_dir / "evaluate.json"]]
    assert not [i for i in ids for t in texts if i in t]

    # MLflow: a child run `evaluate` of the training parent run, carrying the test metrics and the files
    client = MlflowClient(tracking_uri=ws["tracking"]["uri"])
    child = client.get_run(second["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == record["run_id"] == second["parent_run_id"]
    assert child.data.tags["stage"] == "evaluate" and child.data.metrics["threshold"] == pytest.approx(stored)
    assert {a.path for a in client.list_artifacts(second["run_id"], "evaluation")} >= {
        "evaluation/evaluate.json", "evaluation/report", "evaluation/plots"}


def test_champion_is_rescored_on_the_same_test_patients(ws, trained):
    root, _ = trained
    _, promoted = _cycle(ws, "good")
    assert promoted["state"] == "promoted"
    real = pd.read_parquet(root / "models" / "predictions.parquet")              # the model's own test scores
    real.to_parquet(Path(ws["paths"]["models"]) / "predictions.parquet", index=False)
    _foreign_globals(ws)
    out = steps.evaluate(Config.from_params(ws))
    ev = json.loads(Path(out["metrics_file"]).read_text())
    n_test = real.loc[real["split"] == "test", "patient_id"].nunique()
    assert out["champion_version"] == promoted["version"] == _evaluation(ws)["champion_version"]
    assert ev["vs_champion"]["n_patients_common"] == ev["vs_champion"]["n_patients_candidate"] == n_test
    # candidate and champion are the same model here: re-scoring through the pyfunc reproduces its scores
    for scope in ("pooled", "internal", "external"):
        for k in ("f1", "auroc", "sen", "spe"):
            d = ev["vs_champion"][scope]["patient"][k]
            assert d["diff"] is None or abs(d["diff"]) < 1e-9, (scope, k, d)
    assert ev["vs_champion"]["champion_threshold"] == pytest.approx(out["threshold"])

    pred = real.copy()                                                           # a vertebra the data no longer has
    pred.loc[pred.index[pred["split"] == "test"][0], "vertebra_id"] = "gone:gone:13"
    pred.to_parquet(Path(ws["paths"]["models"]) / "predictions.parquet", index=False)
    with pytest.raises(EvaluationError, match="not in the current test frame"):
        steps.evaluate(Config.from_params(ws))


def test_degraded_candidate_is_refused_with_its_gate_and_champion_stays(ws):
    _, first = _cycle(ws, "good")
    assert first["state"] == "promoted" and first["actor"] == "ci-bot"
    evaluated, second = _cycle(ws, "inverted")
    assert evaluated["champion_version"] == first["version"]
    assert second["state"] == "rejected" and second["aliases"] == {"champion": first["version"]}
    failed = {(g["gate"], g["scope"], g["level"], g["metric"]): g for g in second["failed_gates"]}
    auroc = failed[("rules[0]", "pooled", "vertebra", "auroc")]
    assert auroc["value"] < 0.7 and auroc["bound"] == [0.7, None]
    client = MlflowClient(tracking_uri=ws["tracking"]["uri"], registry_uri=ws["tracking"]["uri"])
    tags = client.get_model_version(NAME, second["version"]).tags
    assert tags["osteo.status"] == "refused" and "rules[0]" in tags["osteo.gates.failed"]
    assert json.loads((Path(ws["paths"]["metrics"]) / "promotion.json").read_text())["state"] == "rejected"

    # the CLI prints every failed gate with its numbers and exits 3 (0 with --no-fail-on-reject, as in DVC)
    params_file = _params_file(ws)
    _foreign_globals(ws)
    res = CliRunner().invoke(app, ["--params", str(params_file), "registry", "promote"])
    assert res.exit_code == EXIT_REJECTED, res.output
    assert "REJECTED" in res.output and "rules[0]" in res.output and f"{auroc['value']}" in res.output
    pooled = [line for line in res.output.splitlines() if line.strip().startswith("pooled ")]
    assert "gates per scope" in res.output and pooled and "FAILED" in pooled[0], res.output   # per-scope decision
    res = CliRunner().invoke(app, ["--params", str(params_file), "registry", "promote", "--no-fail-on-reject"])
    assert res.exit_code == 0 and "REJECTED" in res.output
    assert steps.registry_status(Config.from_params(ws))["aliases"] == {"champion": first["version"]}


def test_promote_better_then_rollback_round_trip(ws):
    _, v1 = _cycle(ws, "good")
    _, v2 = _cycle(ws, "better", reason="better sensitivity")
    assert v1["state"] == v2["state"] == "promoted" and v2["compared_with_champion"] == v1["version"]
    assert v2["aliases"] == {"champion": v2["version"], "previous-champion": v1["version"]}
    back = steps.rollback(Config.from_params(ws), "drift alarm", actor="carol")
    assert back["champion"] == v1["version"] and back["rolled_back_version"] == v2["version"]
    assert steps.registry_status(Config.from_params(ws))["aliases"] == {"champion": v1["version"]}
    with pytest.raises(NoPreviousChampionError):
        steps.rollback(Config.from_params(ws), "again")

    log = steps.registry_log(Config.from_params(ws))
    assert [(e["event"], e["version"], e["actor"], e["reason"]) for e in log["events"]] == [
        ("register", v1["version"], "ci-bot", "new candidate"), ("promote", v1["version"], "ci-bot", v1["reason"]),
        ("register", v2["version"], "ci-bot", "new candidate"),
        ("promote", v2["version"], "ci-bot", "better sensitivity"), ("rollback", v1["version"], "carol", "drift alarm")]
    assert log["chain_ok"] and log["n_verified"] == 10                    # 5 events, each after its intent row
    # lineage of every version = the training run's tags
    client = MlflowClient(tracking_uri=ws["tracking"]["uri"], registry_uri=ws["tracking"]["uri"])
    run_tags = client.get_run(_record(ws)["run_id"]).data.tags
    for v in (v1, v2):
        tags = client.get_model_version(NAME, v["version"]).tags
        assert all(tags[k] == run_tags[k] for k in ("data_version", "split_hash", "params_hash"))


def test_champion_pyfunc_screens_a_vertebra_table(ws, trained):
    root, _ = trained
    _, promoted = _cycle(ws, "good")
    assert promoted["state"] == "promoted"
    mlflow.set_tracking_uri(ws["tracking"]["uri"])                               # how a user loads the champion
    mlflow.set_registry_uri(ws["tracking"]["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frames = assemble_frames(Config.from_params(ws).paths.data_paths())
    test = frames.test.sample(frac=1.0, random_state=1)                          # any order, any index
    table = pd.DataFrame({"vertebra_id": test["vertebra_id"], "patient_id": test["patient_id"],
                          "pool_uri": [str((frames.root / p).resolve()) for p in test["pool_path"]],
                          "device_vendor": test["device_vendor"],
                          **{c: test[c] for c in model.metadata.metadata["io_contract"]["descriptors"]}},
                         index=test.index)                                  # + the descriptors its contract lists
    out = model.predict(table)
    assert list(out.columns) == ["score", "bmd_g_cm2", "level", "screen_positive"]   # no identifier comes back
    assert out.index.equals(table.index)
    real = pd.read_parquet(root / "models" / "predictions.parquet").set_index("vertebra_id")
    np.testing.assert_allclose(out["score"].to_numpy(), real.loc[test["vertebra_id"], "score"].to_numpy(), atol=1e-6)
    threshold = stored_threshold(Path(_record(ws)["model"]))
    np.testing.assert_array_equal(out["screen_positive"].to_numpy(), (out["score"] >= threshold).astype(int))
    as_uri = model.predict(table.assign(pool_uri=[Path(p).as_uri() for p in table["pool_uri"]]))
    np.testing.assert_allclose(as_uri["score"], out["score"])
    with pytest.raises(Exception, match="not absolute"):
        model.predict(table.assign(pool_uri=test["pool_path"].to_numpy()))

    contract = mlflow.models.get_model_info(f"models:/{NAME}@champion").metadata["io_contract"]
    assert contract["modality"] == "CT" and contract["feature_service"] == "osteo_screening_v1"
    assert contract["spacing_mm"] == ws["ingest"]["spacing_mm"] and contract["roi_shape"] == ws["ingest"]["roi_shape"]
    assert contract["hu_window"] == ws["ingest"]["hu_window"] and len(contract["channels"]) == 5
    assert contract["threshold"] == pytest.approx(threshold) and "not a diagnostic" in contract["intended_use"]


def _params_file(params) -> Path:
    path = Path(params["paths"]["metrics"]).parent / "params.yaml"
    path.write_text(yaml.safe_dump({**params, "profile": "demo"}))               # no overlays: the demo base
    return path


def test_cli_registry_log_status_and_rollback_without_previous(ws):
    _, promoted = _cycle(ws, "good")
    params_file = _params_file(ws)
    runner = CliRunner()
    status = runner.invoke(app, ["--params", str(params_file), "registry", "status"])
    assert status.exit_code == 0, status.output
    assert f"champion = v{promoted['version']}" in status.output and "pooled" in status.output
    log = runner.invoke(app, ["--params", str(params_file), "registry", "log"])
    assert log.exit_code == 0 and "keyed hash chain verified: 4 rows" in log.output   # 2 events + 2 intents
    assert "register" in log.output and "promote" in log.output and "ci-bot" in log.output
    none = runner.invoke(app, ["--params", str(params_file), "registry", "rollback", "--reason", "test"])
    assert none.exit_code == EXIT_ERROR and "previous-champion" in none.output

    engine = audit.engine_for(ws["tracking"]["uri"])
    with engine.begin() as conn:                                                 # tamper behind the trigger's back
        conn.exec_driver_sql(f"DROP TRIGGER {audit.TABLE}_no_update")
        conn.exec_driver_sql(f"UPDATE {audit.TABLE} SET reason = 'rewritten'")
    engine.dispose()
    broken = runner.invoke(app, ["--params", str(params_file), "registry", "log"])
    assert broken.exit_code == EXIT_CHAIN_BROKEN and "HASH CHAIN BROKEN" in broken.output
