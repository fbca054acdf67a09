"""What reviewers see in the MLflow UI, checked in headless Chromium against a real tracking store.

Two real training runs (tp_swav and scratch) on the tiny fixture go into a tmp SQLite store; ``mlflow server``
serves it on 127.0.0.1; the runs table must list both, and the comparison view must put each run's per-site
metrics side by side, in that run's column, with the values the store holds.
"""
from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

import pytest

from osteo_model.tracking import experiment_ui_link
from tools.browser import (PNG_MAGIC, chromium, metric_row, missing_browser, mlflow_ui, model_url, open_comparison,
                           open_model_card, open_runs_table, screenshot, wait_for_text)
from tools.mlflow_screenshot import Compared, latest_evaluated, take
from osteo_config import Config

_MISSING = missing_browser()
pytestmark = [
    pytest.mark.slow,       # two tiny trainings (~30 s) + an MLflow server + Chromium, shared by the module
    pytest.mark.skipif(_MISSING is not None, reason=f"browser test needs headless Chromium: {_MISSING}"),
]

METHODS = ("tp_swav", "scratch")                                     # two parent runs, oldest first
# per-site metrics defined on the tiny fixture whatever the threshold (its test site A holds no osteoporotic
# patient, so sensitivity, F1 and AUROC there are undefined and not logged)
SITE_METRICS = ("test.site_A.vertebra.bmd_r", "test.site_A.patient.spe", "valid.site_A.vertebra.sen")

_spec = importlib.util.spec_from_file_location(
    "_fixture", Path(__file__).resolve().parents[1] / "osteo_model" / "test_experiment.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store with the two methods trained; returns (tracking URI, experiment name)."""
    from osteo_model.experiment import run_training

    root = tmp_path_factory.mktemp("mlflow_ui")
    params = _fixture.write_inputs(root)
    # the wide path's closed-form fit is the same for both methods and dominates the tiny fixture's few
    # epochs, so their per-site metrics would agree to 3 decimals: this UI test needs two runs that differ
    params["model"]["moe"]["wide"] = False
    results = {method: run_training(Config.from_params(params).experiment(), method, tracking=True,
                                    out_dir=root / "out" / method) for method in METHODS}
    return params["tracking"]["uri"], params["tracking"]["experiment"], root, results


@pytest.fixture(scope="module")
def compared(store) -> Compared:
    uri, experiment, *_ = store
    return latest_evaluated(uri, experiment, n=len(METHODS))


@pytest.fixture(scope="module")
def ui(store):
    uri, _, root, _ = store
    with mlflow_ui(uri, root / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def shown_value_matches(shown: str, value: float) -> bool:
    """``shown`` is MLflow's rendering of ``value`` (Utils.formatMetric: 3 decimals < 10, 2 < 100, then 1)."""
    if math.isnan(value):
        return shown.lower() == "nan"
    places = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    tolerance = max(0.5 * 10 ** -places, 5e-4 * abs(value))           # 1e-3 < |v|: rounding; tiny |v|: 3-digit exponent
    return abs(float(shown) - value) <= tolerance


def _run_data(store, run_ids):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store[0])
    return [client.get_run(r).data for r in run_ids]


def test_latest_evaluated_picks_each_parents_evaluation_child_newest_first(compared):
    assert compared.parent_names == list(reversed(METHODS))           # newest parent first
    assert len(set(compared.run_ids)) == len(METHODS)
    assert compared.metric_keys == sorted(compared.metric_keys)       # the UI's row order
    assert set(SITE_METRICS) <= set(compared.metric_keys)


def test_runs_table_lists_both_training_runs_with_stages_folded(browser, ui, compared):
    text = open_runs_table(browser, ui, compared.experiment_id, METHODS)
    assert all(name in text for name in METHODS)
    assert "evaluate-valid" not in text                                # stage runs sit folded under their parent


def test_the_link_the_platform_prints_opens_the_training_runs_not_the_genai_views(browser, ui, compared):
    browser.get(experiment_ui_link(ui, compared.experiment_id))           # the link a reviewer clicks first
    text = wait_for_text(browser, METHODS)
    assert "/runs" in browser.current_url and "traces" not in browser.current_url, browser.current_url
    assert all(name in text for name in METHODS)


def test_comparison_shows_each_runs_per_site_metrics_in_its_own_column(browser, ui, store, compared):
    text = open_comparison(browser, ui, compared.run_ids, [compared.experiment_id])
    data = _run_data(store, compared.run_ids)
    assert f"method {' '.join(d.tags['method'] for d in data)}" in text  # columns follow the URL's run order
    truth = [d.metrics for d in data]
    keys = compared.metric_keys
    differing = next((k for k in keys if ".site_" in k and round(truth[0][k], 3) != round(truth[1][k], 3)), None)
    assert differing, "two methods gave identical per-site metrics: the fixture no longer tells them apart"
    for metric in (*SITE_METRICS, differing):                          # `differing` catches swapped columns
        shown = metric_row(browser, metric, keys.index(metric))
        assert len(shown) == len(compared.run_ids), (metric, shown)
        for column, (value_text, run_metrics) in enumerate(zip(shown, truth)):
            assert shown_value_matches(value_text, run_metrics[metric]), (metric, column, value_text,
                                                                           run_metrics[metric])


def test_screenshots_are_real_pictures_of_the_pages(ui, compared, tmp_path):
    import matplotlib.image as mpimg

    compare, table = take(ui, compared, tmp_path / "compare.png")
    assert table == tmp_path / "compare_runs.png"
    for png in (compare, table):
        head = png.read_bytes()[:24]
        assert head[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", head[16:24])               # IHDR: the viewport, not a blank stub
        assert width >= 1200 and height >= 900, (png, width, height)
        pixels = mpimg.imread(png)                                      # (H, W, C) floats in [0, 1]
        assert pixels.std() > 0.05                                      # text and tables, not one flat colour
    assert struct.unpack(">II", compare.read_bytes()[16:24])[1] > 1500  # tall enough for metrics and tags


@pytest.fixture(scope="module")
def registered(store):
    """The tp_swav run's model registered as a version, as `osteo registry promote` does (gates + model card)."""
    from osteo_model.evaluate import EvaluateConfig, evaluate_predictions  # noqa: F401  (metrics layout)
    from registry.gates import GateRule, GatesConfig, evaluate_gates
    from registry.registry import register_candidate

    uri, _, _, results = store
    res = results["tp_swav"]
    metrics = {**res.metrics["test"], "threshold": res.threshold}
    gates = GatesConfig(rules=(GateRule("pooled", "vertebra", "auroc", min=0.0),))
    report = evaluate_gates(metrics, None, gates)
    lineage = {"data_version": "dvc:ui-test", "split_hash": "ab12", "params_hash": "cd34", "method": "tp_swav",
               "training_run_id": res.run_id}
    version = register_candidate(res.model_uri, "osteo-ui-test", lineage, metrics, report, tracking_uri=uri,
                                 actor="ci")
    return "osteo-ui-test", version, metrics


def test_the_registered_model_and_its_version_show_their_model_card(browser, ui, registered, tmp_path):
    from osteo_config.screen import INTENDED_USE

    name, version, metrics = registered
    browser.get(model_url(ui, name))
    text = wait_for_text(browser, ["opportunistic screening", "Promotion"])
    assert INTENDED_USE.split(";")[0] in text and f"Version {version}" in text
    text = open_model_card(browser, ui, name, version, [f"Version {version}", "dvc:ui-test", "site_A"])
    assert INTENDED_USE.split(";")[0] in text and "ab12" in text and "gates passed" in text
    n_a = metrics["site_A"]["patient"]["n_patients"]
    assert any(line.startswith("site_A") and str(n_a) in line for line in text.splitlines()), text
    png = screenshot(browser, tmp_path / "model_card.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
