"""T-scores, WHO classes and standardised BMD per DXA vendor ("what a Hologic / GE Lunar / MEDIX scan would say").

Areal BMD is not comparable between vendors: GE Lunar reads ~10 % higher than
Hologic for the same spine (Genant 1994), and each vendor's T-score uses its own
young-adult reference. So a T-score is always *per vendor*:

    T = (BMD_vendor - mean_vendor[sex, region]) / SD_vendor[sex, region]

and the WHO class follows (METHOD.md §1: normal T > -1, osteopenia -2.5 < T <= -1,
osteoporosis T <= -2.5). The standardised BMD (sBMD, Hui 1997, spine, g/cm2) maps
each vendor onto one scale with an affine equation

    sBMD = slope_v * (BMD_v - center_v) + offset_v

so BMD_w = (sBMD - offset_w) / slope_w + center_w converts vendor v to vendor w
through sBMD. The tables (with their cited sources and a version string that
travels into every report) are ``screen.references`` in params.yaml, parsed into
:class:`osteo_config.screen.ReferenceTables`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from osteo_config.screen import REGIONS, SEXES, ReferenceTables, VendorReference

OSTEOPENIA_T = -1.0        # WHO 1994: T <= -1 is low bone mass
OSTEOPOROSIS_T = -2.5      # WHO 1994: T <= -2.5 is osteoporosis


class UnknownReferenceError(ValueError):
    """A vendor, sex or region has no entry in the reference tables (the message lists the valid ones)."""


class WhoClass(IntEnum):
    """WHO densitometric category (the integers match the cohort's ``who_class`` column)."""

    NORMAL = 0
    OSTEOPENIA = 1
    OSTEOPOROSIS = 2


def _vendor(tables: ReferenceTables, vendor: str) -> VendorReference:
    try:
        return tables.vendors[vendor]
    except KeyError:
        raise UnknownReferenceError(f"DXA vendor {vendor!r} not in references {tables.version} "
                                    f"(known: {sorted(tables.vendors)}): add it to screen.references.vendors") from None


def _sex(sex: str) -> str:
    s = {"f": "female", "female": "female", "m": "male", "male": "male"}.get(str(sex).strip().lower())
    if s is None:
        raise UnknownReferenceError(f"sex {sex!r}: use one of {list(SEXES)} (or F / M)")
    return s


def _region(region: str) -> str:
    if region not in REGIONS:
        raise UnknownReferenceError(f"region {region!r} has no DXA reference: use one of {list(REGIONS)}")
    return region


def to_sbmd(bmd: float | np.ndarray, vendor: str, tables: ReferenceTables) -> float | np.ndarray:
    """Vendor areal BMD (g/cm2) -> standardised BMD (g/cm2), Hui 1997 spine equation of ``vendor``."""
    eq = _vendor(tables, vendor).sbmd
    return eq.slope * (np.asarray(bmd, dtype=float) - eq.center) + eq.offset if np.ndim(bmd) \
        else float(eq.slope * (float(bmd) - eq.center) + eq.offset)


def from_sbmd(sbmd: float | np.ndarray, vendor: str, tables: ReferenceTables) -> float | np.ndarray:
    """Standardised BMD (g/cm2) -> ``vendor``'s areal BMD (g/cm2): the inverse of :func:`to_sbmd`."""
    eq = _vendor(tables, vendor).sbmd
    return (np.asarray(sbmd, dtype=float) - eq.offset) / eq.slope + eq.center if np.ndim(sbmd) \
        else float((float(sbmd) - eq.offset) / eq.slope + eq.center)


def convert(bmd: float | np.ndarray, source: str, target: str, tables: ReferenceTables) -> float | np.ndarray:
    """Areal BMD read on ``source`` -> what ``target`` would read (g/cm2), through sBMD."""
    return from_sbmd(to_sbmd(bmd, source, tables), target, tables)


def t_score(bmd: float | np.ndarray, vendor: str, sex: str, region: str,
            tables: ReferenceTables) -> float | np.ndarray:
    """T-score of a ``vendor``-scale BMD (g/cm2) against that vendor's young-adult reference.

    Args:
        bmd: areal BMD as ``vendor`` would read it (g/cm2).
        vendor: key of ``tables.vendors`` ("Hologic", "GE Lunar", "MEDIX").
        sex: "female" / "male" (or "F" / "M").
        region: "L1" .. "L4" or "L1-L4".
        tables: versioned references (``ScreenConfig.references``).

    Raises:
        UnknownReferenceError: vendor, sex or region not in the tables.
    """
    ref = _vendor(tables, vendor)
    s, r = _sex(sex), _region(region)
    mean, sd = ref.mean[s][r], ref.sd[s][r]
    return (np.asarray(bmd, dtype=float) - mean) / sd if np.ndim(bmd) else float((float(bmd) - mean) / sd)


def who_class(t: float) -> WhoClass:
    """WHO class of a T-score: normal (> -1), osteopenia (-2.5 < T <= -1), osteoporosis (<= -2.5)."""
    if not np.isfinite(t):
        raise ValueError(f"T-score {t!r} is not finite: check the BMD and the reference SD")
    if t <= OSTEOPOROSIS_T:
        return WhoClass.OSTEOPOROSIS
    return WhoClass.OSTEOPENIA if t <= OSTEOPENIA_T else WhoClass.NORMAL


@dataclass(frozen=True)
class VendorReading:
    """One level as one vendor would report it."""

    vendor: str
    bmd: float            # g/cm2 on the vendor's scale
    sbmd: float           # g/cm2, standardised
    t_score: float
    who: WhoClass
    reference_version: str


def vendor_readings(bmd_by_vendor: dict[str, float], sex: str, region: str,
                    tables: ReferenceTables) -> list[VendorReading]:
    """Per vendor: BMD, sBMD, T-score and WHO class of one level.

    ``bmd_by_vendor`` holds the model's answer per vendor ("what would a Hologic say"):
    the model predicts on each vendor's own scale, so no conversion is applied here;
    :func:`convert` is for a BMD known on one scale only.
    """
    out = []
    for vendor, bmd in bmd_by_vendor.items():
        t = t_score(bmd, vendor, sex, region, tables)
        out.append(VendorReading(vendor, float(bmd), float(to_sbmd(bmd, vendor, tables)), float(t),
                                 who_class(t), tables.version))
    return out
