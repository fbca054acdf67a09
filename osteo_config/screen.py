"""The ``screen:`` section: quality flags, DXA vendor references, conformal level, drift thresholds, review.

Read by ``osteo screen`` (the entry point) and handed to the ``screening/`` library as
frozen dataclasses. Every key is commented with its unit in params.yaml; an unknown key
anywhere in the section is :class:`ScreenConfigError` naming the key and the valid ones.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from osteo_config.errors import ConfigError

SEXES = ("female", "male")
REGIONS = ("L1", "L2", "L3", "L4", "L1-L4")


# The intended-use statement every report and every registered model version carries (one place).
INTENDED_USE = "Research use only; not a diagnostic device. Results must be confirmed by DXA."


class ScreenConfigError(ConfigError):
    """The ``screen:`` section of params.yaml is malformed (the message names the key and the fix)."""


def _section(raw: Any, where: str, cls: type) -> dict[str, Any]:
    """``raw`` as a dict whose keys are all fields of ``cls`` (else ScreenConfigError)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ScreenConfigError(f"{where} must be a mapping, got {type(raw).__name__}: fix params.yaml")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScreenConfigError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    return dict(raw)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ScreenConfigError(f"screen.{msg}; fix it in params.yaml")


@dataclass(frozen=True)
class QualityConfig:
    """Per-vertebra quality flags (screening/quality.py); a flagged level leaves the patient decision."""

    fracture_mild: float = 0.20            # Genant grade 1: height reduction >= 20 %
    fracture_moderate: float = 0.25        # grade 2: >= 25 %
    fracture_severe: float = 0.40          # grade 3: >= 40 %
    wall_fraction: float = 0.15            # anterior/posterior heights sampled this fraction of the AP depth inside the walls
    metal_hu: float = 2500.0               # HU above which a body voxel counts as metal
    metal_share: float = 0.002             # share of body voxels above metal_hu that flags hardware
    height_tolerance: float = 0.15         # label order: a level may be this fraction shorter than the one above
    out_of_fov_hu: float = -1500.0         # HU at or below which a voxel lies outside the reconstruction circle

    def __post_init__(self) -> None:
        _check(0 < self.fracture_mild <= self.fracture_moderate <= self.fracture_severe < 1,
               f"quality: need 0 < fracture_mild <= fracture_moderate <= fracture_severe < 1, got "
               f"{self.fracture_mild}, {self.fracture_moderate}, {self.fracture_severe}")
        _check(0 < self.wall_fraction < 0.5, f"quality.wall_fraction={self.wall_fraction} must lie in (0, 0.5)")
        _check(0 <= self.metal_share < 1, f"quality.metal_share={self.metal_share} must lie in [0, 1)")
        _check(0 <= self.height_tolerance < 1, f"quality.height_tolerance={self.height_tolerance} must lie in [0, 1)")


@dataclass(frozen=True)
class SbmdEquation:
    """Standardised BMD of one vendor: sBMD = slope * (bmd - center) + offset (g/cm2)."""

    slope: float
    center: float
    offset: float

    def __post_init__(self) -> None:
        _check(self.slope > 0, f"references sbmd slope={self.slope} must be > 0")


@dataclass(frozen=True)
class VendorReference:
    """One DXA vendor's young-adult reference (per sex and region) and its sBMD equation."""

    vendor: str
    mean: Mapping[str, Mapping[str, float]]   # sex -> region -> young-adult mean (g/cm2)
    sd: Mapping[str, Mapping[str, float]]     # sex -> region -> young-adult SD (g/cm2)
    sbmd: SbmdEquation
    source: str                                # citation of the reference and the sBMD equation

    def __post_init__(self) -> None:
        for name, table in (("mean", self.mean), ("sd", self.sd)):
            _check(set(table) == set(SEXES), f"references.vendors.{self.vendor}.{name} needs sexes {list(SEXES)}")
            for sex, regions in table.items():
                _check(set(regions) == set(REGIONS),
                       f"references.vendors.{self.vendor}.{name}.{sex} needs regions {list(REGIONS)}")
                _check(all(v > 0 for v in regions.values()),
                       f"references.vendors.{self.vendor}.{name}.{sex}: values must be > 0 g/cm2")


@dataclass(frozen=True)
class ReferenceTables:
    """Versioned DXA references: the version string travels into every report."""

    version: str
    vendors: Mapping[str, VendorReference]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str = "screen.references") -> "ReferenceTables":
        sec = _section(raw, where, cls)
        _check("version" in sec and "vendors" in sec, "references needs `version` and `vendors`")
        vendors = {}
        for name, v in dict(sec["vendors"]).items():
            v = _section(v, f"{where}.vendors.{name}", VendorReference)
            missing = sorted({"mean", "sd", "sbmd", "source"} - set(v))
            _check(not missing, f"references.vendors.{name}: missing keys {missing}")
            eq = _section(v["sbmd"], f"{where}.vendors.{name}.sbmd", SbmdEquation)
            table = {k: {sex: {r: float(x) for r, x in dict(regions).items()} for sex, regions in dict(v[k]).items()}
                     for k in ("mean", "sd")}
            vendors[name] = VendorReference(vendor=name, mean=table["mean"], sd=table["sd"],
                                            sbmd=SbmdEquation(**{k: float(x) for k, x in eq.items()}),
                                            source=str(v["source"]))
        _check(len(vendors) > 0, "references.vendors must name at least one vendor")
        return cls(version=str(sec["version"]), vendors=vendors)


@dataclass(frozen=True)
class DriftConfig:
    """Per-feature drift of a batch vs the model's training distribution (osteo_model/drift.py)."""

    bins: int = 10                 # quantile bins of the stored reference, >= 2
    psi_warn: float = 0.10         # PSI at or above which a feature is `warn`
    psi_alert: float = 0.25        # PSI at or above which a feature has drifted
    ks_alpha: float = 0.01         # two-sample KS p-value below which a numeric feature has drifted
    min_batch: int = 20            # fewer batch values than this: the feature is `too_few`, not judged

    def __post_init__(self) -> None:
        _check(self.bins >= 2, f"drift.bins={self.bins} must be >= 2")
        _check(0 < self.psi_warn <= self.psi_alert, f"drift: need 0 < psi_warn <= psi_alert")
        _check(0 < self.ks_alpha < 1, f"drift.ks_alpha={self.ks_alpha} must lie in (0, 1)")
        _check(self.min_batch >= 1, f"drift.min_batch={self.min_batch} must be >= 1")


@dataclass(frozen=True)
class PacsConfig:
    """``osteo screen run --pacs URL``: how far back the first query looks and the DICOMweb timeout."""

    lookback_days: int = 30                # StudyDate window of the QIDO query (days before today)
    timeout_s: float = 60.0                # per DICOMweb request (s)

    def __post_init__(self) -> None:
        _check(self.lookback_days >= 0, f"pacs.lookback_days={self.lookback_days} must be >= 0 days")
        _check(self.timeout_s > 0, f"pacs.timeout_s={self.timeout_s} must be > 0 s")


@dataclass(frozen=True)
class ScreenConfig:
    """The ``screen:`` section of params.yaml (units and ranges are commented there)."""

    review: str = "none"                       # none | required
    interval_level: float = 0.90               # split-conformal coverage target of the BMD interval
    report_vendors: tuple[str, ...] = ("Hologic", "GE Lunar", "MEDIX")
    quality: QualityConfig = QualityConfig()
    drift: DriftConfig = DriftConfig()
    references: ReferenceTables | None = None
    experiment: str = "osteo-screening"        # MLflow experiment of the batch runs (counts and drift only)
    segmenter_timeout_s: float = 3600.0        # wall-clock limit of one --segmenter call (s)
    pacs: PacsConfig = PacsConfig()

    def __post_init__(self) -> None:
        _check(self.review in ("none", "required"), f"review={self.review!r} must be none or required")
        _check(bool(self.experiment), "experiment must be a non-empty MLflow experiment name")
        _check(self.segmenter_timeout_s > 0, f"segmenter_timeout_s={self.segmenter_timeout_s} must be > 0 s")
        _check(0 < self.interval_level < 1, f"interval_level={self.interval_level} must lie in (0, 1)")
        _check(self.references is not None, "references is required (versioned DXA young-adult references)")
        missing = sorted(set(self.report_vendors) - set(self.references.vendors))
        _check(not missing, f"report_vendors {missing} have no entry in references.vendors")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ScreenConfig":
        """Parse ``params['screen']``; unknown keys (at any depth) are :class:`ScreenConfigError`."""
        sec = _section(params.get("screen"), "screen", cls)
        kw: dict[str, Any] = {k: sec[k] for k in ("review", "interval_level", "experiment") if k in sec}
        if "segmenter_timeout_s" in sec:
            kw["segmenter_timeout_s"] = float(sec["segmenter_timeout_s"])
        if "report_vendors" in sec:
            kw["report_vendors"] = tuple(sec["report_vendors"])
        if "quality" in sec:
            kw["quality"] = QualityConfig(**{k: float(v) for k, v in
                                             _section(sec["quality"], "screen.quality", QualityConfig).items()})
        if "drift" in sec:
            d = _section(sec["drift"], "screen.drift", DriftConfig)
            kw["drift"] = DriftConfig(**{k: (int(v) if k in ("bins", "min_batch") else float(v)) for k, v in d.items()})
        if "references" in sec:
            kw["references"] = ReferenceTables.parse(sec["references"])
        if "pacs" in sec:
            pc = _section(sec["pacs"], "screen.pacs", PacsConfig)
            kw["pacs"] = PacsConfig(**{k: (int(v) if k == "lookback_days" else float(v)) for k, v in pc.items()})
        return cls(**kw)
