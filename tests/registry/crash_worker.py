"""Subprocess of the crash tests: run one registry operation and die (``os._exit``) after the Nth alias move.

Usage: python crash_worker.py <job.json>. The job holds tracking_uri, store_uri, audit_key (hex), name,
version, op (``promote`` | ``approve`` | ``rollback``), report (gate report dict), gates_params, actor,
crash_after (number of alias moves that succeed before the process dies; 0 = never).

The crash is real: the process ends without unwinding (no ``finally``, no lock release by
Python, no audit row after the fault point); only the alias moves MLflow already committed
remain. The registry code itself has no fault hook: the worker wraps the MLflow client
method the registry calls.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))    # the repository root

from mlflow import MlflowClient  # noqa: E402

from registry.gates import GateReport, GatesConfig  # noqa: E402
from registry.registry import approve, promote, rollback  # noqa: E402

EXIT_CRASHED = 70


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    moves = {"n": 0}
    original = MlflowClient.set_registered_model_alias

    def crashing(self, name, alias, version):                     # the real call, then maybe the crash
        original(self, name, alias, version)
        moves["n"] += 1
        if moves["n"] == job["crash_after"]:
            os._exit(EXIT_CRASHED)

    MlflowClient.set_registered_model_alias = crashing            # type: ignore[method-assign]
    store = {"tracking_uri": job["tracking_uri"], "store_uri": job["store_uri"],
             "audit_key": bytes.fromhex(job["audit_key"]), "lock_timeout_s": 60}
    gates = GatesConfig.from_params(job["gates_params"])
    if job["op"] == "promote":
        out = promote(job["name"], job["version"], GateReport.from_dict(job["report"]), job["actor"], "crash test",
                      gates=gates, **store)
    elif job["op"] == "approve":
        out = approve(job["name"], job["version"], job["actor"], "crash test", gates=gates, **store)
    else:
        out = rollback(job["name"], job["actor"], "crash test", **store)
    print(json.dumps({"promoted": out.promoted, "seq": out.event_seq}))


if __name__ == "__main__":
    main(sys.argv[1])
