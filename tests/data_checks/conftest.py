"""Fixture tables for the data-validation suites: small, consistent, contract-shaped.

Four sites (A-C development, D external), 5 patients per site, one CT each
with levels T11..L5 (11..17), DXA of L1..L4 plus the L1-L4 total, and a
training set of the labelled levels (13..16) with texture maps on disk whose
recorded SHA-256 is the array bytes' hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from data_checks import ChecksConfig

SITES = {"A": "Hologic", "B": "GE Lunar", "C": "MEDIX", "D": "Hologic"}
PATIENTS_PER_SITE = 5
LEVELS = range(11, 18)  # T11..L5
LEVEL_NAMES = {11: "T11", 12: "T12", 13: "L1", 14: "L2", 15: "L3", 16: "L4", 17: "L5"}
REGIONS = {13: "L1", 14: "L2", 15: "L3", 16: "L4", 0: "L1-L4"}
# T-scores cycle through the three WHO classes so that the class balance is even.
T_SCORES = (0.3, -1.6, -3.1)


def _hex(text: str, n: int = 32) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _who(t: float) -> int:
    return 2 if t <= -2.5 else (1 if t <= -1.0 else 0)


def build_tables(root: Path) -> dict[str, pd.DataFrame]:
    """Contract-shaped tables that satisfy every suite; texture maps are written under ``root``."""
    rng = np.random.default_rng(0)
    vert, dxa, rad, tex, train = [], [], [], [], []
    k = 0
    for site, vendor in SITES.items():
        for p in range(PATIENTS_PER_SITE):
            pid, sid = _hex(f"patient-{site}-{p}"), _hex(f"study-{site}-{p}")
            ct_date = pd.Timestamp("2021-03-01", tz="UTC") + pd.Timedelta(days=17 * k)
            dxa_date = ct_date + pd.Timedelta(days=int(rng.integers(-90, 90)))
            split = "test" if site == "D" else ("train", "train", "train", "valid", "test")[p]
            for level in LEVELS:
                t = T_SCORES[(k + level) % 3]
                hu = float(rng.uniform(80, 250))
                vert.append(dict(
                    patient_id=pid, study_id=sid, level=level, level_name=LEVEL_NAMES[level], site=site,
                    scanner=f"{site}-CT1", contrast=int(rng.integers(0, 2)), ct_date=ct_date, sex="F",
                    age_at_ct=60.0 + p, roi_path=f"rois/{_hex(sid + str(level), 2)}/{_hex(sid + str(level), 64)}.npz",
                    roi_sha256=_hex(sid + str(level), 64), roi_shape="48x48x32", spacing_mm="1.0x1.0x1.0",
                    hu_mean=hu, hu_std=40.0, hu_p05=hu - 60, hu_p50=hu, hu_p95=hu + 70, body_voxels=5000,
                ))
                rad.append(dict(patient_id=pid, study_id=sid, level=level,
                                original_firstorder_Mean=hu, original_glcm_Contrast=float(rng.uniform(1, 9)),
                                original_glcm_JointAverage=float(rng.uniform(2, 12))))
                maps = rng.normal(size=(5, 4, 4, 3)).astype(np.float32)  # (C, x, y, z)
                sha = hashlib.sha256(maps.tobytes()).hexdigest()
                rel = f"texture/{sha[:2]}/{sha}.npy"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(root / rel, maps)
                tex.append(dict(patient_id=pid, study_id=sid, level=level, pool_path=rel, pool_sha256=sha,
                                pool_shape="5x4x4x3", texture_params_hash="0123456789abcdef"))
                if level in REGIONS:
                    bmd = 1.0 + 0.12 * t
                    train.append(dict(
                        patient_id=pid, study_id=sid, level=level, site=site, device_vendor=vendor,
                        bmd_g_cm2=bmd, t_score=t, who_class=_who(t), ct_date=ct_date, dxa_date=dxa_date,
                        split=split, hu_mean=hu, pool_path=rel, pool_sha256=sha,
                    ))
            for level, region in REGIONS.items():
                t = T_SCORES[(k + (level or 13)) % 3]
                dxa.append(dict(
                    patient_id=pid, dxa_id=_hex(f"dxa-{site}-{p}-{region}"), site=site, device_vendor=vendor,
                    device_model="model-1", dxa_date=dxa_date, region=region, level=level,
                    bmd_g_cm2=1.0 + 0.12 * t, t_score=t, who_class=_who(t),
                ))
            k += 1
    return {
        "vertebrae": pd.DataFrame(vert), "dxa": pd.DataFrame(dxa), "radiomics": pd.DataFrame(rad),
        "texture": pd.DataFrame(tex), "training": pd.DataFrame(train),
    }


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interim")


@pytest.fixture(scope="module")
def base_tables(fixture_root) -> dict[str, pd.DataFrame]:
    """Good tables shared by a module; tests copy before planting a defect."""
    return build_tables(fixture_root)


@pytest.fixture(scope="module")
def cfg(fixture_root) -> ChecksConfig:
    return dataclasses.replace(ChecksConfig(), artifact_root=fixture_root)


@pytest.fixture
def tables(base_tables) -> dict[str, pd.DataFrame]:
    """A fresh deep copy of the good tables for one test."""
    return {name: df.copy(deep=True) for name, df in base_tables.items()}


@pytest.fixture
def check(cfg, tmp_path) -> Callable:
    """``check(tables_subset)`` -> ChecksReport, docs under a fresh tmp folder."""
    from data_checks import run_checks

    def _run(subset: dict[str, pd.DataFrame], config: ChecksConfig | None = None):
        return run_checks(subset, config or cfg, docs_dir=tmp_path / "docs", context_root=None)

    return _run
