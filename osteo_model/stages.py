"""The training stages of ``osteo train pretrain|finetune`` (DVC stages ``pretrain`` / ``finetune``).

``pretrain`` opens the pipeline's MLflow parent run and records it (and the encoder) in
``<models>/pretrain/pretrain.json``; ``finetune`` continues that run, fits the method,
stores the operating point and writes ``<models>/finetune/finetune.json`` for evaluate/promote.

Under ``torchrun`` (a process group initialised by the CLI, :func:`osteo_model.train.distributed_from_env`)
every rank runs the same training loop (DDP, gradients all-reduced), but only rank 0 runs the
pipeline around it: the MLflow run, the bundles, the operating point, predictions and metrics.
The other ranks (:func:`_follow`) run the fits alone, from the same inputs and checkpoints, and write nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from osteo_config.experiment import ExperimentSpec
from osteo_model.experiment import run_training
from osteo_model.frames import ExperimentError, assemble_frames
from osteo_model.methods import DEEP, METHODS, PRETRAINED, fit_method
from osteo_model.pipeline import run_pretrain
from osteo_model.train import barrier, rank, world_size

DDP_METHODS = ("tp_swav", "swav", "scratch")    # methods whose stages run data-parallel under torchrun


def _follow(spec: ExperimentSpec, method: str, out_dir: Path, stage: str, encoder: Path | None = None) -> dict[str, Any]:
    """A rank > 0 of a torchrun job: the same fit as rank 0 (same frames, out_dir and checkpoints), no writes.

    Returns rank 0's stage record once rank 0 has written it (the final barrier of the stage).
    """
    frames = assemble_frames(spec.data)
    if stage == "pretrain" and method in PRETRAINED:
        run_pretrain(spec, frames.pretrain, frames.root, out_dir / "pretrain",
                     method="swav" if method == "swav" else "tp_swav", resume=True)
    elif stage == "finetune":
        fit_method(spec, method, frames, out_dir / "finetune", encoder, None, resume=True)
    barrier()                                                   # rank 0 has written its record
    return json.loads((out_dir / stage / f"{stage}.json").read_text())


def _check_ddp(method: str) -> None:
    if world_size() > 1 and method not in DDP_METHODS:
        raise ExperimentError(f"train.method={method!r} does not run under torchrun (its pseudo-label / screening "
                              f"rounds are single-process); use one of {list(DDP_METHODS)} or run it without torchrun")


def run_pretrain_stage(spec: ExperimentSpec, method: str = "tp_swav", out_dir: Path = Path("models"),
                       tracking: bool = True) -> dict[str, Any]:
    """``osteo train pretrain``: TP-SwAV (or SwAV) encoder -> ``<out_dir>/pretrain/encoder.pt``.

    Opens the pipeline's MLflow parent run (``<method>``); ``<out_dir>/pretrain/pretrain.json``
    records it (and the encoder, or none for ``scratch``) so ``finetune`` continues the same run.
    """
    if method not in METHODS or method not in DEEP:
        raise ExperimentError(f"train.method={method!r}: `osteo train` trains one of {list(DEEP)}")
    _check_ddp(method)
    out_dir = Path(out_dir)
    if rank() > 0:
        return _follow(spec, method, out_dir, "pretrain")
    res = run_training(spec, method, tracking=tracking, out_dir=out_dir, stages=("pretrain",),
                       run_name=method, resume=True)
    record = {"method": method, "encoder": None if res.encoder_path is None else str(res.encoder_path),
              "pretrain_s": res.timings.get("pretrain_s"), "run_id": res.run_id}
    (out_dir / "pretrain").mkdir(parents=True, exist_ok=True)
    (out_dir / "pretrain" / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    barrier()                                                   # releases the other ranks (_follow)
    return record


def run_finetune_stage(spec: ExperimentSpec, method: str = "tp_swav", out_dir: Path = Path("models"),
                       metrics_path: Path = Path("metrics/train.json"), tracking: bool = True) -> dict[str, Any]:
    """``osteo train finetune``: fine-tune from the encoder ``pretrain`` recorded (none for ``scratch``),
    pick the validation threshold, write ``<out_dir>/finetune/model.pt`` and ``metrics_path``.

    Continues the parent MLflow run of the pretrain stage when it used the same method.
    """
    out_dir = Path(out_dir)
    record_path = out_dir / "pretrain" / "pretrain.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("method") not in (None, method):
        raise ExperimentError(f"{record_path} holds a '{record.get('method')}' pretraining but train.method is "
                              f"'{method}': run `osteo train pretrain` first")
    init = Path(record["encoder"]) if record.get("encoder") else None
    if init is None and method in ("tp_swav", "swav"):
        raise ExperimentError(f"no pretrained encoder for '{method}' ({record_path} missing or empty): "
                              "run `osteo train pretrain` first")
    _check_ddp(method)
    if rank() > 0:
        return _follow(spec, method, out_dir, "finetune", init)
    res = run_training(spec, method, tracking=tracking, out_dir=out_dir, init_encoder=init, stages=("finetune",),
                       run_name=method, resume=True, parent_run_id=record.get("run_id") if tracking else None)
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "metrics.json", metrics_path)
    record = {"method": method, "model": str(res.model_path), "threshold": res.threshold, "metrics": str(metrics_path),
              "finetune_s": res.timings.get("finetune_s"), "run_id": res.run_id, "model_uri": res.model_uri}
    (out_dir / "finetune" / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")  # read by evaluate/promote
    barrier()                                                   # releases the other ranks (_follow)
    return record
