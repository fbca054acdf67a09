"""Ingestion on the simulator's output: every injected fault is quarantined with its own reason.

The cohort knows which studies it broke (truth/faults.csv, never read by the
pipeline); this test joins that truth to ingestion's quarantine through the
pseudonymous study id.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from cohort.config import FAULT_KINDS, CohortConfig
from cohort.simulate import run_cohort
from features.ingest import IngestConfig, run_ingest
from features.pseudonym import Pseudonymizer, load_key
from osteo_config.params import load_params

REPO = Path(__file__).resolve().parents[2]
EXPECTED_REASON = {
    "corrupt_ct": "UnreadableFileError",
    "corrupt_mask": "UnreadableFileError",
    "missing_level": "MissingLevelError",
    "flipped_orientation": "OrientationMismatchError",
    "misaligned_mask": "MisalignedMaskError",
    "wrong_spacing": "SpacingMismatchError",
    "hu_out_of_range": "HUOutOfRangeError",
}


@pytest.mark.slow
def test_each_injected_fault_is_quarantined_with_its_reason_and_nothing_else_is(tmp_path, monkeypatch):
    monkeypatch.delenv("OSTEO_PSEUDONYM_KEY", raising=False)
    params = copy.deepcopy(load_params(REPO / "params.yaml", "tiny"))
    params["cohort"].update(workers=1, dicom_share=0.3)
    params["ingest"]["key_file"] = str(tmp_path / "no.key")   # the public demo key, whatever this machine holds
    params["cohort"]["faults"] = {k: 0.12 for k in params["cohort"]["faults"]}
    assert set(EXPECTED_REASON) == set(FAULT_KINDS)
    run_cohort(CohortConfig.from_params(params), tmp_path / "raw", tmp_path / "truth", sites=["A"], n_patients=12,
               progress=False)
    faults = pd.read_csv(tmp_path / "truth" / "faults.csv", dtype=str)
    assert set(faults.fault) == set(FAULT_KINDS), "the cohort should hold every fault kind"

    cfg = IngestConfig.from_params(params)
    summary = run_ingest(cfg, tmp_path / "raw", tmp_path / "out", profile="tiny", progress=False)
    key, source = load_key(cfg.key_env, cfg.key_file, True, tmp_path / "raw")
    assert source == "demo"
    study_id = Pseudonymizer(key, cfg.date_shift_max_days).study_id
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    studies = quarantine[quarantine.kind == "study"].set_index("item")["reason"]

    got = faults.assign(reason=faults.accession_number.map(study_id).map(studies))
    assert (got.reason == got.fault.map(EXPECTED_REASON)).all(), got[["fault", "reason"]].to_string()
    assert len(studies) == len(faults), "a study without an injected fault was quarantined"
    assert summary.studies.quarantined == len(faults)
