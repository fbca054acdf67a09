"""DXA physics: areal BMD of L1-L4 from the same latent bone as the CT.

AP spine DXA integrates mineral along the beam (anterior-posterior) over a
region of interest that spans the vertebral-body width and height. So for a
level, the bone mineral content (BMC, g) is

    trabecular vBMD x interior volume  +  cortical shell mineral
    + posterior elements inside the ROI +  degenerative artefacts

and areal BMD = BMC / projected area (g/cm2). Larger (deeper) vertebrae read
higher for the same vBMD: the size dependence of areal BMD that makes CT HU
and DXA only moderately correlated. The "true" scale is Hologic-equivalent;
each device maps it linearly (Genant 1994 for GE Lunar; an explicitly stated
assumption for MEDIX) and adds its precision error. T-scores use each
vendor's own young-adult reference; WHO classes follow from T-scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohort.anatomy import L1, L4, level_name
from cohort.bone import PatientBone
from cohort.config import BoneConfig, DxaDeviceConfig

DXA_LEVELS = tuple(range(L1, L4 + 1))      # L1..L4
# Where degenerative change concentrates (relative weight per level L1..L4).
_OSTEOPHYTE_WEIGHT = {13: 0.3, 14: 0.6, 15: 1.0, 16: 1.3}
_POSTERIOR_LEVEL_GAIN = 0.10                 # relative posterior-element mineral gain per level below L1


@dataclass(frozen=True)
class Degeneration:
    """Degenerative artefacts that raise AP-spine DXA BMD in the elderly."""

    osteophyte_g: dict[int, float]   # level -> extra BMC (g) from osteophytes / facet sclerosis
    aortic_calc: float               # 0-1 calcified-plaque burden (projects over L1-L4)


def draw_degeneration(rng: np.random.Generator, age: float) -> Degeneration:
    """Osteophytes and aortic calcification: prevalence and size grow with age."""
    p = float(np.clip((age - 50.0) / 35.0, 0.0, 0.85))
    oste = {}
    has = rng.random() < p
    for lv in DXA_LEVELS:
        oste[lv] = float(has * _OSTEOPHYTE_WEIGHT[lv] * rng.exponential(1.1)) if has else 0.0
    calc = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.8 * p else 0.0
    return Degeneration(oste, calc)


def level_bmc_area(bone: PatientBone, level: int, deg: Degeneration, cfg: BoneConfig) -> tuple[float, float]:
    """(BMC g, projected area cm2) of one level on the true (Hologic-equivalent) scale."""
    v = bone.vertebra(level)
    a, b, h, t = v.a / 10, v.b / 10, v.h / 10, v.cortex_mm / 10           # cm
    waist = 0.97                                                         # mean waist factor
    a, b = a * waist, b * waist
    vol_total = np.pi * a * b * h
    vol_inner = np.pi * max(a - t, 0.01) * max(b - t, 0.01) * max(h - 2 * t, 0.01)
    trab = bone.vbmd[level] / 1000.0 * vol_inner                          # g
    cort = cfg.cortical_mineral_mg / 1000.0 * (vol_total - vol_inner)
    # lower-lumbar facets and laminae are larger: posterior mineral in the ROI grows caudally
    post = cfg.posterior_mineral_mg / 1000.0 * bone.cortical_factor * v.posterior_volume_in_roi_cm3() \
        * (1.0 + _POSTERIOR_LEVEL_GAIN * (level - L1))
    calc = 0.04 * deg.aortic_calc * (2 * a * h)                          # ~0.04 g/cm2 over the ROI at full burden
    bmc = trab + cort + post + deg.osteophyte_g.get(level, 0.0) + calc
    return float(bmc), float(2 * v.a / 10 * h)


def true_regions(bone: PatientBone, deg: Degeneration, cfg: BoneConfig) -> dict[str, tuple[float, float]]:
    """Region -> (BMC g, area cm2) for L1..L4 and L1-L4."""
    out = {level_name(lv): level_bmc_area(bone, lv, deg, cfg) for lv in DXA_LEVELS}
    out["L1-L4"] = (sum(v[0] for v in out.values()), sum(v[1] for v in out.values()))
    return out


def device_reading(true_abmd: float, dev: DxaDeviceConfig) -> float:
    """Vendor calibration without noise: reading = slope x true + intercept (g/cm2)."""
    return dev.slope * true_abmd + dev.intercept


def t_score(bmd: float, region: str, dev: DxaDeviceConfig) -> float:
    """T-score against the device's own young-adult reference."""
    return (bmd - dev.ref_mean[region]) / dev.ref_sd[region]


def who_class(t: float) -> int:
    """WHO category from a T-score: 0 normal (> -1), 1 osteopenia (-1 .. -2.5), 2 osteoporosis (<= -2.5)."""
    return 2 if t <= -2.5 else (1 if t <= -1.0 else 0)


def measure(rng: np.random.Generator, regions: dict[str, tuple[float, float]],
            dev: DxaDeviceConfig) -> dict[str, tuple[float, float]]:
    """One DXA exam: region -> (BMD g/cm2 rounded to 3 decimals, T-score rounded to 1 decimal).

    The per-level readings get the level CV; the total gets the device CV (as
    short-term precision studies report).
    """
    out = {}
    for region, (bmc, area) in regions.items():
        cv = dev.precision_cv * (1.0 if region == "L1-L4" else dev.level_cv_factor)
        bmd = device_reading(bmc / area, dev) * (1.0 + cv * rng.standard_normal())
        out[region] = (round(float(bmd), 3), round(float(t_score(bmd, region, dev)), 1))
    return out
