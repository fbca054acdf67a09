"""`dvc repro` on the tiny profile: builds the whole pipeline (cohort → … → promote), a second repro is a no-op,
a failing data gate stops it before the feature store."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow
IGNORE = shutil.ignore_patterns(".venv", ".git", "data", "reports", "models", "metrics", "mlruns", "mlartifacts",
                                "mlflow.db", ".prefect", "__pycache__", ".pytest_cache", "*.egg-info", "tmp", "cache")


def _dvc(wd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OSTEO_PROFILE"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(wd)
    return subprocess.run([str(BIN / "dvc"), *args], cwd=wd, env=env, capture_output=True, text=True, timeout=900)


def _set(wd: Path, dotted: str, value) -> None:
    """Edit one key of params.yaml in place (keys are plain; comments are dropped, which is fine here)."""
    params = yaml.safe_load((wd / "params.yaml").read_text())
    node = params
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = value
    (wd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.timeout(2400)          # the whole pipeline, three times, on 2 cores
def test_repro_builds_then_noop_then_stops_at_a_failing_gate(tmp_path):
    wd = tmp_path / "repo"
    shutil.copytree(REPO, wd, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    _set(wd, "profile", "tiny")

    first = _dvc(wd, "repro")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for out in ("data/raw/ct_studies.csv", "data/interim/ingest/vertebrae.parquet", "data/interim/texture/texture.parquet",
                "reports/validation/tables.json", "data/interim/splits/splits.parquet",
                "data/processed/training_table.parquet", "models/pretrain/encoder.pt", "models/finetune/model.pt",
                "metrics/train.json", "metrics/evaluate.json", "reports/evaluation/report.html",
                "metrics/promotion.json", "dvc.lock"):
        assert (wd / out).exists(), out
    promotion = json.loads((wd / "metrics" / "promotion.json").read_text())
    assert promotion["state"] in ("promoted", "rejected") and promotion["version"] == "1"
    shown = _dvc(wd, "metrics", "show")
    assert shown.returncode == 0 and "metrics/evaluate.json" in shown.stdout, shown.stdout + shown.stderr

    second = _dvc(wd, "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout
    assert _dvc(wd, "status").stdout.strip().endswith("Data and pipelines are up to date.")

    _set(wd, "checks.bmd_range", [0.3, 0.4])          # a gate no real spine passes
    third = _dvc(wd, "repro")
    assert third.returncode != 0
    assert "Running stage 'validate'" in third.stdout
    assert "Running stage 'materialize'" not in third.stdout
    assert "expect_column_values_to_be_between(bmd_g_cm2)" in third.stdout + third.stderr
