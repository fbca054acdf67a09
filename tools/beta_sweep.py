"""Choose ``model.moe.beta`` (Eq. 4's L_BMD weight) on the VALIDATION split: fine-tune tp_swav from the
current pretrained encoder at each beta and print validation BMD r and vertebra AUROC (never the test split).

    .venv/bin/python tools/beta_sweep.py 1 10 30        # ~1-2 min per value on the demo, 2 CPU cores
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from osteo_config import load_config
from osteo_model.experiment import run_training
from osteo_model.frames import assemble_frames
from osteo_model.pipeline import load_model, predict_frame


def sweep(beta: float, encoder: Path = Path("models/pretrain/encoder.pt"), work: Path = Path("/tmp/beta_sweep")) -> dict:
    spec = load_config(Path("params.yaml"), overrides={"model": {"moe": {"beta": beta}}}).experiment()
    res = run_training(spec, "tp_swav", tracking=False, out_dir=work / f"beta_{beta:g}", init_encoder=encoder,
                       stages=("finetune",))
    frames = assemble_frames(spec.data)
    model, norm, mcfg, _ = load_model(res.model_path)
    v = frames.valid
    p = predict_frame(model, norm, v, frames.root, mcfg.moe, input_shape=mcfg.input_shape, device="cpu")
    return {"beta": beta, "valid_bmd_r": float(np.corrcoef(p["bmd_pred"], v["bmd_g_cm2"])[0, 1]),
            "valid_vertebra_auroc": float(roc_auc_score((v["who_class"] == 2).astype(int), p["score"])),
            "valid_vertebrae": len(v)}


if __name__ == "__main__":
    for value in sys.argv[1:] or ["1", "10", "30"]:
        print(json.dumps(sweep(float(value))), flush=True)
