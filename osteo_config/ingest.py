"""The ``ingest:`` section: grid, HU checks, body-mask morphology, phantomless calibration, DXA rules, pseudonym key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


def _tuple_fields(cls: type) -> set[str]:
    return {k for k, f in cls.__dataclass_fields__.items() if str(f.type).startswith("tuple")}


@dataclass(frozen=True)
class CalibrationConfig:
    """``ingest.calibration``: phantomless internal HU calibration (units in params.yaml's comments).

    Reference HUs are the values the tissues have at a correct calibration; windows and
    thresholds are in the study's *measured* HU (they must hold for slopes in ``slope_range``).
    """

    enabled: bool = True
    air_hu: float = -1000.0
    fat_hu: float = -100.0
    blood_hu: float = 40.0
    air_sd_hu: float = 5.0
    fat_sd_hu: float = 10.0
    blood_sd_hu: float = 10.0
    slope_range: tuple[float, float] = (0.8, 1.25)
    intercept_range_hu: tuple[float, float] = (-150.0, 150.0)
    max_residual_hu: float = 20.0
    min_voxels: int = 500
    smooth_mm: float = 1.0
    body_threshold_hu: float = -500.0
    air_margin_mm: float = 5.0
    max_censored_share: float = 0.9
    fat_window_hu: tuple[float, float] = (-190.0, -30.0)
    fat_erosion_mm: float = 1.5
    fat_max_depth_mm: float = 40.0
    blood_window_hu: tuple[float, float] = (0.0, 100.0)
    blood_margin_mm: float = 3.0
    blood_box_x_mm: tuple[float, float] = (-40.0, -3.0)
    blood_box_y_mm: tuple[float, float] = (3.0, 40.0)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> "CalibrationConfig":
        """Build from the ``ingest.calibration`` mapping; unknown keys are an error."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown ingest.calibration keys {unknown}: fix params.yaml (known: "
                             f"{sorted(cls.__dataclass_fields__)})")
        tuples = _tuple_fields(cls)
        cfg = cls(**{k: tuple(float(x) for x in v) if k in tuples else v for k, v in section.items()})
        lo, hi = cfg.slope_range
        if not (0 < lo < 1 < hi) or cfg.min_voxels < 1 or not (0 < cfg.max_censored_share < 1):
            raise ValueError("ingest.calibration: slope_range must be [lo < 1 < hi] with lo > 0, min_voxels >= 1, "
                             "max_censored_share in (0, 1)")
        if not (cfg.air_hu < cfg.fat_hu < cfg.blood_hu):
            raise ValueError("ingest.calibration: reference HUs must order air_hu < fat_hu < blood_hu")
        return cfg


@dataclass(frozen=True)
class IngestConfig:
    """The ``ingest:`` section of params.yaml (units in the comments there)."""

    workers: int = 2
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    roi_shape: tuple[int, int, int] = (48, 48, 32)
    hu_window: tuple[float, float] = (-200.0, 1500.0)
    hu_valid_range: tuple[float, float] = (-1100.0, 3500.0)
    hu_invalid_share: float = 0.01
    vertebra_median_hu_range: tuple[float, float] = (-200.0, 800.0)
    alignment_tol_mm: float = 0.5
    direction_tol: float = 0.001
    min_body_voxels: int = 200
    body_opening_mm: float = 3.0
    core_erosion_mm: float = 2.0
    ct_spline_order: int = 1
    dxa_window_days: int = 183
    dxa_bmd_range: tuple[float, float] = (0.2, 2.5)
    dxa_t_score_range: tuple[float, float] = (-8.0, 8.0)
    date_shift_max_days: int = 365
    key_env: str = "OSTEO_PSEUDONYM_KEY"
    key_file: str = "~/.config/osteo/pseudonym.key"
    allow_demo_key: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "IngestConfig":
        """Build from the merged params dict (its ``ingest`` section); unknown keys are an error."""
        section = dict(params.get("ingest", {}) or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown ingest keys {unknown}: fix params.yaml (known: "
                             f"{sorted(cls.__dataclass_fields__)})")
        tuples = _tuple_fields(cls)
        kw = {k: tuple(v) if k in tuples else v for k, v in section.items()}
        kw["calibration"] = CalibrationConfig.from_section(section.get("calibration"))
        cfg = cls(**kw)
        if cfg.ct_spline_order not in (0, 1, 2, 3, 4, 5) or len(cfg.roi_shape) != 3 or min(cfg.spacing_mm) <= 0:
            raise ValueError("ingest: ct_spline_order must be 0-5, roi_shape 3 ints, spacing_mm > 0")
        return cfg
