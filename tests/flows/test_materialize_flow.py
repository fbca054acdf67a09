"""The materialize_features Prefect flow end to end on a small cohort.

Runs the real stack (cohort files → ingest → texture → GE → Feast on SQLite →
training table), each step a DVC stage, in Prefect's embedded local mode; each
run is a subprocess in its own copy of the repository (Prefect reads its
settings at import; DVC needs dvc.yaml and params.yaml).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cohort.writers import write_synthetic_marker

REPO = Path(__file__).resolve().parents[2]
OSTEO = [sys.executable, "-m", "osteo.cli"]
pytestmark = pytest.mark.slow
IGNORE = shutil.ignore_patterns(".venv", ".git", "data", "reports", "models", "metrics", "mlruns", "mlartifacts",
                                "mlflow.db", ".prefect", "__pycache__", ".pytest_cache", "*.egg-info", "tmp", "cache",
                                "dvc.lock")


def _env(wd: Path = REPO, profile: str = "tiny") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["OSTEO_PROFILE"] = profile          # what params.yaml says in the copies: accepted
    env["PYTHONPATH"] = str(wd)
    return env


def _tiny_params(wd: Path) -> None:
    text = (wd / "params.yaml").read_text()
    (wd / "params.yaml").write_text(re.sub(r"(?m)^profile:\s*\w+", "profile: tiny", text, count=1))


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory) -> Path:
    """A 2-patients-per-site tiny cohort (raw export only), generated once for the module."""
    root = tmp_path_factory.mktemp("cohort")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    _tiny_params(root)
    subprocess.run([*OSTEO, "cohort", "--n-patients", "2"], cwd=root, env=_env(), check=True,
                   capture_output=True, timeout=900)
    return root / "data" / "raw"


def _workdir(tmp_path: Path, raw: Path, name: str) -> Path:
    """A fresh copy of the repository (tiny profile) holding the raw export, as if copied from a hospital."""
    wd = tmp_path / name
    shutil.copytree(REPO, wd, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    _tiny_params(wd)
    shutil.copytree(raw, wd / "data" / "raw")
    return wd


def _flow(wd: Path, timeout: int = 1800, profile: str = "tiny") -> subprocess.CompletedProcess:
    # generous: CI machines are loaded (with both cores busy a tiny flow took > 600 s here)
    return subprocess.run([*OSTEO, "flow", "materialize"], cwd=wd, env=_env(wd, profile), capture_output=True,
                          text=True, timeout=timeout)


def _training(wd: Path) -> pd.DataFrame:
    df = pd.read_parquet(wd / "data" / "processed" / "training_table.parquet")
    return df.sort_values("vertebra_id").reset_index(drop=True)


@pytest.mark.timeout(3600)                    # three flows; on a machine with both cores busy each takes minutes
def test_flow_completes_and_a_killed_run_resumes_without_lost_or_duplicated_rows(tmp_path, raw_export):
    clean = _workdir(tmp_path, raw_export, "clean")
    done = _flow(clean)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "materialize_features: COMPLETED" in done.stdout
    ref = _training(clean)
    assert len(ref) > 0 and not ref["vertebra_id"].duplicated().any()

    # kill the flow (the whole process group, Prefect's server included) once texture has started
    crashed = _workdir(tmp_path, raw_export, "crashed")
    proc = subprocess.Popen([*OSTEO, "flow", "materialize"], cwd=crashed, env=_env(crashed), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pools = crashed / "data" / "interim" / "texture" / "pools"
    deadline = time.time() + 1200
    while not pools.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode != 0, "the flow finished before it could be killed: the test proves nothing"
    assert not (crashed / "data" / "processed").exists()
    ingested = crashed / "data" / "interim" / "ingest" / "vertebrae.parquet"
    mtime = ingested.stat().st_mtime_ns

    rerun = _flow(crashed)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert ingested.stat().st_mtime_ns == mtime, "DVC recorded ingest as done: it must be skipped, not re-run"
    assert "stage ingest         up to date, skipped" in rerun.stdout and "stage texture        ran" in rerun.stdout
    got = _training(crashed)
    assert not got["vertebra_id"].duplicated().any()
    cols = ["vertebra_id", "dxa_id", "bmd_g_cm2", "who_class", "split", "pool_sha256"]
    pd.testing.assert_frame_equal(got[cols], ref[cols])


def test_flow_fails_on_bad_data_before_the_feature_store(tmp_path, raw_export):
    wd = _workdir(tmp_path, raw_export, "bad")
    dxa = pd.read_csv(wd / "data" / "raw" / "dxa.csv", dtype=str)
    # physically implausible lumbar BMD: inside ingestion's parse range, outside the GE suite's 0.3-2.0 g/cm2
    dxa.loc[dxa.index[::2], "bmd_g_cm2"] = "2.2"
    dxa.to_csv(wd / "data" / "raw" / "dxa.csv", index=False)
    write_synthetic_marker(wd / "data" / "raw")   # still the simulator's synthetic export, with planted faults
    res = _flow(wd)
    assert res.returncode == 1
    assert "materialize_features: FAILED" in res.stdout
    assert "DataGateFailed" in res.stdout and "bmd_g_cm2" in res.stdout, res.stdout[-3000:]
    assert not (wd / "data" / "feature_repo").exists(), "nothing may be materialized after a failed gate"


def test_a_profile_other_than_params_yaml_s_is_refused_before_any_stage(tmp_path, raw_export):
    wd = _workdir(tmp_path, raw_export, "mismatch")
    res = _flow(wd, profile="demo")          # params.yaml says tiny: DVC would record tiny for demo outputs
    assert res.returncode == 1
    assert "set 'profile: demo' in params.yaml" in res.stderr, res.stderr[-3000:]
    assert not (wd / "data" / "interim").exists() and not (wd / "dvc.lock").exists()
