"""The retrain Prefect flow: Promoted / Rejected / Failed final states, caching of the training tasks, deployment.

Training inputs come from the tiny texture-pool fixture of tests/osteo_model (no cohort), so the
flow runs with ``materialize=False``; the features subflow has its own end-to-end test. Each flow
run is a subprocess with its own working folder (Prefect reads its settings at import).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from osteo_config.params import deep_merge

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("_fixture", REPO / "tests" / "osteo_model" / "test_experiment.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)

DRIVER = """
import json, sys
from flows.runtime import configure_prefect
params = json.load(open(sys.argv[1]))
configure_prefect(params)
from flows.retrain import run_retrain_flow
result = run_retrain_flow(params, materialize=False, actor="ci", reason=sys.argv[2])
json.dump(result, open(sys.argv[3], "w"), default=str)
"""
OPEN_GATES = {"registry": {"gates": {"rules": [{"scope": "pooled", "level": "vertebra", "metric": "auroc", "min": 0.0}],
                                     "max_drop": [], "subgroup_sensitivity": {"attributes": ["sex"], "min": 0.0},
                                     "calibration": None}}}
IMPOSSIBLE = {"registry": {"gates": {"rules": [{"scope": "pooled", "level": "vertebra", "metric": "auroc",
                                                "min": 1.01}]}}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _retrain(root: Path, params: dict, reason: str) -> dict:
    (root / "params.json").write_text(json.dumps(params))
    proc = subprocess.run([sys.executable, "-c", DRIVER, "params.json", reason, "result.json"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "result.json").read_text())


def _with_gates(params: dict, overlay: dict) -> dict:
    merged = deep_merge(params, overlay)
    merged["registry"]["gates"] = overlay["registry"]["gates"] | {
        k: v for k, v in params["registry"]["gates"].items() if k not in overlay["registry"]["gates"]}
    return merged


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("retrain")
    params = _fixture.write_inputs(root)
    params["flows"] = {**params.get("flows", {}), "prefect_home": str(root / ".prefect")}
    return root, params


def test_promoted_then_rejected_reuses_training_and_keeps_the_champion(workdir):
    root, params = workdir
    first = _retrain(root, _with_gates(params, OPEN_GATES), "first model")
    assert first["state"] == "promoted", first
    assert first["promotion"]["aliases"].get("champion") == first["promotion"]["version"]
    model = root / "models" / "finetune" / "model.pt"
    stamp = model.stat().st_mtime_ns

    second = _retrain(root, _with_gates(params, IMPOSSIBLE), "gates tightened")
    assert second["state"] == "rejected", second
    assert "auroc" in second["message"] and "rejected" in second["message"]
    assert second["promotion"]["aliases"].get("champion") == first["promotion"]["version"]  # champion kept
    assert second["promotion"]["version"] != first["promotion"]["version"]                 # still registered
    assert model.stat().st_mtime_ns == stamp       # pretrain/finetune came from the cache: same params and data


def test_missing_training_table_fails_the_flow(tmp_path):
    params = _fixture.write_inputs(tmp_path)
    params["flows"] = {**params.get("flows", {}), "prefect_home": str(tmp_path / ".prefect")}
    Path(params["paths"]["data"], "processed", "training_table.parquet").unlink()
    result = _retrain(tmp_path, params, "no data")
    assert result["state"] == "failed" and "training_table.parquet" in result["message"]


def test_deployment_carries_the_cron_from_params(tmp_path):
    code = ("import json,sys\nfrom flows.runtime import configure_prefect\nfrom osteo_config.params import load_params\n"
            "p = load_params('params.yaml', 'tiny'); configure_prefect(p)\nfrom flows.retrain import deployment\n"
            "d = deployment(p)\nprint(json.dumps({'name': d.name, 'cron': d.schedules[0].schedule.cron, "
            "'params': d.parameters}))")
    env = _env() | {"PREFECT_HOME": str(tmp_path / ".prefect")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    import yaml
    cron = yaml.safe_load((REPO / "params.yaml").read_text())["flows"]["retrain"]["cron"]
    assert out == {"name": "retrain-tiny", "cron": cron, "params": {"profile": "tiny", "params_file": "params.yaml"}}
