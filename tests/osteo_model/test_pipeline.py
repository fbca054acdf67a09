"""Entry points end to end on tiny files: pretrain -> fine-tune from the encoder -> load -> predict."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from osteo_config.model import UnknownVendorError
from osteo_config.params import load_params
from osteo_model.data import TexturePoolDataset
from osteo_model.pipeline import gate_metrics, load_model, position_rows, predict_frame, run_finetune, run_pretrain
from osteo_config import Config
from osteo_testing.frames import with_descriptors


def _frame(root, n=8):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pool = (rng.normal(0, 1, (5, 16, 16, 8)) * [[[[300]]], [[[900]]], [[[9]]], [[[40]]], [[[2]]]]).astype(np.float32)
        sha = hashlib.sha256(pool.tobytes()).hexdigest()
        (root / "texture" / sha[:2]).mkdir(parents=True, exist_ok=True)
        np.save(root / "texture" / sha[:2] / f"{sha}.npy", pool)
        rows.append({"pool_path": f"texture/{sha[:2]}/{sha}.npy", "pool_sha256": sha, "level": 13 + i % 4,
                     "device_vendor": ["Hologic", "GE Lunar"][i % 2], "who_class": i % 3,
                     "bmd_g_cm2": 0.7 + 0.05 * i, "t_score": -2.0 + 0.3 * i})
    return with_descriptors(pd.DataFrame(rows))


def test_pretrain_finetune_predict_round_trip(tmp_path):
    params = load_params("params.yaml", "demo")
    params["model"]["backbone"] = {"name": "compact", "widths": [8, 16], "stem_width": 8, "embed_dim": 16}
    params["model"]["swav"].update(proj_hidden=16, proj_dim=8, n_prototypes=4)
    for stage in ("pretrain", "finetune"):
        params["train"][stage].update(epochs=1, batch_size=4)
    params["train"].update(device="cpu")
    frame = _frame(tmp_path)
    pre = run_pretrain(Config.from_params(params).experiment(), frame, tmp_path, tmp_path / "pre", method="tp_swav")
    assert pre.steps == 2 and pre.bundle.is_file()
    fine = run_finetune(Config.from_params(params).experiment(), frame, tmp_path, tmp_path / "fine", init_encoder=pre.bundle)
    assert fine.steps == 2
    model, norm, mcfg, bundle = load_model(fine.bundle)
    assert bundle["init"] == "finetune:tp_swav" and bundle["io"]["modality"] == "CT"
    encoder_state = torch.load(pre.bundle, weights_only=False)["norm"]
    assert norm.state_dict() == encoder_state                     # the pretraining normaliser travels on
    pred = predict_frame(model, norm, frame, tmp_path, mcfg.moe, device="cpu")
    assert list(pred.columns) == ["score", "bmd_pred", "level_pred"] and len(pred) == len(frame)
    assert pred["score"].between(0, 1).all()
    as_hologic = predict_frame(model, norm, frame, tmp_path, mcfg.moe, vendor="Hologic", device="cpu")
    odd = frame.index % 2 == 1                                     # GE Lunar rows change when asked as Hologic
    assert not np.allclose(as_hologic.loc[odd, "bmd_pred"], pred.loc[odd, "bmd_pred"])
    np.testing.assert_allclose(as_hologic.loc[~odd, "bmd_pred"], pred.loc[~odd, "bmd_pred"], rtol=1e-6)


def test_position_task_sees_all_levels_of_the_pretraining_set():
    # DXA labels only L1-L4 (13-16): without the unlabelled levels L_position is a 4-way task.
    labelled = pd.DataFrame({"level": [13, 14, 15, 16] * 5, "who_class": 1, "bmd_g_cm2": 0.9})
    pretrain = pd.DataFrame({"level": list(range(1, 19)) * 4, "who_class": 0, "bmd_g_cm2": 1.0, "t_score": 0.0})
    rows = position_rows(pretrain, len(labelled), extra=1.5, seed=3)
    assert len(rows) == 30 and rows["level"].nunique() > 4 and not set(rows["level"]) <= {13, 14, 15, 16}
    assert not {"who_class", "bmd_g_cm2", "t_score"} & set(rows.columns)      # L_position only
    assert rows.equals(position_rows(pretrain, len(labelled), extra=1.5, seed=3))   # seeded
    assert position_rows(pretrain, len(labelled), extra=0.0, seed=3).empty
    assert len(position_rows(pretrain, len(labelled), extra=100.0, seed=3)) == len(pretrain)


def test_vendor_error_unknown_embedding_and_gate_metrics(tmp_path):
    params = load_params("params.yaml", "tiny")
    params["model"]["backbone"] = {"name": "compact", "widths": [8, 16], "stem_width": 8, "embed_dim": 16}
    params["train"]["finetune"].update(epochs=1, batch_size=4)
    params["train"].update(device="cpu")
    frame = _frame(tmp_path)
    fine = run_finetune(Config.from_params(params).experiment(), frame, tmp_path, tmp_path / "fine")
    model, norm, mcfg, _ = load_model(fine.bundle)
    with pytest.raises(UnknownVendorError, match="GE Lunar"):
        predict_frame(model, norm, frame, tmp_path, mcfg.moe, vendor="GE", device="cpu")
    with pytest.raises(UnknownVendorError):
        TexturePoolDataset(frame.assign(device_vendor="Lunar"), tmp_path)
    unknown = predict_frame(model, norm, frame, tmp_path, mcfg.moe, vendor="unknown", device="cpu", gates=True)
    assert unknown["score"].between(0, 1).all()
    pred = predict_frame(model, norm, frame, tmp_path, mcfg.moe, device="cpu", gates=True)
    gates = gate_metrics(pred, frame["device_vendor"])
    n = mcfg.moe.n_experts
    for vendor, count in (("Hologic", 4), ("GE_Lunar", 4)):
        assert gates[f"gate_valid_{vendor}_n"] == count
        assert abs(sum(gates[f"gate_valid_{vendor}_e{i}"] for i in range(n)) - 1.0) < 1e-5   # gates sum to 1
