"""Training pipeline (osteo_model.experiment) on a tiny synthetic texture-pool fixture, without MLflow.

The fixture writer ``write_inputs`` is shared with test_tracking.py and test_ablation.py.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from osteo_config.params import load_params
from osteo_model.stages import run_finetune_stage, run_pretrain_stage
from osteo_model.experiment import ExperimentError, assemble_frames, run_training
from osteo_config import Config

SHAPE = (5, 12, 12, 8)            # (C, X, Y, Z) tiny pools
SITES = {"A": ["train"] * 4 + ["valid"] * 3 + ["test"] * 2, "B": ["train"] * 2 + ["valid"] + ["test"] * 2,
         "D": ["test"] * 2}
VENDOR = {"A": "Hologic", "B": "GE Lunar", "D": "Hologic"}


def write_inputs(root, seed: int = 0) -> dict:
    """Write pools, texture.parquet, vertebrae.parquet, splits (+ sidecar) and a training table under ``root``.

    Patient i has levels 11-16; L1-L4 (13-16) are labelled. who_class follows a latent density that also sets
    the HU channel, so the task is learnable. Returns tiny-profile params pointing at ``root``.
    """
    rng = np.random.default_rng(seed)
    interim, pools = root / "interim", root / "interim" / "texture" / "pools"
    rows, vert, splits, table = [], [], [], []
    k = 0
    for site, assignment in SITES.items():
        for split in assignment:
            pid, sid = hashlib.sha256(f"p{k}".encode()).hexdigest()[:20], hashlib.sha256(f"s{k}".encode()).hexdigest()[:20]
            density = [-1.5, 0.0, 1.5][k % 3]                      # -> who_class 2, 1, 0 (every split gets all)
            splits.append({"patient_id": pid, "site": site, "split": split, "u": 0.5})
            for level in range(11, 17):
                pool = rng.normal(0, 1, SHAPE).astype(np.float32)
                pool[0] = 150 + 60 * density + 30 * pool[0]             # HU channel
                pool[1:] *= np.array([900, 9, 40, 2], dtype=np.float32)[:, None, None, None]
                pool[2, 0, 0, 0] = np.nan                               # JointAverage NaN at a mask border
                sha = hashlib.sha256(pool.tobytes()).hexdigest()
                (pools / sha[:2]).mkdir(parents=True, exist_ok=True)
                np.save(pools / sha[:2] / f"{sha}.npy", pool)
                base = {"patient_id": pid, "study_id": sid, "level": level}
                rows.append({**base, "pool_path": f"pools/{sha[:2]}/{sha}.npy", "pool_sha256": sha,
                             "pool_shape": ",".join(map(str, SHAPE))})
                hu = float(np.nanmean(pool[0]))
                width, height, depth = rng.uniform(38, 50), rng.uniform(22, 28), rng.uniform(28, 36)
                desc = {"shell_hu": hu + 250 + rng.normal(0, 20), "proj_hu_mm": hu * depth + rng.normal(0, 300), "proj_path_mm": depth + rng.uniform(0, 6),
                        "proj_area_mm2": width * height, "body_height_mm": height, "body_width_mm": width,
                        "body_depth_mm": depth, "body_voxels": int(width * height * depth * 0.8)}
                vert.append({**base, "hu_mean": hu, "site": site, **desc})
                if level >= 13:
                    bmd = 0.9 + 0.12 * density + rng.normal(0, 0.02)
                    table.append({**base, **rows[-1], **desc, "vertebra_id": f"{pid}:{sid}:{level}", "site": site,
                                  "scanner": "siemens_force", "sex": "F", "age_at_ct": 70.0, "hu_mean": hu,
                                  "original_firstorder_Mean": hu + rng.normal(0, 5), "original_glcm_Contrast": rng.normal(),
                                  "device_vendor": VENDOR[site], "bmd_g_cm2": bmd, "t_score": (bmd - 1.0) / 0.11,
                                  "who_class": 2 if density < 0 else (1 if density == 0 else 0), "split": split})
            k += 1
    (interim / "ingest").mkdir(parents=True, exist_ok=True)
    (interim / "splits").mkdir(parents=True, exist_ok=True)
    (root / "processed").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(interim / "texture" / "texture.parquet")
    pd.DataFrame(vert).to_parquet(interim / "ingest" / "vertebrae.parquet")
    pd.DataFrame(splits).to_parquet(interim / "splits" / "splits.parquet")
    (interim / "splits" / "splits.sha256.json").write_text(json.dumps({"sha256": "f" * 64}))
    pd.DataFrame(table).to_parquet(root / "processed" / "training_table.parquet")
    params = load_params("params.yaml", "tiny")
    params["paths"].update(data=str(root), interim=str(interim))
    params["model"]["backbone"].update(widths=[8, 8], stem_width=8, embed_dim=16)
    params["model"]["swav"].update(proj_hidden=16, proj_dim=8, n_prototypes=4)
    params["model"]["moe"].update(expert_hidden=8)
    params["model"]["companion"].update(pseudo_rounds=1)
    params["model"]["input_shape"] = [10, 10, 8]
    params["train"].update(device="cpu")
    for stage in ("pretrain", "finetune"):
        params["train"][stage].update(epochs=1, batch_size=8)
    params["evaluate"] = {"n_boot": 20}
    params["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_location": str(root / "mlartifacts"),
                          "experiment": "test", "log_system_metrics": False}
    return params


def test_frames_pretrain_on_every_vertebra_of_train_patients_only(tmp_path):
    params = write_inputs(tmp_path)
    f = assemble_frames(Config.from_params(params).paths.data_paths())
    splits = pd.read_parquet(tmp_path / "interim" / "splits" / "splits.parquet")
    train_patients = set(splits.loc[splits["split"] == "train", "patient_id"])
    assert set(f.pretrain["patient_id"]) == train_patients                     # no valid/test patient leaks in
    assert len(f.pretrain) == 6 * len(train_patients)                          # all levels, labelled or not
    assert set(f.unlabeled["level"]) == {11, 12}                               # labelled L1-L4 removed
    assert f.pretrain["device_vendor"].notna().all()                           # patient's DXA vendor carried over
    assert not set(f.test["patient_id"]) & set(f.train["patient_id"])
    l1 = f.train.loc[f.train["level"] == 13].set_index("study_id")["hu_mean"]
    np.testing.assert_allclose(f.train["l1_hu"], f.train["study_id"].map(l1))  # every row scored by its study's L1


def test_missing_inputs_and_unknown_method_raise_typed_errors(tmp_path):
    params = write_inputs(tmp_path)
    with pytest.raises(ExperimentError, match="unknown method"):
        run_training(Config.from_params(params).experiment(), "resnet_magic", tracking=False, out_dir=tmp_path / "m")
    (tmp_path / "processed" / "training_table.parquet").unlink()
    with pytest.raises(ExperimentError, match="training-table"):
        run_training(Config.from_params(params).experiment(), "l1_hu", tracking=False, out_dir=tmp_path / "m")


def test_l1_hu_rule_keeps_its_fixed_cut_and_writes_private_predictions(tmp_path):
    params = write_inputs(tmp_path)
    params["model"]["baselines"]["l1_hu_thresholds"] = [150]
    res = run_training(Config.from_params(params).experiment(), "l1_hu", tracking=False, out_dir=tmp_path / "m")
    assert res.threshold == 0.5 and res.threshold_choice is None             # the rule is never tuned on valid
    pred = pd.read_parquet(tmp_path / "m" / "predictions.parquet")
    test = pred[pred["split"] == "test"]
    f = assemble_frames(Config.from_params(params).paths.data_paths())
    expected = (f.test["l1_hu"] <= 150).to_numpy()
    np.testing.assert_array_equal(test["score"].to_numpy() >= 0.5, expected)
    assert not [c for c in pred.columns if "path" in c or c == "study_id"]    # pseudonymous ids only, no paths
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["site_D"]["vertebra"]["n"] == len(f.test[f.test["site"] == "D"])


def test_stage_entry_points_chain_pretrain_into_finetune(tmp_path, monkeypatch):
    params = write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    pre = run_pretrain_stage(Config.from_params(params).experiment(), tracking=False)
    assert (tmp_path / "models" / "pretrain" / "encoder.pt").is_file() and pre["run_id"] is None
    fine = run_finetune_stage(Config.from_params(params).experiment(), tracking=False)
    assert (tmp_path / "models" / "finetune" / "model.pt").is_file()
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["method"] == "tp_swav" and metrics["threshold"] == pytest.approx(fine["threshold"])
    assert (tmp_path / "models" / "pretrain" / "encoder.pt").is_file()        # finetune keeps the encoder
