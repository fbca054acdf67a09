"""Configuration of the synthetic cohort: the ``cohort:`` section of params.yaml.

Everything the simulator does is driven by these frozen dataclasses: sites,
CT scanners, DXA devices, bone and CT physics constants, exam timing and
fault fractions. Adding a site with a new scanner and a new DXA vendor is an
edit of params.yaml only (see ``tests/cohort/test_config.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from osteo_config.errors import ConfigError

DXA_REGIONS = ("L1", "L2", "L3", "L4", "L1-L4")
FAULT_KINDS = (
    "corrupt_ct", "corrupt_mask", "missing_level", "flipped_orientation",
    "misaligned_mask", "wrong_spacing", "hu_out_of_range",
)
ORIENTATIONS = ("RAS", "LPS", "LAS")


class CohortConfigError(ConfigError):
    """The ``cohort:`` section of params.yaml is incomplete or inconsistent."""


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise CohortConfigError(f"cohort config: missing key {where}.{key}: add it to params.yaml")
    return d[key]


def _pair(v: Any, where: str) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or float(v[0]) > float(v[1]):
        raise CohortConfigError(f"cohort config: {where} must be [low, high] with low <= high, got {v!r}")
    return float(v[0]), float(v[1])


def _take(cls: type, d: Mapping[str, Any], where: str, **conv: Any) -> Any:
    """Build dataclass ``cls`` from mapping ``d``; ``conv`` maps a field name to a converter."""
    kwargs = {}
    for f in fields(cls):
        if f.name in conv and conv[f.name] is None:
            continue
        raw = _need(d, f.name, where)
        kwargs[f.name] = conv[f.name](raw) if f.name in conv else raw
    return cls(**kwargs)


@dataclass(frozen=True)
class ScannerConfig:
    """One CT scanner model: the physics that makes sites differ."""

    manufacturer: str              # DICOM Manufacturer
    model: str                     # DICOM ManufacturerModelName
    hu_slope: float                # HU_measured = hu_slope * HU_true + hu_offset
    hu_offset: float               # HU
    psf_fwhm_mm: float             # in-plane PSF FWHM (mm)
    pixel_mm: tuple[float, float]  # in-plane pixel size range (mm)
    slice_mm: tuple[float, ...]    # slice-thickness choices (mm)
    noise_hu: float                # noise SD (HU)
    kvp: float                     # tube voltage, DICOM KVP


@dataclass(frozen=True)
class DxaDeviceConfig:
    """One DXA device: vendor calibration, precision and young-adult reference."""

    vendor: str
    model: str
    slope: float                   # reading = slope * true_aBMD + intercept (g/cm2)
    intercept: float
    precision_cv: float            # CV of the L1-L4 reading
    level_cv_factor: float         # single-level CV = factor * precision_cv
    ref_mean: dict[str, float]     # region -> young-adult mean (g/cm2)
    ref_sd: dict[str, float]       # region -> young-adult SD (g/cm2)
    ref_source: str                # citation of the reference data (versioned)


@dataclass(frozen=True)
class SiteConfig:
    """One hospital: its scanners, DXA device, size and population."""

    name: str
    dxa_device: str
    scanners: tuple[tuple[str, float], ...]   # (scanner id, draw weight)
    patients: tuple[int, ...]                 # Table-1 train/valid/test counts
    external: bool
    age_mean: float
    age_sd: float
    age_range: tuple[float, float]
    female_share: float
    contrast_share: float

    def n_patients(self, scale: float, test_scale: float | None = None, valid_scale: float | None = None) -> int:
        """Generated patient count: round(scale x Table-1 total), at least 2; with ``test_scale`` or
        ``valid_scale``, the sum of :meth:`planned_splits` (each split rounded on its own)."""
        if test_scale is None and valid_scale is None:
            return max(2, int(math.floor(scale * sum(self.patients) + 0.5)))
        return max(2, sum(self.planned_splits(scale, test_scale, valid_scale)))

    def planned_splits(self, scale: float, test_scale: float | None = None,
                       valid_scale: float | None = None) -> tuple[int, int, int]:
        """Train / valid / test patients the site is generated for: Table 1 x ``scale``; the test count
        x ``test_scale`` and the valid count x ``valid_scale`` instead when given (rounded half up).
        The train count always stays at ``scale``: the training site mix is the paper's."""
        train, valid, test = (tuple(self.patients) + (0, 0, 0))[:3]
        r = lambda x: int(math.floor(x + 0.5))  # noqa: E731
        return (r(scale * train), r((scale if valid_scale is None else valid_scale) * valid),
                r((scale if test_scale is None else test_scale) * test))


@dataclass(frozen=True)
class BoneConfig:
    """Latent bone physics constants (see docs/cohort.md)."""

    peak_vbmd: dict[str, float]
    vbmd_cv: float
    decline_per_year: dict[str, float]
    menopause_age: tuple[float, float]
    menopause_decline: float
    menopause_years: float
    late_decline: float
    level_gradient: float
    lumbar_gradient: float
    level_cv: float
    tissue_mineral_mg: float
    tb_th_young_mm: float
    tb_th_exponent: float
    bvtv_young: float
    anisotropy: float
    horizontal_thinning_max: float
    cortical_mm: dict[str, float]
    cortical_decline: float
    cortical_cv: float
    cortical_corr: float
    cortical_mineral_mg: float
    posterior_mineral_mg: float
    size_cv: float
    male_size: float
    marrow_fat_base: float
    marrow_fat_per_year: float
    marrow_fat_density_coupling: float
    marrow_fat_sd: float
    l6_share: float


@dataclass(frozen=True)
class CtPhysicsConfig:
    """Tissue HU values at the true calibration and the contrast model."""

    hu_per_mg: float
    bone_matrix_hu: float
    red_marrow_hu: float
    fat_hu: float
    soft_tissue_hu: float
    disc_hu: float
    csf_hu: float
    air_hu: float
    contrast_trabecular_hu: tuple[float, float]
    contrast_soft_hu: tuple[float, float]
    contrast_aorta_hu: tuple[float, float]
    core_fraction: float


@dataclass(frozen=True)
class TimingConfig:
    """Exam dates and the mess of real exports."""

    ct_dates: tuple[str, str]
    dxa_within_days: int
    dxa_outside_share: float
    dxa_outside_days: tuple[float, float]
    repeat_ct_share: float
    repeat_ct_days: tuple[float, float]
    duplicate_dxa_share: float
    repeat_dxa_share: float
    thoracic_study_share: float


@dataclass(frozen=True)
class CohortConfig:
    """The whole simulator configuration (``cohort:`` section)."""

    seed: int
    scale: float
    workers: int
    dicom_share: float
    totalseg_dir_share: float
    verse_share: float
    orientations: tuple[str, ...]
    fine_voxel_mm: float
    fov_mm: tuple[float, float]
    sites: dict[str, SiteConfig]
    scanners: dict[str, ScannerConfig]
    dxa_devices: dict[str, DxaDeviceConfig]
    bone: BoneConfig
    ct: CtPhysicsConfig
    timing: TimingConfig
    faults: dict[str, float] = field(default_factory=dict)
    test_scale: dict[str, float] = field(default_factory=dict)   # site -> scale of its Table-1 test count
    valid_scale: dict[str, float] = field(default_factory=dict)  # site -> scale of its Table-1 valid count

    def n_patients(self, site: str) -> int:
        """Patients generated for ``site`` (``scale``; ``test_scale`` / ``valid_scale`` for those counts when set)."""
        return self.sites[site].n_patients(self.scale, self.test_scale.get(site), self.valid_scale.get(site))

    def split_fractions(self, site: str) -> tuple[float, float, float]:
        """The site's planned train / valid / test shares (``splits.site_fractions: cohort``)."""
        counts = self.sites[site].planned_splits(self.scale, self.test_scale.get(site), self.valid_scale.get(site))
        total = sum(counts)
        if total == 0:
            raise CohortConfigError(f"cohort.sites.{site}: no patients planned: cannot derive split fractions")
        return tuple(c / total for c in counts)  # type: ignore[return-value]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "CohortConfig":
        """Parse the merged params dict (whole file or just the ``cohort`` section).

        Raises:
            CohortConfigError: a key is missing or a reference (scanner, DXA device) is unknown.
        """
        c = params["cohort"] if "cohort" in params else params
        scanners = {
            k: _take(ScannerConfig, v, f"cohort.scanners.{k}",
                     pixel_mm=lambda x, k=k: _pair(x, f"scanners.{k}.pixel_mm"),
                     slice_mm=lambda x: tuple(float(s) for s in (x if isinstance(x, list) else [x])))
            for k, v in _need(c, "scanners", "cohort").items()
        }
        devices = {
            k: _take(DxaDeviceConfig, v, f"cohort.dxa_devices.{k}",
                     ref_mean=lambda x: {r: float(x[r]) for r in DXA_REGIONS},
                     ref_sd=lambda x: {r: float(x[r]) for r in DXA_REGIONS})
            for k, v in _need(c, "dxa_devices", "cohort").items()
        }
        sites = {}
        for name, s in _need(c, "sites", "cohort").items():
            site = _take(SiteConfig, {**s, "name": name}, f"cohort.sites.{name}",
                         scanners=lambda x: tuple((str(a), float(w)) for a, w in x.items()),
                         patients=lambda x: tuple(int(n) for n in x),
                         age_range=lambda x, n=name: _pair(x, f"sites.{n}.age_range"))
            if site.dxa_device not in devices:
                raise CohortConfigError(
                    f"site {name}: DXA device {site.dxa_device!r} not in cohort.dxa_devices {sorted(devices)}")
            for sc, _ in site.scanners:
                if sc not in scanners:
                    raise CohortConfigError(f"site {name}: scanner {sc!r} not in cohort.scanners {sorted(scanners)}")
            sites[name] = site
        split_scales: dict[str, dict[str, float]] = {}
        for key in ("test_scale", "valid_scale"):
            sc = {str(k): float(v) for k, v in (c.get(key) or {}).items()}
            bad = sorted(set(sc) - set(c.get("sites") or {})) + sorted(k for k, v in sc.items() if v < 0)
            if bad:
                raise CohortConfigError(f"cohort.{key}: {bad}: keys must be sites of cohort.sites, values >= 0")
            split_scales[key] = sc
        faults = {k: float(v) for k, v in (c.get("faults") or {}).items()}
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown:
            raise CohortConfigError(f"unknown fault kinds {sorted(unknown)}: choose from {FAULT_KINDS}")
        orient = tuple(_need(c, "orientations", "cohort"))
        if not set(orient) <= set(ORIENTATIONS):
            raise CohortConfigError(f"orientations {orient} must be among {ORIENTATIONS}")
        bone = _take(BoneConfig, _need(c, "bone", "cohort"), "cohort.bone",
                     menopause_age=lambda x: _pair(x, "bone.menopause_age"))
        ct = _take(CtPhysicsConfig, _need(c, "ct", "cohort"), "cohort.ct",
                   contrast_trabecular_hu=lambda x: _pair(x, "ct.contrast_trabecular_hu"),
                   contrast_soft_hu=lambda x: _pair(x, "ct.contrast_soft_hu"),
                   contrast_aorta_hu=lambda x: _pair(x, "ct.contrast_aorta_hu"))
        timing = _take(TimingConfig, _need(c, "timing", "cohort"), "cohort.timing",
                       ct_dates=lambda x: (str(x[0]), str(x[1])),
                       dxa_outside_days=lambda x: _pair(x, "timing.dxa_outside_days"),
                       repeat_ct_days=lambda x: _pair(x, "timing.repeat_ct_days"))
        return cls(
            seed=int(_need(c, "seed", "cohort")), scale=float(_need(c, "scale", "cohort")),
            workers=int(c.get("workers", 1)), dicom_share=float(c.get("dicom_share", 0.0)),
            totalseg_dir_share=float(c.get("totalseg_dir_share", 0.0)),
            verse_share=float(c.get("verse_share", 0.0)), orientations=orient,
            fine_voxel_mm=float(_need(c, "fine_voxel_mm", "cohort")),
            fov_mm=tuple(float(v) for v in _need(c, "fov_mm", "cohort")),
            sites=sites, scanners=scanners, dxa_devices=devices,
            bone=bone, ct=ct, timing=timing, faults=faults, **split_scales,
        )
