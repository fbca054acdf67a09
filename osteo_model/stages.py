"""The training stages of ``osteo train pretrain|finetune`` (DVC stages ``pretrain`` / ``finetune``).

``pretrain`` opens the pipeline's MLflow parent run and records it (and the encoder) in
``<models>/pretrain/pretrain.json``; ``finetune`` continues that run, fits the method,
stores the operating point and writes ``<models>/finetune/finetune.json`` for evaluate/promote.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from osteo_config.experiment import ExperimentSpec
from osteo_model.experiment import run_training
from osteo_model.frames import ExperimentError
from osteo_model.methods import DEEP, METHODS


def run_pretrain_stage(spec: ExperimentSpec, method: str = "tp_swav", out_dir: Path = Path("models"),
                       tracking: bool = True) -> dict[str, Any]:
    """``osteo train pretrain``: TP-SwAV (or SwAV) encoder -> ``<out_dir>/pretrain/encoder.pt``.

    Opens the pipeline's MLflow parent run (``<method>``); ``<out_dir>/pretrain/pretrain.json``
    records it (and the encoder, or none for ``scratch``) so ``finetune`` continues the same run.
    """
    if method not in METHODS or method not in DEEP:
        raise ExperimentError(f"train.method={method!r}: `osteo train` trains one of {list(DEEP)}")
    out_dir = Path(out_dir)
    res = run_training(spec, method, tracking=tracking, out_dir=out_dir, stages=("pretrain",),
                       run_name=method, resume=True)
    record = {"method": method, "encoder": None if res.encoder_path is None else str(res.encoder_path),
              "pretrain_s": res.timings.get("pretrain_s"), "run_id": res.run_id}
    (out_dir / "pretrain").mkdir(parents=True, exist_ok=True)
    (out_dir / "pretrain" / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
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
    res = run_training(spec, method, tracking=tracking, out_dir=out_dir, init_encoder=init, stages=("finetune",),
                       run_name=method, resume=True, parent_run_id=record.get("run_id") if tracking else None)
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "metrics.json", metrics_path)
    record = {"method": method, "model": str(res.model_path), "threshold": res.threshold, "metrics": str(metrics_path),
              "finetune_s": res.timings.get("finetune_s"), "run_id": res.run_id, "model_uri": res.model_uri}
    (out_dir / "finetune" / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")  # read by evaluate/promote
    return record
