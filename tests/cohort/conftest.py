"""Shared fixtures: small cohorts generated once per test session (in-process, 1 worker)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cohort.config import CohortConfig
from cohort.simulate import run_cohort
from osteo_config.params import load_params

REPO = Path(__file__).resolve().parents[2]


def small_params(**over) -> dict:
    """The repo's cohort params with test-sized knobs (config only, no code paths skipped)."""
    p = copy.deepcopy(load_params(REPO / "params.yaml", "tiny"))
    c = p["cohort"]
    c.update(workers=1, fine_voxel_mm=0.6, dicom_share=0.4, totalseg_dir_share=0.3, verse_share=0.3)
    c["timing"]["thoracic_study_share"] = 0.0
    c["faults"] = {k: 0.0 for k in c["faults"]}
    for k, v in over.items():
        c[k] = v
    return p


@pytest.fixture(scope="session")
def clean_cohort(tmp_path_factory):
    """3 patients at each of sites A and B, no faults; mixed formats and orientations."""
    root = tmp_path_factory.mktemp("clean")
    cfg = CohortConfig.from_params(small_params())
    summary = run_cohort(cfg, root / "raw", root / "truth", sites=["A", "B"], n_patients=3, progress=False)
    return cfg, root / "raw", root / "truth", summary


@pytest.fixture(scope="session")
def faulty_cohort(tmp_path_factory):
    """8 patients with every fault kind switched on."""
    root = tmp_path_factory.mktemp("faulty")
    p = small_params()
    p["cohort"]["faults"] = {k: 0.1 for k in p["cohort"]["faults"]}
    p["cohort"]["dicom_share"] = 0.25
    cfg = CohortConfig.from_params(p)
    summary = run_cohort(cfg, root / "raw", root / "truth", sites=["A"], n_patients=8, progress=False)
    return cfg, root / "raw", root / "truth", summary
