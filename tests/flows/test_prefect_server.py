"""The session's shared Prefect server (tests/conftest.py) really receives the in-process flow runs."""
from __future__ import annotations

import json
import urllib.request

import pytest


@pytest.mark.slow    # starts a Prefect server
def test_in_process_flow_runs_are_recorded_on_the_shared_server(prefect_api):
    from prefect import flow

    @flow(name="osteo-shared-server-probe")
    def probe(x: int) -> int:
        return x + 1

    state = probe(41, return_state=True)
    assert state.is_completed() and state.result() == 42
    req = urllib.request.Request(f"{prefect_api}/flow_runs/filter", data=json.dumps({"limit": 200}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        runs = json.load(r)
    assert str(state.state_details.flow_run_id) in {run["id"] for run in runs}
