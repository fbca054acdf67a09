"""Determinism across worker counts, config-only extension with a new site/scanner/vendor."""
from __future__ import annotations

import copy
import dataclasses
import hashlib

import pandas as pd
import pytest

from cohort.config import CohortConfig, CohortConfigError
from cohort.simulate import CohortOutputError, run_cohort

from osteo_config.params import load_params

from .conftest import REPO, small_params


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_worker_count(clean_cohort, tmp_path):
    cfg, raw, _, _ = clean_cohort
    two = dataclasses.replace(cfg, workers=2)
    run_cohort(two, tmp_path / "raw", tmp_path / "truth", sites=["B"], n_patients=2, progress=False)
    again = _digest(tmp_path / "raw" / "ct")
    first = _digest(raw / "ct")
    assert again and all(first[k] == v for k, v in again.items())   # identical files for the same studies
    ref = pd.read_csv(raw / "dxa.csv", dtype=str)
    sub = pd.read_csv(tmp_path / "raw" / "dxa.csv", dtype=str)
    pd.testing.assert_frame_equal(ref[ref.mrn.isin(sub.mrn)].reset_index(drop=True), sub)


def test_a_new_site_scanner_and_vendor_is_a_config_change(tmp_path):
    p = small_params()
    c = p["cohort"]
    c["scanners"]["acme_ct9"] = {**copy.deepcopy(c["scanners"]["ge_revolution"]), "manufacturer": "ACME",
                                 "model": "CT9", "hu_offset": 20.0}
    c["dxa_devices"]["acme_dxa"] = {**copy.deepcopy(c["dxa_devices"]["hologic_discovery"]),
                                    "vendor": "ACME Bone", "model": "X1", "slope": 1.02, "intercept": 0.01,
                                    "ref_source": "test reference"}
    c["sites"]["E"] = {**copy.deepcopy(c["sites"]["B"]), "dxa_device": "acme_dxa", "scanners": {"acme_ct9": 1.0},
                       "patients": [0, 0, 100]}
    cfg = CohortConfig.from_params(p)
    assert cfg.sites["E"].n_patients(cfg.scale) == 2                 # at least 2 per site
    run_cohort(cfg, tmp_path / "raw", tmp_path / "truth", sites=["E"], progress=False)
    studies = pd.read_csv(tmp_path / "raw" / "ct_studies.csv")
    dxa = pd.read_csv(tmp_path / "raw" / "dxa.csv")
    assert set(studies.scanner) == {"acme_ct9"} and set(dxa.device_vendor) == {"ACME Bone"}
    assert len(set(dxa.mrn)) == 2


def test_unknown_references_and_foreign_output_folders_are_refused(tmp_path):
    p = small_params()
    p["cohort"]["sites"]["A"]["dxa_device"] = "nope"
    with pytest.raises(CohortConfigError, match="nope"):
        CohortConfig.from_params(p)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "hospital.txt").write_text("real data")
    with pytest.raises(CohortOutputError):
        run_cohort(CohortConfig.from_params(small_params()), tmp_path / "raw", tmp_path / "truth",
                   sites=["A"], n_patients=1, progress=False)
    assert (tmp_path / "raw" / "hospital.txt").exists()


def test_test_and_valid_scales_enlarge_only_their_splits_and_splits_follow_them():
    from osteo_config.splits import SplitConfig, SplitError

    params = load_params(REPO / "params.yaml", "demo")
    cfg = CohortConfig.from_params(params)
    for name, site in cfg.sites.items():
        train, valid, test = site.planned_splits(cfg.scale, cfg.test_scale.get(name), cfg.valid_scale.get(name))
        t_train, t_valid, t_test = site.patients
        # training keeps the paper's site mix: train at `scale` exactly as without the split scales
        assert train == site.planned_splits(cfg.scale)[0] == int(cfg.scale * t_train + 0.5)
        assert valid == int(cfg.valid_scale.get(name, cfg.scale) * t_valid + 0.5)
        assert test == int(cfg.test_scale.get(name, cfg.scale) * t_test + 0.5)
        assert cfg.n_patients(name) == train + valid + test
    assert cfg.n_patients("B") > cfg.sites["B"].n_patients(cfg.scale)     # the demo's B test split is enlarged
    # the demo's validation split holds every internal site in the test split's proportions
    assert {s: cfg.valid_scale[s] for s in ("A", "B", "C")} == {s: cfg.test_scale[s] for s in ("A", "B", "C")}
    assert cfg.sites["C"].planned_splits(cfg.scale, None, cfg.valid_scale["C"])[1] > \
        cfg.sites["C"].planned_splits(cfg.scale)[1]
    splits = SplitConfig.from_params(params)
    for name, fr in splits.site_fractions:
        counts = cfg.sites[name].planned_splits(cfg.scale, cfg.test_scale.get(name), cfg.valid_scale.get(name))
        assert fr == pytest.approx(tuple(c / sum(counts) for c in counts))
    assert "D" not in dict(splits.site_fractions)                           # external: test-only anyway
    # without the split scales the old rule holds: round(scale x Table-1 total)
    plain = CohortConfig.from_params({**params, "cohort": {**params["cohort"], "test_scale": None,
                                                           "valid_scale": None}})
    assert plain.n_patients("A") == plain.sites["A"].n_patients(plain.scale)
    only_valid = CohortConfig.from_params({**params, "cohort": {**params["cohort"], "test_scale": None}})
    b_train, _, b_test = plain.sites["B"].planned_splits(plain.scale)
    b_valid = int(only_valid.valid_scale["B"] * only_valid.sites["B"].patients[1] + 0.5)
    assert only_valid.sites["B"].planned_splits(only_valid.scale, None, only_valid.valid_scale["B"]) == (
        b_train, b_valid, b_test)
    with pytest.raises(SplitError, match="cohort"):
        SplitConfig.from_params({**params, "splits": {**params["splits"], "site_fractions": "cohrt"}})
    for key in ("test_scale", "valid_scale"):
        with pytest.raises(CohortConfigError, match=key):
            CohortConfig.from_params({**params, "cohort": {**params["cohort"], key: {"Z": 0.1}}})
        with pytest.raises(CohortConfigError, match=key):
            CohortConfig.from_params({**params, "cohort": {**params["cohort"], key: {"A": -0.1}}})
