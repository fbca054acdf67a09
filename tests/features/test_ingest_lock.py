"""Ingestion holds the data folder's lock: a second run is refused (naming the holder) and never prunes ROIs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from features.ingest import run_ingest
from features.workspace import WorkspaceBusyError

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\nfrom features.workspace import workspace_lock\n"
        "with workspace_lock(sys.argv[1], 'ingest'):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _plant(out: Path) -> list[Path]:
    """An ROI no row references (another run's fresh file) and a killed writer's temp file."""
    stale = out / "rois" / "ab" / ("ab" + "0" * 62 + ".npz")
    temp = out / "rois" / "ab" / (".ab.npz." + "123.deadbeefdeadbeef.tmp")
    for p in (stale, temp):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"roi")
    return [stale, temp]


def test_a_second_ingest_is_refused_while_another_process_holds_the_folder_and_prunes_nothing(tmp_path, synth):
    raw, out = tmp_path / "raw", tmp_path / "interim" / "ingest"
    synth.write_tables(raw, [], [], [])                   # an empty (synthetic) export: only pruning to do
    planted = _plant(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusyError) as err:
            run_ingest(synth.config(), raw, out, profile="tiny", progress=False)
        assert f"pid {holder.pid}" in str(err.value) and "stage ingest" in str(err.value)
        assert all(p.exists() for p in planted), "a refused run pruned files another run may have just written"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    summary = run_ingest(synth.config(), raw, out, profile="tiny", progress=False)   # the holder is gone
    assert summary.studies.seen == 0
    assert not any(p.exists() for p in planted), "with the lock held, unreferenced ROIs and stray temps are pruned"
