"""The raw export never reaches DVC's cache or remote (it may hold PHI: names, MRNs, UIDs in DICOM headers).

On a fresh copy of the repository (tiny profile) with a local DVC remote: `dvc repro ingest` runs the
synthetic `cohort` stage and ingestion, then `dvc commit -f`, `dvc push` and `dvc push --run-cache`; no file of the export
(compared by content hash) may be in `.dvc/cache` or in the remote, while ingestion's outputs are (the
push did happen). Then the export moves outside the workspace (`paths.raw` = an absolute folder, as a
hospital's would be): ingestion depends on it as an external dependency and still nothing of it is pushed.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_pipeline import _dvc, _set, fresh_copy

pytestmark = pytest.mark.slow


def _digests(root: Path) -> dict[str, str]:
    """sha256 of the bytes -> one relative path, for every file under ``root``."""
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.relative_to(root).as_posix()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _leaks(export: Path, truth: Path, *stores: Path) -> list[str]:
    """Export files whose bytes are in a store; the simulator's folder marker, identical in the (cached,
    synthetic, PHI-free) truth folder, is the one file allowed to share its bytes."""
    shared = set(_digests(truth))
    raw = {h: p for h, p in _digests(export).items() if h not in shared}
    assert len(raw) > 50, "the export's own files are compared"
    return [f"{raw[h]} in {store}" for store in stores for h in _digests(store) if h in raw]


@pytest.mark.timeout(1800)
def test_the_raw_export_is_never_cached_or_pushed_in_the_workspace_or_outside_it(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed: a fresh copy of the repository cannot be made")
    wd = fresh_copy(tmp_path)
    remote = tmp_path / "remote"
    _ok(_dvc(wd, "remote", "add", "-d", "local", str(remote)))
    _ok(_dvc(wd, "repro", "ingest"))
    # without `persist: true`, `dvc commit` copies the uncached export into .dvc/cache
    _ok(_dvc(wd, "commit", "-f", "cohort", "ingest"))
    _ok(_dvc(wd, "push"))
    _ok(_dvc(wd, "push", "--run-cache"))
    export = wd / "data" / "raw"
    assert len(_digests(export)) > 50, "the tiny cohort wrote an export"
    truth = wd / "data" / "truth"
    assert _leaks(export, truth, wd / ".dvc" / "cache", remote) == []
    pushed = _digests(remote)
    vert = hashlib.sha256((wd / "data/interim/ingest/vertebrae.parquet").read_bytes()).hexdigest()
    assert vert in pushed, "ingestion's outputs are pushed (the remote is in use: the check above is not vacuous)"
    cohort = yaml.safe_load((wd / "dvc.lock").read_text())["stages"]["cohort"]
    assert [o["path"] for o in cohort["outs"]] == ["data/raw", "data/truth"]

    # a hospital export outside the workspace: a plain external dependency of ingest, no stage's output
    outside = tmp_path / "hospital_export"
    shutil.copytree(export, outside)
    _set(wd, "paths.raw", str(outside))
    _ok(_dvc(wd, "repro", "--single-item", "ingest"))
    _ok(_dvc(wd, "commit", "-f", "cohort", "ingest"))
    _ok(_dvc(wd, "push"))
    _ok(_dvc(wd, "push", "--run-cache"))
    ingest = yaml.safe_load((wd / "dvc.lock").read_text())["stages"]["ingest"]
    assert str(outside) in [d["path"] for d in ingest["deps"]], "the external export is a hashed dependency"
    assert _leaks(outside, truth, wd / ".dvc" / "cache", remote) == []
