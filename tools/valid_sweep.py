"""Choose a model setting on the VALIDATION split: fine-tune tp_swav from the current pretrained encoder once per
variant (params overrides as JSON) and print validation BMD r and vertebra AUROC (never the test split).

    .venv/bin/python tools/valid_sweep.py '{}' '{"model": {"moe": {"wide": true}}}'   # ~1-2 min per variant, 2 cores
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from osteo_config import load_config
from osteo_model.experiment import run_training
from osteo_model.frames import assemble_frames
from osteo_model.pipeline import load_model, predict_frame


def sweep(overrides: dict, encoder: Path = Path("models/pretrain/encoder.pt"), work: Path = Path("/tmp/valid_sweep")) -> dict:
    """Fine-tune with ``overrides`` on params.yaml, score the validation split."""
    spec = load_config(Path("params.yaml"), overrides=overrides).experiment()
    tag = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:12]
    res = run_training(spec, "tp_swav", tracking=False, out_dir=work / tag, init_encoder=encoder, stages=("finetune",))
    frames = assemble_frames(spec.data)
    model, norm, mcfg, _ = load_model(res.model_path)
    v = frames.valid
    p = predict_frame(model, norm, v, frames.root, mcfg.moe, input_shape=mcfg.input_shape, device="cpu")
    return {"overrides": overrides, "valid_bmd_r": float(np.corrcoef(p["bmd_pred"], v["bmd_g_cm2"])[0, 1]),
            "valid_vertebra_auroc": float(roc_auc_score((v["who_class"] == 2).astype(int), p["score"])),
            "valid_vertebrae": len(v)}


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["{}"]:
        print(json.dumps(sweep(json.loads(arg))), flush=True)
