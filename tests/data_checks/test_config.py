"""ChecksConfig: parsing params.yaml, borrowing ingest keys, rejecting malformed bounds."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from data_checks import ChecksConfig, ChecksConfigError
from osteo_config.params import load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml", "demo")


def test_from_params_reads_checks_and_borrows_ingest_keys(params):
    cfg = ChecksConfig.from_params(params)
    assert cfg.sites == tuple(params["checks"]["sites"])
    assert cfg.vendors == tuple(params["checks"]["vendors"])
    assert set(cfg.external_sites) <= set(cfg.sites)
    assert cfg.hu_window == tuple(float(v) for v in params["ingest"]["hu_window"])
    assert cfg.window_days == params["ingest"]["dxa_window_days"]
    assert cfg.min_body_voxels == params["ingest"]["min_body_voxels"]
    assert cfg.artifact_root == Path(params["paths"]["interim"]) / "texture"
    assert cfg.who_thresholds[1] < cfg.who_thresholds[0]


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_every_profile_builds_a_config(profile):
    assert ChecksConfig.from_params(load_params(REPO / "params.yaml", profile)).sites


def test_scanner_allow_list_is_its_own_key_never_the_simulators_sites(params):
    p = copy.deepcopy(params)
    p["checks"]["scanners"] = []
    p["cohort"]["sites"] = {"A": {"scanners": ["A-CT1", "A-CT2"]}, "B": {"scanners": [{"id": "B-CT1"}]}}
    assert ChecksConfig.from_params(p).scanners == ()                 # empty = unchecked, not cohort.sites
    p["checks"]["scanners"] = ["X"]
    assert ChecksConfig.from_params(p).scanners == ("X",)


@pytest.mark.parametrize("key, value", [
    ("bmd_range", [2.0, 0.3]),          # low > high
    ("t_score_range", [-6.0]),          # not a pair
    ("who_thresholds", [-2.5, -1.0]),   # cut-offs in the wrong order
    ("class_share", [0.1, 1.5]),        # a share above 1
    ("external_sites", ["Z"]),          # held-out site that is not a site
])
def test_malformed_bounds_raise(params, key, value):
    p = copy.deepcopy(params)
    p["checks"][key] = value
    with pytest.raises(ChecksConfigError):
        ChecksConfig.from_params(p)


def test_missing_section_names_the_key(params):
    p = copy.deepcopy(params)
    del p["checks"]
    with pytest.raises(ChecksConfigError, match="checks"):
        ChecksConfig.from_params(p)
