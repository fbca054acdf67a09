"""End to end through MLflow on a tiny synthetic fixture: runs, tags, params, metrics, artifacts, pyfunc model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from osteo_model.companion import PlattCalibration, patient_max, select_threshold
from osteo_model.experiment import assemble_frames, run_training
from osteo_model.pipeline import load_model, position_rows, predict_frame
from osteo_model.tracking import file_sha256, flatten
from osteo_config import Config

pytestmark = pytest.mark.slow          # one tiny pretrain + finetune + MLflow round trip (~15 s) shared by the module

_spec = importlib.util.spec_from_file_location("_fixture", Path(__file__).with_name("test_experiment.py"))
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    params = _fixture.write_inputs(root)
    params["model"]["companion"].update(threshold_level="patient", calibrate=True)     # the demo/paper defaults
    result = run_training(Config.from_params(params).experiment(), "tp_swav", tracking=True, out_dir=root / "out")
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    return params, result, client, root


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["stage"]: r for r in runs}


def test_parent_and_stage_runs_carry_tags_params_and_data_version(tracked):
    params, result, client, root = tracked
    parent = client.get_run(result.run_id)
    tags = parent.data.tags
    assert {k: tags[k] for k in ("method", "backbone", "pretrain", "moe", "loss", "profile")} == {
        "method": "tp_swav", "backbone": "compact", "pretrain": "tp_swav", "moe": "true", "loss": "unified",
        "profile": "tiny"}
    assert len(tags["data_version"]) == 16 and tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["split_hash"] == "f" * 64 and len(tags["params_hash"]) == 16       # registry lineage tags
    p = parent.data.params
    assert p["model.backbone.widths"] == "[8, 8]" and p["train.finetune.epochs"] == "1"
    assert p["ingest.spacing_mm"] == json.dumps(params["ingest"]["spacing_mm"]) and p["profile"] == "tiny"
    assert p["texture.bin_width"] == str(params["texture"]["bin_width"])
    assert p["training_table_sha256"] == file_sha256(root / "processed" / "training_table.parquet")
    assert p["splits_sha256"] == "f" * 64
    children = _children(client, result.run_id)
    assert set(children) == {"pretrain", "finetune", "evaluate-valid"}
    assert all(c.data.tags["data_version"] == tags["data_version"] for c in children.values())
    experiment = client.get_experiment(parent.info.experiment_id)                  # opens on its training runs
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_per_step_losses_and_per_site_validation_metrics_are_logged(tracked):
    params, result, client, _ = tracked
    children = _children(client, result.run_id)
    cfg = Config.from_params(params)
    frames = assemble_frames(cfg.paths.data_paths())
    n_position = len(position_rows(frames.unlabeled, len(frames.train), cfg.model.moe.position_extra, cfg.finetune.seed))
    n_train = len(frames.train) + n_position                                     # labelled + L_position-only rows
    history = client.get_metric_history(children["finetune"].info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, -(-n_train // 8) + 1))    # one point per optimizer step
    assert client.get_metric_history(children["pretrain"].info.run_id, "loss_ssl")
    valid = children["evaluate-valid"].data.metrics
    for site in ("A", "B"):                                                       # the sites with valid patients
        assert valid[f"valid.site_{site}.vertebra.n"] == result.metrics["valid"][f"site_{site}"]["vertebra"]["n"]
    assert "valid.site_D.vertebra.n" not in valid                                 # site D is test only
    assert valid["threshold"] == pytest.approx(result.threshold)
    parent = client.get_run(result.run_id).data.metrics                           # parents compare side by side
    assert parent["test.site_D.patient.n"] == result.metrics["test"]["site_D"]["patient"]["n"]
    assert parent["valid.site_A.vertebra.n"] == valid["valid.site_A.vertebra.n"]


def test_plots_are_logged_as_artifacts(tracked):
    _, result, client, _ = tracked
    children = _children(client, result.run_id)

    def names(run_id):
        return {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/loss_curves.png" in names(result.run_id)
    assert "plots/texture_pool_montage.png" in names(children["pretrain"].info.run_id)
    assert {"plots/confusion_valid.png", "plots/roc_valid.png", "plots/confusion_test.png"} <= names(
        children["evaluate-valid"].info.run_id)


def test_logged_model_predicts_its_input_example_and_carries_no_identifiers(tracked):
    _, result, _, root = tracked
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(root / "dl")))
    meta = Model.load(local)
    example = meta.load_input_example(str(local))
    assert isinstance(example, dict) and example["pools"].shape[:2] == (1, 5)       # a model with descriptors:
    assert example["descriptors"].shape == (1, len(contract_names := meta.metadata["io_contract"]["descriptors"]))
    assert contract_names == tracked[0]["model"]["moe"]["descriptors"]              # the contract names them in order
    out = mlflow.pyfunc.load_model(result.model_uri).predict(example, params={"device_vendor": "GE Lunar"})
    assert list(out.columns) == ["score", "bmd_g_cm2", "level", "screen_positive"] and len(out) == 1
    assert 0.0 <= out["score"].iloc[0] <= 1.0
    assert out["screen_positive"].iloc[0] == int(out["score"].iloc[0] >= result.threshold)
    contract = meta.metadata["io_contract"]                                       # the I/O contract travels along
    assert contract["modality"] == "CT" and contract["threshold"] == pytest.approx(result.threshold)
    assert contract["roi_shape"] == tracked[0]["ingest"]["roi_shape"] and "table" in contract["pyfunc_inputs"]
    table = pd.read_parquet(root / "processed" / "training_table.parquet")
    secrets = set(table["patient_id"]) | set(table["study_id"]) | {str(root), "pool_path", "patient", "study"}
    texts = [json.dumps(meta.signature.to_dict()), json.dumps({k: v.tolist() for k, v in example.items()})]
    texts += [p.read_text() for p in local.iterdir() if p.name.startswith(("input_example", "serving_input"))]
    assert not [s for s in secrets for t in texts if s in t]


def test_stored_threshold_is_the_validation_choice(tracked):
    params, result, _, root = tracked
    model, norm, mcfg, state = load_model(result.model_path)
    frames = assemble_frames(Config.from_params(params).paths.data_paths())
    raw = predict_frame(model, norm, frames.valid, frames.root, mcfg.moe, input_shape=mcfg.input_shape)["score"]
    labels = (frames.valid["who_class"] == 2).to_numpy().astype(int)
    assert mcfg.companion.calibrate and mcfg.companion.threshold_level == "patient"     # as the fixture set
    try:
        cal = PlattCalibration.fit(raw.to_numpy(), labels)                              # fitted on valid only
    except ValueError:                    # a model that does not rank valid: stored uncalibrated, the gates judge it
        cal = None
        assert state["calibration"] is None
    else:
        assert state["calibration"] == pytest.approx({"a": cal.a, "b": cal.b})
    scores = raw.to_numpy() if cal is None else cal.apply(raw.to_numpy())
    p_scores, p_labels = patient_max(scores, labels, frames.valid["patient_id"].to_numpy())
    choice = select_threshold(p_scores, p_labels, mcfg.companion.min_sensitivity)     # patient-level constraint
    assert state["threshold"]["threshold"] == pytest.approx(choice.threshold)
    assert state["threshold"]["n_pos"] + state["threshold"]["n_neg"] == frames.valid["patient_id"].nunique()
    assert state["threshold"]["sensitivity"] >= mcfg.companion.min_sensitivity
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(choice.threshold)
    assert {"site_A", "pooled"} <= set(metrics["test"]) and metrics["valid"]["threshold"] == metrics["threshold"]
    assert (result.model_path.parent / "drift_reference.json").is_file()              # serving references beside it
    assert "interval" in metrics["serving"] and metrics["serving"]["drift_features"]


def test_flatten_renders_nested_sections_with_dotted_keys():
    assert flatten({"a": {"b": [1, 2], "c": {"d": None}}, "e": 0.5}) == {"a.b": "[1, 2]", "a.c.d": "None", "e": "0.5"}


def test_dvc_stages_pretrain_then_finetune_share_one_parent_run(tmp_path, monkeypatch):
    """`osteo train pretrain` opens the parent run, `osteo train finetune` continues it: one pipeline, one parent."""
    from osteo_model.frames import ExperimentError
    from osteo_model.stages import run_finetune_stage, run_pretrain_stage
    params = _fixture.write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    pre = run_pretrain_stage(Config.from_params(params).experiment(), "tp_swav", tmp_path / "models")
    fine = run_finetune_stage(Config.from_params(params).experiment(), "tp_swav", tmp_path / "models", tmp_path / "metrics" / "train.json")
    assert pre["run_id"] is not None and fine["run_id"] == pre["run_id"]
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    assert set(_children(client, pre["run_id"])) == {"pretrain", "finetune", "evaluate-valid"}
    assert client.get_run(pre["run_id"]).data.tags["method"] == "tp_swav"
    with pytest.raises(ExperimentError, match="run `osteo train pretrain` first"):
        run_finetune_stage(Config.from_params(params).experiment(), "swav", tmp_path / "models", tmp_path / "metrics" / "train.json")


def test_pyfunc_reads_descriptors_from_a_table_or_a_dict_and_refuses_pools_alone(tracked):
    # purpose: the served model gets the same descriptors as training from either input form; without them
    # it is a typed error, never a silent default
    from osteo_model.errors import DescriptorInputError
    params, result, _, root = tracked
    names = list(params["model"]["moe"]["descriptors"])
    test = pd.read_parquet(root / "processed" / "training_table.parquet").head(3)
    pools_dir = root / "interim" / "texture"
    table = test[names].assign(pool_uri=[str(pools_dir / p) for p in test["pool_path"]])
    mlflow.set_tracking_uri(params["tracking"]["uri"])                  # other tests may have moved the globals
    mlflow.set_registry_uri(params["tracking"]["uri"])
    model = mlflow.pyfunc.load_model(result.model_uri)
    by_table = model.predict(table, params={"device_vendor": "GE Lunar"})
    pools = np.stack([np.load(pools_dir / p) for p in test["pool_path"]])
    by_dict = model.predict({"pools": pools, "descriptors": test[names].to_numpy(np.float32)},
                            params={"device_vendor": "GE Lunar"})
    np.testing.assert_allclose(by_table["bmd_g_cm2"], by_dict["bmd_g_cm2"], rtol=1e-5)
    other = model.predict({"pools": pools, "descriptors": test[names].to_numpy(np.float32) * 1.3},
                          params={"device_vendor": "GE Lunar"})
    assert not np.allclose(other["bmd_g_cm2"], by_dict["bmd_g_cm2"])          # the descriptors are read
    with pytest.raises(DescriptorInputError, match="descriptors"):
        model.predict(pools, params={"device_vendor": "GE Lunar"})
    with pytest.raises(DescriptorInputError, match=names[0]):
        model.predict(table.drop(columns=[names[0]]), params={"device_vendor": "GE Lunar"})
