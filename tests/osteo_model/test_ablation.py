"""Ablation runner: arms share one evaluation, one table block in the markdown, one MLflow run per arm."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from osteo_config import Config
from osteo_model.ablation import ARMS, BEGIN, END, markdown_table, run_ablation, tidy_metrics, write_table

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
