"""The browser tooling's own contract, without a browser: URLs the UI parses, typed errors that say what to do."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

import tools.browser as B
from tools.mlflow_screenshot import NoRunsError, first_site_metric, latest_evaluated, main


def test_compare_url_round_trips_run_and_experiment_ids_as_json_lists():
    runs, exps = ["a" * 32, "b" * 32], ["7"]
    url = B.compare_url("http://127.0.0.1:5000", runs, exps)
    route, _, query = urlsplit(url).fragment.partition("?")
    assert route == "/compare-runs"                                     # MLflow 3 route (Routes.compareRuns)
    q = parse_qs(query)
    assert json.loads(q["runs"][0]) == runs and json.loads(q["experiments"][0]) == exps


def test_missing_browser_names_the_missing_binary_and_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setattr(B, "CHROMEDRIVER", tmp_path / "chromedriver")
    why = B.missing_browser()
    assert str(tmp_path / "chromedriver") in why and "make browser" in why
    with pytest.raises(B.BrowserUnavailableError, match="make browser"):
        with B.chromium():
            pass


def test_first_site_metric_prefers_per_site_rows():
    keys = ["test.pooled.patient.f1", "test.site_A.patient.f1", "threshold"]
    assert first_site_metric(keys) == "test.site_A.patient.f1"
    assert first_site_metric(["threshold"]) == "threshold"


@pytest.mark.slow                                                       # creates a SQLite store (~10 s)
def test_latest_evaluated_on_a_missing_experiment_lists_the_ones_there(tmp_path):
    with pytest.raises(NoRunsError, match=r"no experiment 'nope'.*\['Default'\]"):
        latest_evaluated(f"sqlite:///{tmp_path / 'mlflow.db'}", "nope", 2)


def test_screenshot_cli_refuses_fewer_than_two_runs(capsys):
    with pytest.raises(SystemExit):
        main(["--runs", "1"])
    assert "--runs must be at least 2" in capsys.readouterr().err


@pytest.mark.slow                                                       # starts a real mlflow server (~10 s)
def test_server_that_cannot_start_raises_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(B.ServerStartError, match="UnsupportedModelRegistryStoreURIException"):
        with B.mlflow_ui("bogus:///nowhere", log, timeout=120):
            pass
    assert log.stat().st_size > 0
