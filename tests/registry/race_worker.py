"""Subprocess of the alias-race tests: wait for the start signal, then promote one version.

Usage: python race_worker.py <job.json>. The job holds tracking_uri, audit_key (hex), name, version,
gate report (dict), gates (GatesConfig fields as a params-like dict), start_file,
ready_file, out_file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))    # the repository root

from registry.gates import GateReport, GatesConfig  # noqa: E402
from registry.registry import promote  # noqa: E402


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    gates = GatesConfig.from_params(job["gates_params"])
    report = GateReport.from_dict(job["report"])
    Path(job["ready_file"]).touch()                               # imports done, MLflow loaded
    deadline = time.monotonic() + 60
    while not Path(job["start_file"]).exists():                   # both workers start together
        if time.monotonic() > deadline:
            raise SystemExit("start signal never came")
        time.sleep(0.002)
    out = promote(job["name"], job["version"], report, actor=f"worker-{job['version']}", reason="race test",
                  gates=gates, tracking_uri=job["tracking_uri"], lock_timeout_s=60,
                  audit_key=bytes.fromhex(job["audit_key"]))
    Path(job["out_file"]).write_text(json.dumps({"promoted": out.promoted, "reasons": list(out.reasons),
                                                 "seq": out.event_seq}))


if __name__ == "__main__":
    main(sys.argv[1])
