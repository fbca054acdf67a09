"""DDP on CPU (gloo, 2 processes): ranks stay in sync and match one process with the doubled batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osteo_model.sinkhorn import sinkhorn

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(_free_port())
    procs = [_run([str(r), "2", port, str(tmp_path)], env) for r in range(2)] + [_run(["0", "1", port, str(tmp_path)], env)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    single = torch.load(tmp_path / "single.pt", weights_only=False)["weights"]
    for name, w0 in r0["weights"].items():
        assert torch.equal(w0, r1["weights"][name]), name                  # gradients were all-reduced
        torch.testing.assert_close(w0, single[name], atol=2e-5, rtol=1e-4)  # = one process, batch 2 x 2
    # Distributed Sinkhorn over two half-batches equals Sinkhorn over the whole batch.
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(torch.cat([r0["q"], r1["q"]]), sinkhorn(scores, 50, 0.05), atol=1e-6, rtol=1e-5)
