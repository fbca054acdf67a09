"""The retrain Prefect flow: Promoted / Rejected / Failed final states, DVC skipping the training stages, deployment.

Training inputs come from the tiny texture-pool fixture of tests/osteo_model (no cohort), written into the
data folders of a copy of the repository whose params.yaml is that fixture's (tiny) params, so the flow runs
with ``materialize=False``: pretrain → finetune → evaluate → promote as DVC stages. The features subflow has
its own end-to-end test. Each flow run is a subprocess (Prefect reads its settings at import).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
IGNORE = shutil.ignore_patterns(".venv", ".git", "data", "reports", "models", "metrics", "mlruns", "mlartifacts",
                                "mlflow.db", ".prefect", "__pycache__", ".pytest_cache", "*.egg-info", "tmp", "cache",
                                "dvc.lock")

_spec = importlib.util.spec_from_file_location("_fixture", REPO / "tests" / "osteo_model" / "test_experiment.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)

DRIVER = """
import json, sys
from flows.runtime import configure_prefect
from osteo_config.params import load_params
configure_prefect(load_params("params.yaml"))
from flows.retrain import run_retrain_flow
result = run_retrain_flow("params.yaml", materialize=False, actor="ci", reason=sys.argv[1])
json.dump(result, open(sys.argv[2], "w"), default=str)
"""
OPEN_GATES = {"rules": [{"scope": "pooled", "level": "vertebra", "metric": "auroc", "min": 0.0}],
              "max_drop": [], "subgroup_sensitivity": {"attributes": ["sex"], "min": 0.0}, "calibration": None,
              "min_evidence": None}   # the tiny cohort's ~10 test patients: this test is about the flow's mechanics
IMPOSSIBLE = {"rules": [{"scope": "pooled", "level": "vertebra", "metric": "auroc", "min": 1.01}]}


def _env(wd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OSTEO_PROFILE"))}
    env["PYTHONPATH"] = str(wd)
    return env


def _repo(root: Path) -> Path:
    """A copy of the repository with the fixture's training inputs under data/ and its params as params.yaml."""
    wd = root / "repo"
    shutil.copytree(REPO, wd, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    params = _fixture.write_inputs(wd / "data")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"] = {**base["tracking"], **params["tracking"]}       # keep the keys the promote stage tracks
    params["profile"], params["profiles"] = "tiny", {"tiny": {}}          # already merged: no overlay on top
    (wd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return wd


def _gates(wd: Path, gates: dict) -> None:
    params = yaml.safe_load((wd / "params.yaml").read_text())
    params["registry"]["gates"] = {**params["registry"]["gates"], **gates}
    (wd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _retrain(wd: Path, reason: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, reason, "result.json"], cwd=wd, env=_env(wd),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((wd / "result.json").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return _repo(tmp_path_factory.mktemp("retrain"))


@pytest.mark.timeout(1800)
def test_promoted_then_rejected_reruns_only_promote_and_keeps_the_champion(workdir):
    wd = workdir
    _gates(wd, OPEN_GATES)
    first = _retrain(wd, "first model")
    assert first["state"] == "promoted", first
    assert all(s["ran"] for s in first["stages"].values()), first["stages"]
    assert first["promotion"]["aliases"].get("champion") == first["promotion"]["version"]
    model = wd / "models" / "finetune" / "model.pt"
    stamp = model.stat().st_mtime_ns

    _gates(wd, IMPOSSIBLE)                    # only the promote stage tracks registry params
    second = _retrain(wd, "gates tightened")
    assert second["state"] == "rejected", second
    assert {k for k, s in second["stages"].items() if s["ran"]} == {"promote"}, second["stages"]
    assert "auroc" in second["message"] and "rejected" in second["message"]
    assert second["promotion"]["aliases"].get("champion") == first["promotion"]["version"]  # champion kept
    assert second["promotion"]["version"] != first["promotion"]["version"]                 # still registered
    assert model.stat().st_mtime_ns == stamp       # DVC skipped pretrain/finetune: same code, params and data

    dvc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "pretrain", "finetune", "evaluate",
                          "promote"], cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=300)
    assert "changed" not in dvc.stdout, dvc.stdout   # the flow's runs are DVC's record


def test_missing_training_table_fails_the_flow(tmp_path):
    wd = _repo(tmp_path)
    (wd / "data" / "processed" / "training_table.parquet").unlink()
    result = _retrain(wd, "no data")
    assert result["state"] == "failed" and "stage pretrain failed" in result["message"], result
    assert "training_table.parquet" in result["message"]


def test_deployment_carries_the_cron_from_params_and_runs_one_at_a_time(tmp_path):
    code = ("import json\nfrom flows.runtime import configure_prefect\nfrom osteo_config.params import load_params\n"
            "p = load_params('params.yaml', 'tiny'); configure_prefect(p)\nfrom flows.retrain import deployment\n"
            "d = deployment(p['flows'], 'tiny')\nprint(json.dumps({'name': d.name, 'cron': d.schedules[0].schedule.cron, "
            "'params': d.parameters, 'limit': d.concurrency_limit}))")
    env = _env(REPO) | {"PREFECT_HOME": str(tmp_path / ".prefect")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cron = yaml.safe_load((REPO / "params.yaml").read_text())["flows"]["retrain"]["cron"]
    assert out == {"name": "retrain-tiny", "cron": cron, "limit": 1,
                   "params": {"profile": "tiny", "params_file": "params.yaml", "repo": str(REPO)}}
