"""The ``ingest:`` section: grid, HU checks, body-mask morphology, DXA rules and the pseudonym key."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


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

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "IngestConfig":
        """Build from the merged params dict (its ``ingest`` section); unknown keys are an error."""
        section = dict(params.get("ingest", {}) or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown ingest keys {unknown}: fix params.yaml (known: "
                             f"{sorted(cls.__dataclass_fields__)})")
        tuples = {k for k, f in cls.__dataclass_fields__.items() if str(f.type).startswith("tuple")}
        kw = {k: tuple(v) if k in tuples else v for k, v in section.items()}
        cfg = cls(**kw)
        if cfg.ct_spline_order not in (0, 1, 2, 3, 4, 5) or len(cfg.roi_shape) != 3 or min(cfg.spacing_mm) <= 0:
            raise ValueError("ingest: ct_spline_order must be 0-5, roi_shape 3 ints, spacing_mm > 0")
        return cfg
