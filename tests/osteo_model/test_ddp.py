"""DDP on CPU (gloo, 2 processes): ranks stay in sync and match one process with the doubled batch; torchrun via the CLI."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from osteo_model.sinkhorn import sinkhorn
from osteo_testing.processes import free_port

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(free_port())
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


def _fixture():
    spec = importlib.util.spec_from_file_location("_fixture", Path(__file__).with_name("test_experiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_torchrun_through_the_cli_trains_data_parallel_and_writes_once(tmp_path):
    # `torchrun --nproc_per_node 2 osteo train ...` (gloo, CPU): one process group, DDP steps over half the
    # data per rank, one set of bundles/metrics and one MLflow run.
    torchrun = Path(sys.executable).with_name("torchrun")
    osteo = Path(sys.executable).with_name("osteo")
    if not torchrun.is_file() or not osteo.is_file():
        pytest.skip(f"needs the torchrun and osteo entry points beside {sys.executable} (pip install -e .)")
    params = _fixture().write_inputs(tmp_path)
    params["profile"] = "demo"                                 # already merged: no overlay on top
    params["train"]["num_workers"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("OSTEO_PROFILE", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    for stage in ("pretrain", "finetune"):
        cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "--no-python", str(osteo),
               "--params", str(tmp_path / "params.yaml"), "train", stage, "--method", "tp_swav"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    models = tmp_path / "models"
    for path in ("pretrain/encoder.pt", "pretrain/pretrain.json", "finetune/model.pt", "finetune/finetune.json",
                 "finetune/operating_point.json"):
        assert (models / path).is_file(), path
    assert (tmp_path / "metrics" / "train.json").is_file()
    # Data-parallel: each rank iterates over half of the vertebrae (DistributedSampler), batch 8 per rank.
    n_pretrain = 6 * 6                                        # 6 train patients x 6 levels
    encoder = torch.load(models / "pretrain" / "encoder.pt", weights_only=False)
    assert encoder["steps"] == math.ceil(math.ceil(n_pretrain / 2) / 8) < math.ceil(n_pretrain / 8)
    model = torch.load(models / "finetune" / "model.pt", weights_only=False)
    n_finetune = 6 * 4 + 6 * 2                                # labelled L1-L4 + unlabelled levels for L_position
    assert model["steps"] == math.ceil(math.ceil(n_finetune / 2) / 8)
    import mlflow
    client = mlflow.tracking.MlflowClient(params["tracking"]["uri"])
    exp = client.get_experiment_by_name(params["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted(r.data.tags.get("mlflow.runName") for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert len(parents) == 1, [r.data.tags.get("mlflow.runName") for r in parents]
    assert children == ["evaluate-valid", "finetune", "pretrain"]
    gate_keys = [k for k in next(r for r in runs if r.data.tags.get("mlflow.runName") == "evaluate-valid").data.metrics
                 if k.startswith("gate_valid_")]
    assert any(k.startswith("gate_valid_Hologic_e") for k in gate_keys)     # gate weights per vendor logged
