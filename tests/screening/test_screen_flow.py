"""The Prefect flow ``screen`` on a real 2-worker ``distributed.LocalCluster`` (prefect-dask's DaskTaskRunner).

Each study is a ``screen-study`` task on the cluster; the tables must be identical to the serial
``screen_folder`` run of the same export (same champion, same key), and a study's task must retry on a
network error or a timeout and never on a data error.
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow          # the tiny champion (~20 s), a serial batch, then a 2-worker cluster

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_tsb = _load("_screen_batch_fixture_flow", "tests/screening/test_screen_batch.py")
champion, export = _tsb.champion, _tsb.export


@pytest.fixture
def prefect_home(prefect_api):
    """The session's Prefect server (tests/conftest.py), not an embedded server per test."""
    return prefect_api


def _tables(batch_dir: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name, key in (("vertebrae", ["study_id", "level"]), ("patients", ["study_id"]),
                      ("quarantine", ["item", "kind", "reason", "detail", "stage"])):
        df = pd.read_parquet(batch_dir / f"{name}.parquet").drop(columns=["batch_id"], errors="ignore")
        out[name] = df.sort_values([k for k in key if k in df.columns]).reset_index(drop=True)
    return out


def test_flow_on_a_two_worker_local_cluster_matches_the_serial_batch(champion, export, tmp_path, prefect_home,
                                                                      monkeypatch):
    monkeypatch.delenv("OSTEO_PROFILE", raising=False)
    params, uri = champion
    raw, segmenter = export
    serial = _tsb._run(params, uri, raw, tmp_path / "serial", segmenter=segmenter)

    p = copy.deepcopy(params)
    p.pop("profiles", None)
    p["profile"] = "demo"
    p["compute"] = {"dask_address": None, "local_workers": 2, "connect_timeout_s": 30}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(p))
    from flows.screen import screen
    state = screen(str(pfile), str(raw), str(tmp_path / "dask"), segmenter=segmenter, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    for k in ("studies_seen", "screened", "quarantined", "quarantined_by_reason", "vertebrae", "vertebrae_excluded",
              "screen_positive", "reports_released"):
        assert summary[k] == getattr(serial, k), k
    assert summary["screened"] == 3 and summary["quarantined"] == 1

    a, b = _tables(Path(serial.batch_dir)), _tables(Path(summary["batch_dir"]))
    for name in a:
        assert len(a[name]) > 0, name
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    # one work folder per study, written by its own task
    assert len(list((Path(summary["batch_dir"]) / "work" / "studies").iterdir())) == 4


def test_study_tasks_retry_on_network_errors_and_timeouts_only(prefect_home):
    from prefect import flow, task

    from flows.screen import transient

    calls: dict[str, int] = {}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=transient, persist_result=False)
    def flaky(kind: str) -> str:
        calls[kind] = calls.get(kind, 0) + 1
        if calls[kind] == 1:
            raise {"net": ConnectionResetError("peer reset"), "timeout": TimeoutError("slow"),
                   "data": ValueError("bad study")}[kind]
        return "ok"

    @flow(persist_result=False)
    def run(kind: str):
        return flaky(kind, return_state=True)

    assert run("net").result() == "ok" and calls["net"] == 2
    assert run("timeout").result() == "ok" and calls["timeout"] == 2
    state = run("data", return_state=True)
    assert state.is_failed() and calls["data"] == 1               # a data error fails at once, no retry


def test_an_unreachable_dask_address_is_a_typed_error_naming_it():
    from features.parallel import DaskUnreachableError
    from flows.screen import dask_runner
    from osteo_config.compute import ComputeConfig
    from osteo_testing.orthanc import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(DaskUnreachableError, match=address.replace(".", r"\.")):
        dask_runner(ComputeConfig(dask_address=address, connect_timeout_s=2))
    runner = dask_runner(ComputeConfig(local_workers=2))        # no address: a LocalCluster of local_workers
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["threads_per_worker"] == 1
