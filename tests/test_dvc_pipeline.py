"""`dvc repro` on the tiny profile: builds the whole pipeline (cohort → … → promote); a second fresh copy
reproduces the data stages' hashes exactly; the flows and `dvc repro` share one invalidation rule (a flow run
leaves `dvc status` clean, an ROI code change re-runs ingest in both); a second repro is a no-op; a failing
data gate stops it before the feature store."""
from __future__ import annotations

import hashlib
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
                                "mlflow.db", ".prefect", "__pycache__", ".pytest_cache", "*.egg-info", "tmp", "cache",
                                "dvc.lock")
DATA_STAGES = ("cohort", "ingest", "texture", "validate", "splits", "materialize", "training_table")
ALL_STAGES = (*DATA_STAGES, "pretrain", "finetune", "evaluate", "promote")


def _env(wd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OSTEO_PROFILE"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(wd)
    return env


def _dvc(wd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=900)


def _osteo(wd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osteo.cli", *args], cwd=wd, env=_env(wd), capture_output=True,
                          text=True, timeout=900)


def _set(wd: Path, dotted: str, value) -> None:
    """Edit one key of params.yaml in place (keys are plain; comments are dropped, which is fine here)."""
    params = yaml.safe_load((wd / "params.yaml").read_text())
    node = params
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = value
    (wd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _in_cache(wd: Path, files: list[Path]) -> list[Path]:
    """The files whose bytes are an object of the repository's DVC cache (DVC 3: files/md5/<2>/<30>)."""
    assert files, "no files to look up"
    out = []
    for f in files:
        h = hashlib.md5(f.read_bytes()).hexdigest()
        if (wd / ".dvc" / "cache" / "files" / "md5" / h[:2] / h[2:]).is_file():
            out.append(f)
    return out


def fresh_copy(root: Path, name: str = "repo") -> Path:
    """The repository as a fresh clone sees it (no data, no dvc.lock), on the tiny profile."""
    wd = root / name
    shutil.copytree(REPO, wd, ignore=IGNORE)
    subprocess.run(["git", "init", "-q"], cwd=wd, check=True)
    _set(wd, "profile", "tiny")
    return wd


def lock_entries(wd: Path, stages: tuple[str, ...]) -> dict[str, dict]:
    """``dvc.lock`` entries (cmd, deps, params, outs with their md5) of ``stages``."""
    return {s: v for s, v in yaml.safe_load((wd / "dvc.lock").read_text())["stages"].items() if s in stages}


def ran(stdout: str) -> set[str]:
    """Stages a `dvc repro` (or a flow, whose tasks print one line per stage) actually ran."""
    return {s for s in ALL_STAGES if f"Running stage '{s}'" in stdout or f"stage {s:<14} ran" in stdout}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh copy after a full `dvc repro`, and its data stages' lock entries right after it."""
    wd = fresh_copy(tmp_path_factory.mktemp("dvc"))
    first = _dvc(wd, "repro")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert ran(first.stdout) == set(ALL_STAGES), first.stdout[-4000:]
    return wd, lock_entries(wd, DATA_STAGES)


@pytest.mark.timeout(2400)      # includes the module fixture: the whole pipeline once, on 2 cores
def test_two_fresh_copies_reproduce_the_data_stage_hashes_exactly(built, tmp_path):
    wd, reference = built
    other = fresh_copy(tmp_path, "clone2")
    res = _dvc(other, "repro", "training_table")          # the data stages only
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    got = lock_entries(other, DATA_STAGES)
    assert set(got) == set(DATA_STAGES)
    for stage in DATA_STAGES:
        assert got[stage]["outs"] == reference[stage]["outs"], f"{stage}: outputs differ between two clean runs"
        assert got[stage] == reference[stage], stage
    # the Feast registry (wall-clock apply/materialize times) is there but outside the hashed output
    assert (other / "data" / "feature_repo" / "data" / "registry.db").is_file()


@pytest.mark.timeout(1800)
def test_a_flow_run_leaves_dvc_status_clean_and_an_roi_change_reruns_ingest_in_flow_and_repro(built):
    wd, _ = built
    roi = wd / "features" / "roi.py"
    with roi.open("a") as f:
        f.write("# a one-line change of the ROI code\n")
    flow = _osteo(wd, "flow", "retrain", "--reason", "roi change")
    assert flow.returncode in (0, 3), flow.stdout[-4000:] + flow.stderr[-4000:]
    assert "ingest" in ran(flow.stdout), flow.stdout
    # ROIs are byte-identical after a comment change, so DVC finds everything after ingest up to date
    assert ran(flow.stdout) == {"ingest"}, flow.stdout
    status = _dvc(wd, "status")
    assert status.stdout.strip().endswith("Data and pipelines are up to date."), status.stdout

    with roi.open("a") as f:
        f.write("# another one\n")
    repro = _dvc(wd, "repro")
    assert repro.returncode == 0, repro.stdout[-4000:] + repro.stderr[-4000:]
    assert ran(repro.stdout) == {"ingest"}, repro.stdout
    assert "Stage 'texture' didn't change, skipping" in repro.stdout
    assert _dvc(wd, "status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.timeout(1800)
def test_repro_builds_then_noop_then_stops_at_a_failing_gate(built):
    wd, _ = built
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

    # the texture pools are hashed in dvc.lock but never copied into the cache (dvc.yaml: cache: false);
    # the ROIs they are computed from are
    assert _in_cache(wd, sorted((wd / "data/interim/texture").rglob("*.npy"))[:20]) == []
    rois = sorted((wd / "data/interim/ingest").rglob("*.npz"))[:5]
    assert rois and _in_cache(wd, rois) == rois

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
