"""No identifying value (patient/study/DXA ids, ROI/pool paths or hashes) leaks into results or Data Docs.

Bad rows carrying recognisable identifiers are planted so that expectations on
exactly those columns fail; every file the run wrote (Data Docs HTML, the file
context's JSON results, suites, configs) and the report are then searched for
the marker. A control run with GE's COMPLETE result format shows that the
search does find the marker when values are let through.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_checks import format_report, run_checks

MARK = "LEAKMARK"
PID, SID, DXA_ID = f"{MARK}-patient-7f3a", f"{MARK}-study-91c2", f"{MARK}-dxa-55e0"
POOL, SHA = f"texture/{MARK}-pool.npy", f"{MARK}-sha"


def _planted(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    v = tables["vertebrae"]
    bad_v = v.iloc[[0, 0]].assign(patient_id=PID, study_id=SID, roi_path=f"rois/{MARK}.npz", roi_sha256=SHA)
    d = tables["dxa"]
    bad_d = d.iloc[[0, 1]].assign(patient_id=PID, dxa_id=DXA_ID, bmd_g_cm2=9.0)  # duplicate id, bad BMD
    t = tables["training"]
    bad_t = t.iloc[[0, 1]].assign(patient_id=PID, study_id=SID, split=["train", "test"], pool_path=POOL, pool_sha256=SHA)
    x = tables["texture"]
    bad_x = x.iloc[[0]].assign(patient_id=PID, study_id=SID, pool_path=POOL, pool_sha256=SHA)
    return {
        "vertebrae": pd.concat([v, bad_v], ignore_index=True),
        "dxa": pd.concat([d, bad_d], ignore_index=True),
        "training": pd.concat([t, bad_t], ignore_index=True),
        "texture": pd.concat([x, bad_x], ignore_index=True),
    }


def _files_with_mark(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*")
            if p.is_file() and MARK.encode() in p.read_bytes()]


@pytest.fixture
def planted_run(tables, cfg, tmp_path):
    def _run(tag: str):
        project = tmp_path / tag
        report = run_checks(_planted(tables), cfg, docs_dir=project / "docs", context_root=project)
        return report, project

    return _run


def test_no_identifier_in_docs_results_or_report(planted_run):
    report, project = planted_run("safe")
    failed = {(f.suite, f.column) for f in report.failures}
    # the planted identifiers were indeed unexpected values of the checked columns
    assert {("vertebrae", "patient_id,study_id,level"), ("vertebrae", "roi_sha256"), ("dxa", "dxa_id"),
            ("training", "chk_patient_splits"), ("training", "pool_sha256"), ("training", "chk_pool_exists"),
            ("texture", "pool_sha256")} <= failed
    html = list((project / "docs").rglob("*.html"))
    results = list((project / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert len(html) >= 5 and len(results) == 4  # Data Docs and stored results exist ...
    assert _files_with_mark(project) == []       # ... and none carries an identifier
    assert MARK not in format_report(report) and MARK not in repr(report)


def test_control_complete_result_format_would_leak(tables, cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("data_checks.runner.RESULT_FORMAT", {"result_format": "COMPLETE"})
    report = run_checks({"vertebrae": _planted(tables)["vertebrae"]}, cfg, docs_dir=tmp_path / "docs")
    assert not report.success
    assert any(p.suffix == ".html" for p in _files_with_mark(tmp_path))  # the search does see leaks
