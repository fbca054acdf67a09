"""The ``robustness:`` section: held-out scanner-shift sites, and the cohort overlay that builds each one.

``osteo experiments robustness`` (:mod:`screening.robustness`) simulates one site per named shift and screens
it with the champion. A shift is an overlay on the cohort's own configuration, never post-processing of
images (:func:`shift_cohort`):

* every CT scanner of the base site gets a shifted copy, a NEW scanner ``<scanner>~<shift>`` whose listed
  values (``hu_slope``, ``hu_offset``, ``noise_hu``, ``psf_fwhm_mm``, ``slice_mm``) replace its own, every
  other value kept;
* the base site's entry is overlaid as an external, test-only site that draws its studies from those copies
  with the same weights (and ``contrast_share`` replaced when the shift names it).

The shifted site keeps the base site's key on purpose: the simulator seeds every draw by (seed, site key,
patient index) (:mod:`cohort.plan`), so each shift site holds the SAME patients as the reference (the base
site re-simulated unshifted): same bones, DXA readings, exam dates, levels and noise seeds. Differences
between a shift and the reference are then the shift's alone, and are measured paired on the same patients.
That holds while a shift consumes the same random draws: a ``slice_mm`` overlay must offer one choice where
the base scanner offers one and several where it offers several (:class:`RobustnessConfigError` otherwise).

Injected faults (``cohort.faults``) are off in every robustness site, so a quarantined study is the shift's
doing (e.g. a calibration the shift defeats), reported as a finding.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from osteo_config.cohort import CohortConfig
from osteo_config.errors import ConfigError

REFERENCE = "reference"                   # the base site re-simulated without a shift (the comparison)
SCANNER_KEYS = ("hu_slope", "hu_offset", "noise_hu", "psf_fwhm_mm", "slice_mm")   # ScannerConfig fields a shift sets
SITE_KEYS = ("contrast_share",)           # SiteConfig fields a shift sets
UNITS = {"hu_slope": "", "hu_offset": " HU", "noise_hu": " HU", "psf_fwhm_mm": " mm", "slice_mm": " mm",
         "contrast_share": ""}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # folder names and MLflow metric keys


class RobustnessConfigError(ConfigError):
    """The ``robustness:`` section is invalid, or a shift cannot be overlaid on the cohort."""


@dataclass(frozen=True)
class ShiftConfig:
    """One named shift: scanner values replaced on every scanner of the base site, and the site's contrast share."""

    name: str
    scanner: tuple[tuple[str, Any], ...] = ()   # (ScannerConfig field, value); slice_mm a tuple of mm choices
    contrast_share: float | None = None         # fraction (0-1) of contrast-enhanced studies, None = the site's

    def values(self) -> dict[str, Any]:
        """Every overlaid key -> value (scanner keys, then ``contrast_share``)."""
        out = dict(self.scanner)
        if self.contrast_share is not None:
            out["contrast_share"] = self.contrast_share
        return out

    def describe(self) -> str:
        """``noise_hu 35 HU, slice_mm 4/5 mm``: the overlay in words (tables, MLflow)."""
        def one(k: str, v: Any) -> str:
            text = "/".join(f"{x:g}" for x in v) if isinstance(v, tuple) else f"{v:g}"
            return f"{k} {text}{UNITS[k]}"
        return ", ".join(one(k, v) for k, v in self.values().items()) or "none"

    @classmethod
    def parse(cls, name: str, overlay: Mapping[str, Any]) -> "ShiftConfig":
        """One ``robustness.shifts.<name>`` mapping, every value checked for its physical range."""
        where = f"robustness.shifts.{name}"
        if not _NAME.match(name) or name == REFERENCE:
            raise RobustnessConfigError(f"{where}: name it with letters, digits, '_', '.', '-' (not {REFERENCE!r})")
        overlay = dict(overlay or {})
        unknown = sorted(set(overlay) - set(SCANNER_KEYS) - set(SITE_KEYS))
        if unknown or not overlay:
            raise RobustnessConfigError(f"{where}: keys {unknown or '(none)'}: a shift sets one or more of "
                                        f"{list(SCANNER_KEYS + SITE_KEYS)}")
        scanner = []
        for key in SCANNER_KEYS:
            if key not in overlay:
                continue
            v = overlay[key]
            if key == "slice_mm":
                v = tuple(float(s) for s in (v if isinstance(v, (list, tuple)) else [v]))
                ok = len(v) > 0 and all(s > 0 for s in v)
            else:
                v = float(v)
                ok = math.isfinite(v) and (key == "hu_offset" or v > 0 or (key == "noise_hu" and v == 0))
            if not ok:
                raise RobustnessConfigError(f"{where}.{key}={overlay[key]!r}: must be finite and > 0 "
                                            "(noise_hu >= 0; hu_offset any HU; slice_mm a list of mm > 0)")
            scanner.append((key, v))
        share = overlay.get("contrast_share")
        if share is not None and not 0.0 <= float(share) <= 1.0:
            raise RobustnessConfigError(f"{where}.contrast_share={share!r}: a fraction in [0, 1]")
        return cls(name=name, scanner=tuple(scanner), contrast_share=None if share is None else float(share))


@dataclass(frozen=True)
class RobustnessTargets:
    """What a shift must keep (issue 11): measured on point estimates, never tuned."""

    max_f1_drop: float = 5.0        # percentage points: patient F1 at most this far below the reference's
    min_sensitivity: float = 80.0   # percent: patient-level sensitivity of the shifted site


@dataclass(frozen=True)
class RobustnessConfig:
    """The ``robustness:`` section of params.yaml (units and ranges are commented there)."""

    base_site: str = "D"
    n_patients: int = 39
    keep_work: bool = False
    targets: RobustnessTargets = RobustnessTargets()
    shifts: tuple[ShiftConfig, ...] = ()

    def shift(self, name: str) -> ShiftConfig:
        for s in self.shifts:
            if s.name == name:
                return s
        raise RobustnessConfigError(f"unknown shift {name!r}: choose from {[s.name for s in self.shifts]}")

    def select(self, names: list[str] | None) -> "RobustnessConfig":
        """The same section with only the named shifts (all when None), in the order given."""
        return self if not names else replace(self, shifts=tuple(self.shift(n) for n in names))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "RobustnessConfig":
        """Parse ``params['robustness']`` (absent = defaults, no shifts); the base site must be a cohort site."""
        sec = dict(params.get("robustness") or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(sec) - known)
        if unknown:
            raise RobustnessConfigError(f"robustness: unknown keys {unknown}; valid keys are {sorted(known)}")
        targets = dict(sec.get("targets") or {})
        bad = sorted(set(targets) - set(RobustnessTargets.__dataclass_fields__))
        if bad:
            raise RobustnessConfigError(f"robustness.targets: unknown keys {bad}: max_f1_drop, min_sensitivity")
        shifts = tuple(ShiftConfig.parse(str(k), v) for k, v in (sec.get("shifts") or {}).items())
        out = cls(base_site=str(sec.get("base_site", cls.base_site)),
                  n_patients=int(sec.get("n_patients", cls.n_patients)),
                  keep_work=bool(sec.get("keep_work", cls.keep_work)),
                  targets=RobustnessTargets(**{k: float(v) for k, v in targets.items()}), shifts=shifts)
        sites = (params.get("cohort") or {}).get("sites") or {}
        if sites and out.base_site not in sites:
            raise RobustnessConfigError(f"robustness.base_site={out.base_site!r} is not in cohort.sites {sorted(sites)}")
        if out.n_patients < 2:
            raise RobustnessConfigError(f"robustness.n_patients={out.n_patients}: simulate >= 2 patients per site")
        return out


def shifted_scanner_id(scanner: str, shift: ShiftConfig) -> str:
    """``siemens_definition~noise_35``: the new scanner a shift adds for one of the base site's scanners."""
    return f"{scanner}~{shift.name}"


def shift_cohort(cohort: CohortConfig, site: str, n_patients: int, shift: ShiftConfig | None = None) -> CohortConfig:
    """The cohort configuration that simulates one robustness site (module docstring).

    Args:
        cohort: the run's ``cohort:`` section.
        site: the base site (its population, DXA device and scanners).
        n_patients: patients to simulate; patient i is the base site's patient i (the plan is keyed by index).
        shift: the overlay; None = the reference (the base site with its own scanners).

    Returns:
        ``cohort`` with the shifted scanners added, the site overlaid (external, ``n_patients`` test patients,
        the shifted scanners, the shift's contrast share) and no injected faults. Nothing else changes.

    Raises:
        RobustnessConfigError: unknown site, or a ``slice_mm`` overlay that would unpair the patients.
    """
    if site not in cohort.sites:
        raise RobustnessConfigError(f"robustness.base_site={site!r} is not in cohort.sites {sorted(cohort.sites)}")
    base = cohort.sites[site]
    scanners, weights = dict(cohort.scanners), base.scanners
    if shift is not None and shift.scanner:
        overlay = dict(shift.scanner)
        weights = []
        for sc, w in base.scanners:
            old = cohort.scanners[sc]
            if "slice_mm" in overlay and (len(overlay["slice_mm"]) > 1) != (len(old.slice_mm) > 1):
                raise RobustnessConfigError(
                    f"robustness.shifts.{shift.name}.slice_mm {list(overlay['slice_mm'])}: scanner {sc} offers "
                    f"{list(old.slice_mm)}; give one choice where it has one and several where it has several "
                    "(otherwise the simulator draws differently and the shift site no longer holds the same patients)")
            new = shifted_scanner_id(sc, shift)
            scanners[new] = replace(old, **overlay)
            weights.append((new, w))
        weights = tuple(weights)
    share = base.contrast_share if shift is None or shift.contrast_share is None else shift.contrast_share
    overlaid = replace(base, scanners=weights, contrast_share=share, external=True, patients=(0, 0, int(n_patients)))
    return replace(cohort, scanners=scanners, sites={**cohort.sites, site: overlaid}, faults={},
                   test_scale={**cohort.test_scale, site: 1.0})


def training_ranges(cohort: CohortConfig) -> dict[str, tuple[float, float]]:
    """(min, max) of every shiftable value over the training sites (``external: false``) and their scanners.

    ``slice_mm`` spans every slice choice; ``contrast_share`` the training sites' shares.
    """
    sites = [s for s in cohort.sites.values() if not s.external]
    used = sorted({sc for s in sites for sc, _ in s.scanners})
    if not used:
        raise RobustnessConfigError("cohort.sites: no training site (external: false) to take the ranges from")
    out: dict[str, tuple[float, float]] = {}
    for key in SCANNER_KEYS:
        vals = [float(v) for sc in used for v in (getattr(cohort.scanners[sc], key)
                                                  if key == "slice_mm" else (getattr(cohort.scanners[sc], key),))]
        out[key] = (min(vals), max(vals))
    shares = [s.contrast_share for s in sites]
    out["contrast_share"] = (min(shares), max(shares))
    return out


def outside_training(shift: ShiftConfig, ranges: Mapping[str, tuple[float, float]]) -> dict[str, bool]:
    """Per overlaid key: does the shift lie strictly outside the training range (every slice choice outside)?"""
    out = {}
    for key, v in shift.values().items():
        lo, hi = ranges[key]
        out[key] = all(x < lo or x > hi for x in (v if isinstance(v, tuple) else (v,)))
    return out
