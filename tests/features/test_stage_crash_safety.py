"""Crash safety of the features stages: a `kill -9` mid-run, a truncated record, two runs on one folder.

The texture stage runs as a real subprocess on a tiny hand-built interim folder and is killed with
SIGKILL after some batches are recorded; the resumed run must recompute exactly the vertebrae not yet
recorded and end byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import atomic
from features.texture import GLCMSettings
from features.texture_stage import JOURNAL, MANIFEST, TextureConfig, run_texture
from features.workspace import LOCK_NAME, WorkspaceBusyError, workspace_lock
from osteo_testing.texture_reference import synthetic_vertebra

REPO = Path(__file__).resolve().parents[2]
N_VERTEBRAE = 40
SHAPE = (32, 32, 20)   # ~40 ms of engine + pyradiomics per vertebra on one core: a run lasts ~2 s

# the stage as its own process: batch_size 1, so every vertebra is one recorded batch
STAGE = """
import sys
from features.texture import GLCMSettings
from features.texture_stage import TextureConfig, run_texture
cfg = TextureConfig(glcm=GLCMSettings(kernel_radius=1), device="cpu", batch_size=1, workers=1,
                    scalar_features={"firstorder": ("Mean",), "glcm": ("Contrast",)})
s = run_texture(cfg, sys.argv[1], sys.argv[2], progress=False)
print("computed", s.computed, "skipped", s.skipped, flush=True)
"""


def _cfg() -> TextureConfig:
    return TextureConfig(glcm=GLCMSettings(kernel_radius=1), device="cpu", batch_size=1, workers=1,
                         scalar_features={"firstorder": ("Mean",), "glcm": ("Contrast",)})


@pytest.fixture(scope="module")
def interim(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interim") / "ingest"
    rows = []
    for i in range(N_VERTEBRAE):
        hu, body = synthetic_vertebra(SHAPE, seed=i)
        sha = hashlib.sha256(hu.tobytes() + body.tobytes()).hexdigest()
        rel = f"rois/{sha[:2]}/{sha}.npz"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / rel, hu=hu, body=body)
        rows.append({"patient_id": f"p{i}", "study_id": f"s{i}", "level": 13 + i % 5, "level_name": "L1",
                     "roi_path": rel, "roi_sha256": sha, "roi_shape": list(SHAPE), "spacing_mm": [1.0, 1.0, 1.0]})
    pd.DataFrame(rows).to_parquet(root / "vertebrae.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def reference(interim, tmp_path_factory) -> Path:
    """An uninterrupted run: what every resumed run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "texture"
    s = run_texture(_cfg(), interim, out, progress=False)
    assert (s.computed, s.skipped, s.quarantined) == (N_VERTEBRAE, 0, 0)
    return out


def _files(out: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a stage folder."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _spawn(interim: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", STAGE, str(interim), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _recorded(out: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for rec in sorted((out / JOURNAL).glob("batch-*.json")):
        entries.update(json.loads(rec.read_text())["entries"])
    return entries


def _kill_after(proc: subprocess.Popen, out: Path, n_batches: int, timeout_s: float = 120.0) -> None:
    """SIGKILL ``proc`` once ``n_batches`` batch records exist (polled every 2 ms)."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            pytest.fail(f"the stage ended before {n_batches} batches were recorded: {proc.communicate()}")
        if (out / JOURNAL).is_dir() and len(list((out / JOURNAL).glob("batch-*.json"))) >= n_batches:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no batch record appeared in time")


@pytest.mark.parametrize("n_batches", [1, 5, 17])
def test_a_killed_stage_resumes_after_its_last_recorded_batch_and_ends_byte_identical(
        interim, reference, tmp_path, n_batches):
    out = tmp_path / "texture"
    proc = _spawn(interim, out)
    _kill_after(proc, out, n_batches)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST).exists(), "the run was killed before its end: no final manifest yet"
    recorded = _recorded(out)
    assert n_batches <= len(recorded) < N_VERTEBRAE, "kill too late: the test would prove nothing"

    s = run_texture(_cfg(), interim, out, progress=False)   # the resume (takes the lock the killed run held)
    assert s.skipped == len(recorded), "a recorded batch was recomputed"
    assert s.computed == N_VERTEBRAE - len(recorded), "only the remainder is recomputed"
    assert s.discarded_records == 0
    assert not (out / JOURNAL).exists(), "the batch records are folded into the manifest at the end"
    assert _files(out) == _files(reference)


def test_a_truncated_batch_record_is_ignored_and_only_its_vertebra_recomputed(interim, reference, tmp_path, caplog):
    out = tmp_path / "texture"
    proc = _spawn(interim, out)
    _kill_after(proc, out, 4)
    recorded = _recorded(out)
    victim = sorted((out / JOURNAL).glob("batch-*.json"))[0]
    lost = len(json.loads(victim.read_text())["entries"])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])   # a write cut short

    s = run_texture(_cfg(), interim, out, progress=False)
    assert s.discarded_records == 1
    assert (s.skipped, s.computed) == (len(recorded) - lost, N_VERTEBRAE - len(recorded) + lost)
    assert any(victim.name in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
    assert _files(out) == _files(reference)


def test_a_truncated_manifest_never_breaks_later_runs(interim, reference, tmp_path, caplog):
    out = tmp_path / "texture"
    run_texture(_cfg(), interim, out, progress=False)
    man = out / MANIFEST
    man.write_bytes(man.read_bytes()[:100])              # a crash mid-write under the old non-atomic writer
    s = run_texture(_cfg(), interim, out, progress=False)
    assert (s.discarded_records, s.computed, s.skipped) == (1, N_VERTEBRAE, 0)
    assert any("manifest" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert _files(out) == _files(reference)
    s = run_texture(_cfg(), interim, out, progress=False)
    assert (s.discarded_records, s.computed, s.skipped) == (0, 0, N_VERTEBRAE)


def test_a_second_run_on_the_same_data_folder_is_refused_naming_the_holder(interim, reference, tmp_path):
    out = tmp_path / "texture"
    proc = _spawn(interim, out)
    try:
        t_end = time.monotonic() + 120
        while not ((out / JOURNAL).is_dir() and any((out / JOURNAL).glob("batch-*.json"))):
            assert proc.poll() is None and time.monotonic() < t_end, proc.communicate()
            time.sleep(0.002)
        with pytest.raises(WorkspaceBusyError) as err:      # the second run, while the first is running
            run_texture(_cfg(), interim, out, progress=False)
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "stage texture" in msg and "started 20" in msg
        assert "wait for that run to finish" in msg and LOCK_NAME in msg
    finally:
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"computed {N_VERTEBRAE} skipped 0" in stdout, "the first run was not disturbed"
    assert _files(out) == _files(reference)


def test_the_lock_is_free_again_after_its_holder_is_killed(tmp_path):
    stage_dir = tmp_path / "ingest"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom features.workspace import workspace_lock\n"
        "with workspace_lock(sys.argv[1], 'ingest'):\n    print('held', flush=True)\n    time.sleep(120)\n"),
        str(stage_dir)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkspaceBusyError, match=f"pid {holder.pid} on host .*, stage ingest"):
        with workspace_lock(stage_dir, "ingest"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workspace_lock(stage_dir, "ingest") as lock:     # the kernel dropped the dead holder's flock
        assert lock == tmp_path / LOCK_NAME


def test_atomic_writes_leave_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_writer(path) as fh:
            fh.write(b'{"v": 2, "trunc')
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert atomic.stray_temp_files(tmp_path) == []
    names = {atomic.temp_name(path).name for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".table.json.") and n.endswith(".tmp") for n in names)


def test_a_pool_temp_file_left_by_a_killed_write_is_removed_by_the_next_run(interim, reference, tmp_path):
    """SIGKILL can land inside a pool's atomic write; the resumed run sweeps the half-written temp away."""
    out = tmp_path / "texture"
    proc = _spawn(interim, out)
    _kill_after(proc, out, 3)
    pool = next((out / "pools").rglob("*.npy"))
    stray = atomic.temp_name(pool)           # what atomic_writer leaves when killed mid-write
    stray.write_bytes(pool.read_bytes()[:100])
    run_texture(_cfg(), interim, out, progress=False)
    assert not stray.exists()
    assert atomic.stray_temp_files(out) == []
    assert _files(out) == _files(reference)
