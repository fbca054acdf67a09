"""Training throughput: samples/s of pretraining and fine-tuning, data loading included (not a test).

    python benchmarks/train.py [--steps N] [--skip-paper]

Synthetic texture pools are written as ``.npy`` files to a temporary folder
and read back through ``TexturePoolDataset`` (load -> ChannelNorm -> resample
to ``model.input_shape``; no in-memory cache, so every step pays the disk and
preprocessing cost), then one ``osteo_model.train.fit`` epoch of N steps is
timed (model construction and the normaliser fit excluded). Rows:

* ``demo``: compact backbone of params.yaml (demo profile), 48x48x32 pools
  resampled to ``model.input_shape``, batch ``train.<stage>.batch_size``;
* ``paper``: ResNet34 (3-D BasicBlocks [3, 4, 6, 3], widths 64-512), 64x64x32
  pools at full resolution, batch 4, a few steps on CPU; on CUDA (when present)
  batch 32 with AMP and the GPU utilisation sampled through NVML.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from osteo_config.params import deep_merge, load_params
from osteo_model.backbones import build_backbone
from osteo_model.config import ModelConfig, TrainConfig
from osteo_model.data import TexturePoolDataset
from osteo_model.moe import MultiTaskModel, MultiTaskObjective
from osteo_model.norm import ChannelNorm
from osteo_model.swav import SwAVModel, SwAVObjective
from osteo_model.train import fit

PAPER = {"model": {"backbone": {"name": "resnet34", "widths": [64, 128, 256, 512], "layers": [3, 4, 6, 3],
                                "stem_width": 32, "embed_dim": 512}, "swav": {"n_prototypes": 300},
                   "input_shape": None}}


def write_pools(root: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> pd.DataFrame:
    """n random float32 (5, *shape) pools on disk + their frame (pool_path, labels)."""
    rng = np.random.default_rng(seed)
    scale = np.array([300, 900, 9, 40, 2], dtype=np.float32)[:, None, None, None]
    rows = []
    for i in range(n):
        rel = f"pools/{i:05d}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, (rng.normal(0, 1, (5, *shape)) * scale).astype(np.float32))
        rows.append({"pool_path": rel, "level": 13 + i % 4, "device_vendor": "Hologic", "who_class": i % 3,
                     "bmd_g_cm2": 0.8 + 0.01 * (i % 20), "t_score": -1.0})
    return pd.DataFrame(rows)


class GpuSampler:
    """Mean GPU utilisation (%) over a block, sampled every 0.2 s through NVML (torch.cuda.utilization)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:                                   # no pynvml: utilisation unknown
                return

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else float("nan")


def bench(params: dict, stage: str, root: Path, frame: pd.DataFrame, steps: int, batch: int, device: str) -> dict:
    """Time ``steps`` optimizer steps of ``stage`` (pretrain | finetune); returns samples/s and s/step."""
    mcfg = ModelConfig.from_params(params)
    tcfg = TrainConfig.from_params(deep_merge(params, {"train": {stage: {"epochs": 1, "batch_size": batch,
                                                                        "warmup_epochs": 0},
                                                                "device": device, "ckpt_every_steps": 10**6}}), stage)
    frame = frame.iloc[: steps * batch]
    norm = ChannelNorm.fit(TexturePoolDataset(frame.iloc[:8], root).iter_raw_pools())
    ds = TexturePoolDataset(frame, root, norm, input_shape=mcfg.input_shape)
    if stage == "pretrain":
        model, objective = SwAVModel(build_backbone(mcfg.backbone), mcfg.swav), SwAVObjective(mcfg.swav, "tp_swav", 0)
    else:
        model, objective = MultiTaskModel(build_backbone(mcfg.backbone), mcfg.moe), MultiTaskObjective(mcfg.moe)
    with tempfile.TemporaryDirectory() as run_dir, (GpuSampler() if device == "cuda" else _Null()) as gpu:
        t0 = time.perf_counter()
        res = fit(model, objective, ds, tcfg, Path(run_dir), resume=False)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"samples_s": res.steps * batch / wall, "s_per_step": wall / res.steps, "steps": res.steps,
            "gpu_util_pct": getattr(gpu, "mean", float("nan"))}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps timed per demo row")
    ap.add_argument("--paper-steps", type=int, default=2, help="optimizer steps timed per paper CPU row")
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    demo = load_params("params.yaml", "demo")
    demo["train"]["device"] = "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        roi = tuple(demo["ingest"]["roi_shape"])
        n = args.steps * max(demo["train"]["pretrain"]["batch_size"], demo["train"]["finetune"]["batch_size"])
        frame = write_pools(root / "demo", n, roi)
        for stage in ("pretrain", "finetune"):
            b = demo["train"][stage]["batch_size"]
            r = bench(demo, stage, root / "demo", frame, args.steps, b, "cpu")
            rows.append({"profile": "demo (compact)", "stage": stage, "pool": "x".join(map(str, roi)),
                         "encoder input": "x".join(map(str, demo["model"]["input_shape"] or roi)),
                         "device": "cpu", "batch": b, **r})
        paper = deep_merge(demo, PAPER)
        if not args.skip_paper:
            pframe = write_pools(root / "paper", max(8, args.paper_steps * 4), (64, 64, 32))
            for stage in ("pretrain", "finetune"):
                r = bench(paper, stage, root / "paper", pframe, args.paper_steps, 4, "cpu")
                rows.append({"profile": "paper (resnet34)", "stage": stage, "pool": "64x64x32",
                             "encoder input": "64x64x32", "device": "cpu", "batch": 4, **r})
        if torch.cuda.is_available():
            gframe = write_pools(root / "gpu", 32 * 10, (64, 64, 32))
            paper["train"]["amp"] = True
            for stage in ("pretrain", "finetune"):
                r = bench(paper, stage, root / "gpu", gframe, 10, 32, "cuda")
                rows.append({"profile": "paper (resnet34)", "stage": stage, "pool": "64x64x32",
                             "encoder input": "64x64x32", "device": torch.cuda.get_device_name(), "batch": 32, **r})
        else:
            print("CUDA not available: GPU rows (paper shapes, AMP, utilisation) skipped")
    table = pd.DataFrame(rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
