"""Ablation runner: arms share one evaluation, one table block in the markdown, one MLflow run per arm and seed;
seeds (mean ± SD), paired differences with permutation p, the multi-arm ROC figure and the oracle row."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from osteo import steps
from osteo_config import Config
from osteo_config.evaluate import EvaluateConfig
from osteo_model import metrics as M
from osteo_model.ablation import (ARMS, BEGIN, END, differences_table, markdown_table, paired_arm_differences,
                                  run_ablation, seed_summary, tidy_metrics, write_table)
from osteo_model.figures import arms_roc_figure
from osteo_model.oracle import ORACLE_ARM

_spec = importlib.util.spec_from_file_location("_fixture", Path(__file__).with_name("test_experiment.py"))
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


def test_write_table_replaces_only_the_marked_block(tmp_path):
    md = tmp_path / "results.md"
    md.write_text(f"# Results\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## Discussion\nkeep me\n")
    write_table(md, "| a |\n|---|", "header")
    text = md.read_text()
    assert "old" not in text and "| a |" in text and "keep me" in text and text.count(BEGIN) == 1


def test_baseline_arms_on_the_same_test_patients_with_one_run_each(tmp_path):
    params = _fixture.write_inputs(tmp_path)
    md = tmp_path / "results.md"
    base = Config.from_params(params)
    specs = {a: base.override(ARMS[a][1]).experiment() for a in ("l1_hu_110", "l1_hu_160", "radiomics_lr")}
    tidy = run_ablation(base.experiment(), specs, md, out_dir=tmp_path / "abl")
    n = tidy[(tidy["metric"] == "n") & (tidy["scope"] == "pooled") & (tidy["level"] == "patient")]
    assert n["value"].nunique() == 1 and len(n) == 3                            # same test patients for every arm
    sen = tidy[(tidy["metric"] == "sen") & (tidy["scope"] == "pooled") & (tidy["level"] == "vertebra")]
    sen = sen.set_index("arm")["value"]
    assert sen["l1_hu_160"] >= sen["l1_hu_110"]                                 # a higher HU cut flags more
    text = md.read_text()
    assert all(f"| {a} | A |" in text for a in ("l1_hu_110", "l1_hu_160", "radiomics_lr"))
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    exp = client.get_experiment_by_name("test")
    parent = client.search_runs([exp.experiment_id], "tags.method = 'ablation'")
    assert len(parent) == 1
    arms = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    assert sorted(r.info.run_name for r in arms) == ["l1_hu_110", "l1_hu_160", "radiomics_lr"]


def test_markdown_table_shows_ci_and_marks_undefined_values():
    metrics = {"site_A": {"vertebra": {"n": 10, "f1": 50.0, "f1_lo": 40.0, "f1_hi": 60.0, "sen": None},
                          "patient": {"n": 4}}}
    table = markdown_table(tidy_metrics("x", metrics), ["x"])
    row = [line for line in table.splitlines() if line.startswith("| x |")][0]
    assert "50.0 [40.0, 60.0]" in row and "n/a" in row and "10 / 4" in row


def test_unknown_arm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ablation arms"):
        spec = Config.from_params(_fixture.write_inputs(tmp_path)).experiment()
        run_ablation(spec, {"resnet_magic": spec}, tmp_path / "r.md")


def _truth_of(params) -> pd.DataFrame:
    """A synthetic simulator truth keyed by patient_id: true aBMD = the DXA BMD minus its noise, per level."""
    table = pd.read_parquet(Path(params["paths"]["data"]) / "processed" / "training_table.parquet")
    rng = np.random.default_rng(5)
    area = rng.uniform(12, 18, len(table))
    true = table["bmd_g_cm2"].to_numpy() + rng.normal(0, 0.01, len(table))
    return pd.DataFrame({"patient_id": table["patient_id"], "level": table["level"],
                         "true_bmc_g": true * area, "true_area_cm2": area})


@pytest.mark.slow    # > 20 s: `make test-slow` (the PACS client's retries / Dask start-up / long loops)
def test_seeds_give_mean_sd_paired_differences_roc_figure_and_oracle_row(tmp_path):
    params = _fixture.write_inputs(tmp_path)
    params["evaluate"].update(n_perm=50)
    base = Config.from_params(params)
    seeds = (1234, 1235, 1236)
    specs = {a: [base.override(ARMS[a][1]).override({"train": {"seed": s}}).experiment() for s in seeds]
             for a in ("scratch", "l1_hu_160")}
    md = tmp_path / "docs" / "results.md"
    tidy = run_ablation(base.experiment(), specs, md, out_dir=tmp_path / "abl", truth=_truth_of(params))
    scores = [pd.read_parquet(tmp_path / "abl" / "scratch" / f"seed_{s}" / "predictions.parquet")["score"]
              for s in seeds]
    assert not np.allclose(scores[0], scores[1]) and not np.allclose(scores[1], scores[2])   # different fits
    summary = seed_summary(tidy)
    s = summary[(summary["scope"] == "pooled") & (summary["level"] == "vertebra")].set_index(["arm", "metric"])
    assert s.loc[("scratch", "auroc"), "n_seeds"] == 3
    # BMD MAE: continuous, so it differs between seeds (the tiny fixture's AUROC can be 1.0 for every seed)
    per_seed = tidy[(tidy["arm"] == "scratch") & (tidy["scope"] == "pooled") & (tidy["level"] == "vertebra")
                    & (tidy["metric"] == "bmd_mae")]["value"].astype(float)
    assert len(per_seed) == 3
    assert s.loc[("scratch", "bmd_mae"), "mean"] == pytest.approx(per_seed.mean())
    assert s.loc[("scratch", "bmd_mae"), "sd"] == pytest.approx(per_seed.std()) and per_seed.std() > 0
    assert s.loc[("l1_hu_160", "sen"), "sd"] == 0.0                              # a fixed rule: no seed variance
    oracle = tidy[tidy["arm"] == ORACLE_ARM].set_index(["scope", "level", "metric"])["value"]
    assert oracle[("pooled", "vertebra", "bmd_r")] > 0.9                          # truth tracks the DXA it labels
    text = md.read_text()
    assert "| scratch | pooled | 3 |" in text and " ± " in text and f"| {ORACLE_ARM} | pooled |" in text
    assert "l1_hu_160 - scratch" in text and "p_perm" in text
    assert "](figures/ablation_roc.png)" in text and (md.parent / "figures" / "ablation_roc.png").stat().st_size > 0
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    exp = client.get_experiment_by_name("test")
    parent = client.search_runs([exp.experiment_id], "tags.method = 'ablation'")[0]
    m = parent.data.metrics
    auroc = tidy[(tidy["arm"] == "scratch") & (tidy["scope"] == "pooled") & (tidy["level"] == "vertebra")
                 & (tidy["metric"] == "auroc")]["value"].astype(float)
    assert m["scratch.test.pooled.vertebra.auroc.mean"] == pytest.approx(auroc.mean())
    assert 0 < m["l1_hu_160_minus_scratch.test.pooled.patient.auroc.p_perm"] <= 1
    assert "plots/ablation_roc.png" in [f.path for f in client.list_artifacts(parent.info.run_id, "plots")]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 6


def _patients(y, score, t=0.5, pid=None, site=None):
    n = len(y)
    return pd.DataFrame({"patient_id": pid if pid is not None else [f"p{i}" for i in range(n)],
                         "site": site if site is not None else np.where(np.arange(n) < n // 2, "A", "B"),
                         "y_true": y, "score": score, "y_pred": (np.asarray(score) >= t).astype(int)})


def test_paired_arm_differences_pool_seeds_and_test_against_the_reference():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    good = [np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, 80), 0, 1) for _ in range(3)]
    noise = [rng.random(80) for _ in range(3)]
    cfg = EvaluateConfig(n_boot=100, n_perm=200, seed=1)
    tables = {"good": [_patients(y, g) for g in good], "noise": [_patients(y, r) for r in noise],
              "same": [_patients(y, g) for g in good]}
    d = paired_arm_differences(tables, "good", cfg).set_index(["arm", "scope", "metric"])
    mean_auc = lambda scores: np.mean([M.auroc(y, s) for s in scores])          # noqa: E731
    assert d.loc[("noise", "pooled", "auroc"), "diff"] == pytest.approx(mean_auc(noise) - mean_auc(good))
    assert d.loc[("noise", "pooled", "auroc"), "hi"] < 0 and d.loc[("noise", "pooled", "auroc"), "p_perm"] < 0.02
    assert d.loc[("same", "pooled", "auroc"), "p_perm"] == 1.0 and d.loc[("same", "pooled", "f1"), "diff"] == 0
    assert d.loc[("noise", "site_A", "auroc"), "n_patients"] == 40
    assert "good" not in d.index.get_level_values("arm")
    table = differences_table(d.reset_index())
    assert "| noise - good | pooled | 80 |" in table


def test_arms_roc_figure_has_one_curve_per_arm_with_its_auroc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    curves = {"a": (y, rng.random(50)), "b": (y, y + rng.normal(0, 0.5, 50)), "one class": (np.zeros(5), np.ones(5))}
    fig = arms_roc_figure(curves)
    ax = fig.axes[0]
    labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(labelled) == 2                                                     # the one-class arm has no curve
    for line, arm in zip(labelled, ("a", "b")):
        assert line.get_label() == f"{arm} (AUROC {M.auroc(*curves[arm]):.3f})"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in labelled]


def test_ablation_edge_offsets_train_seed_per_seed(tmp_path):
    params = _fixture.write_inputs(tmp_path)
    params["paths"].update(models=str(tmp_path / "models"), truth=str(tmp_path / "no-truth"))
    params["evaluate"].update(n_perm=20)
    tidy = steps.ablation(Config.from_params(params), ["l1_hu_110", "l1_hu_160"], tmp_path / "r.md",
                          tracking=False, seeds=2)
    assert sorted(tidy.loc[tidy["arm"] == "l1_hu_110", "seed"].dropna().unique()) == [1234, 1235]
    assert (tmp_path / "models" / "ablation" / "l1_hu_110" / "seed_1235" / "predictions.parquet").is_file()
    assert ORACLE_ARM not in set(tidy["arm"])                                     # no truth file: no oracle row
    with pytest.raises(ValueError, match="seeds"):
        steps.ablation(Config.from_params(params), ["l1_hu_110"], tmp_path / "r.md", tracking=False, seeds=0)


def test_oracle_truth_is_keyed_by_the_ingestion_pseudonym_without_mrns(tmp_path, monkeypatch):
    from features.pseudonym import Pseudonymizer

    params = _fixture.write_inputs(tmp_path)
    params["paths"].update(truth=str(tmp_path / "truth"))
    (tmp_path / "truth").mkdir()
    pd.DataFrame({"mrn": ["M1", "M1", "M2"], "level": [13, 14, 13], "true_bmc_g": [12.0, 13.0, 9.0],
                  "true_area_cm2": [15.0, 15.5, 14.0], "age": [70, 70, 60]}).to_parquet(tmp_path / "truth" / "truth.parquet")
    key = "k9Xq2LmP7vR4tZ8wB1nC6yH3jD5fG0sAeUoIiKpQ"
    monkeypatch.setenv(Config.from_params(params).ingest.key_env, key)
    truth = steps.oracle_truth(Config.from_params(params))
    expected = Pseudonymizer(key=key.encode(), date_shift_max_days=365).patient_id("M1")
    assert truth["patient_id"].iloc[0] == expected and "mrn" not in truth.columns and "age" not in truth.columns
