"""Small contract-shaped tables for tests and latency benchmarks (no imaging, no PHI).

:func:`write_fixture` writes ``vertebrae.parquet``, ``dxa.parquet`` (ingest,
data contract §2), ``texture.parquet`` and ``radiomics.parquet`` (§3) with the
contract's columns and plausible values, so the feature store can be exercised
without running ingestion or the texture engine. Deterministic for a seed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

SITES = ("A", "B", "C", "D")
LEVELS = (12, 13, 14, 15, 16, 17)           # T12, L1..L5
LEVEL_NAMES = {12: "T12", 13: "L1", 14: "L2", 15: "L3", 16: "L4", 17: "L5"}
VENDORS = {"A": ("Hologic", "Horizon A"), "B": ("GE Lunar", "iDXA"), "C": ("MEDIX", "DR"), "D": ("Hologic", "QDR")}
RADIOMICS = ("original_firstorder_Mean", "original_glcm_Contrast", "original_glcm_JointAverage",
             "original_glrlm_RunEntropy")


def _hex(*parts) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def fixture_tables(n_patients: int = 60, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The four tables as DataFrames (``vertebrae``, ``dxa``, ``texture``, ``radiomics``).

    Each patient has 1-3 CT studies (repeat CTs) and 1-3 DXA exams placed
    around them: inside the 183-day window on either side, far outside, or on
    the CT date itself. Each DXA exam reports L1..L4 and the L1-L4 total.
    """
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2016-01-01", tz="UTC")
    vert, dxa, tex, rad = [], [], [], []
    for p in range(n_patients):
        pid = _hex("patient", seed, p)[:32]
        site = SITES[p % len(SITES)]
        sex = "F" if rng.random() < 0.7 else "M"
        ct_dates = sorted(base + pd.Timedelta(days=int(d)) + pd.Timedelta(seconds=int(rng.integers(0, 86400)))
                          for d in rng.integers(0, 2000, size=int(rng.integers(1, 4))))
        for s, ct_date in enumerate(ct_dates):
            sid = _hex("study", seed, p, s)[:32]
            for lvl in LEVELS:
                hu = float(rng.normal(150, 40))
                vert.append(dict(patient_id=pid, study_id=sid, level=lvl, level_name=LEVEL_NAMES[lvl], site=site,
                                 scanner=f"{site}-ct{s % 2}", contrast=int(rng.random() < 0.3), ct_date=ct_date,
                                 sex=sex, age_at_ct=float(rng.uniform(50, 85)),
                                 roi_path=f"rois/{_hex('roi', pid, sid, lvl)[:2]}/{_hex('roi', pid, sid, lvl)}.npz",
                                 roi_sha256=_hex("roi", pid, sid, lvl), roi_shape=[48, 48, 32],
                                 spacing_mm=[1.0, 1.0, 1.0], hu_mean=hu, hu_std=abs(float(rng.normal(30, 5))),
                                 hu_p05=hu - 50, hu_p50=hu, hu_p95=hu + 50, body_voxels=int(rng.integers(2000, 9000))))
                pool = _hex("pool", pid, sid, lvl)
                tex.append(dict(patient_id=pid, study_id=sid, level=lvl, level_name=LEVEL_NAMES[lvl],
                                roi_sha256=_hex("roi", pid, sid, lvl), pool_path=f"texture/{pool[:2]}/{pool}.npy",
                                pool_sha256=pool, pool_shape=[5, 48, 48, 32], texture_params_hash="0123456789abcdef"))
                rad.append(dict(patient_id=pid, study_id=sid, level=lvl, level_name=LEVEL_NAMES[lvl],
                                **{c: float(rng.normal()) for c in RADIOMICS}))
        offsets = rng.choice([-400, -183, -120, -30, 0, 30, 120, 183, 400], size=int(rng.integers(1, 4)))
        for e, off in enumerate(offsets):
            anchor = ct_dates[int(rng.integers(0, len(ct_dates)))]
            when = (anchor + pd.Timedelta(days=int(off))).normalize()
            vendor, model = VENDORS[site]
            for lvl, region in ((13, "L1"), (14, "L2"), (15, "L3"), (16, "L4"), (0, "L1-L4")):
                t = float(rng.normal(-1.5, 1.2))
                dxa.append(dict(patient_id=pid, dxa_id=_hex("dxa", pid, e, region)[:32], site=site,
                                device_vendor=vendor, device_model=model, dxa_date=when, region=region, level=lvl,
                                bmd_g_cm2=float(1.0 + 0.12 * t), t_score=t,
                                who_class=int(0 if t > -1 else (1 if t > -2.5 else 2))))
    return {"vertebrae": pd.DataFrame(vert), "dxa": pd.DataFrame(dxa),
            "texture": pd.DataFrame(tex), "radiomics": pd.DataFrame(rad)}


def write_fixture(out_dir: str | Path, n_patients: int = 60, seed: int = 0,
                  tables: dict[str, pd.DataFrame] | None = None) -> tuple[Path, Path]:
    """Write the fixture; returns ``(ingest_dir, texture_dir)`` under ``out_dir``."""
    out_dir = Path(out_dir)
    tables = tables or fixture_tables(n_patients, seed)
    ingest, texture = out_dir / "ingest", out_dir / "texture"
    ingest.mkdir(parents=True, exist_ok=True)
    texture.mkdir(parents=True, exist_ok=True)
    tables["vertebrae"].to_parquet(ingest / "vertebrae.parquet", index=False)
    tables["dxa"].to_parquet(ingest / "dxa.parquet", index=False)
    tables["texture"].to_parquet(texture / "texture.parquet", index=False)
    tables["radiomics"].to_parquet(texture / "radiomics.parquet", index=False)
    return ingest, texture
