"""The ``checks:`` section: bounds and allowed sets of the Great Expectations suites.

The CT scanner allow-list is its own key (``checks.scanners``; empty = not checked): a
hospital lists its scanners there. It is never derived from the simulator's ``cohort:``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from osteo_config.errors import ConfigError


class ChecksConfigError(ConfigError):
    """The ``checks:`` section (or a key it borrows from ``ingest:``/``paths:``) is missing or malformed."""


def _pair(section: Mapping[str, Any], key: str, cast: type = float, where: str = "checks") -> tuple[Any, Any]:
    value = section[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ChecksConfigError(f"{where}.{key} = {value!r} must be a [low, high] pair: fix params.yaml")
    low, high = cast(value[0]), cast(value[1])
    if low > high:
        raise ChecksConfigError(f"{where}.{key} = {value!r} has low > high: swap the bounds in params.yaml")
    return low, high


@dataclass(frozen=True)
class ChecksConfig:
    """Bounds and allowed sets the suites check against.

    Attributes:
        sites: allowed site codes.
        vendors: allowed DXA device vendors.
        scanners: allowed CT scanner ids; empty = not checked.
        external_sites: sites that must never appear in the train/valid splits.
        splits: allowed values of ``split``.
        bmd_range: (low, high) areal BMD, g/cm^2, inclusive.
        t_score_range: (low, high) T-score, SD, inclusive.
        who_thresholds: (osteopenia, osteoporosis) T-score cut-offs, SD (-1.0, -2.5).
        labeled_levels: (low, high) level ids with DXA labels, inclusive.
        age_range: (low, high) age at CT, years, inclusive.
        hu_window: (low, high) HU clip window of the ROIs (``ingest.hu_window``).
        min_body_voxels: smallest accepted vertebral body, voxels (``ingest.min_body_voxels``).
        window_days: max |CT date - DXA date| of a labelled pair, days (``ingest.dxa_window_days``).
        rows_per_site: (low, high) training rows per site, inclusive.
        class_share: (low, high) fraction of training rows per WHO class, inclusive.
        artifact_root: folder that ``pool_path`` is relative to (the texture stage folder, ``<paths.interim>/texture``).
    """

    sites: tuple[str, ...] = ("A", "B", "C", "D")
    vendors: tuple[str, ...] = ("Hologic", "GE Lunar", "MEDIX")
    scanners: tuple[str, ...] = ()
    external_sites: tuple[str, ...] = ("D",)
    splits: tuple[str, ...] = ("train", "valid", "test")
    bmd_range: tuple[float, float] = (0.3, 2.0)
    t_score_range: tuple[float, float] = (-6.0, 6.0)
    who_thresholds: tuple[float, float] = (-1.0, -2.5)
    labeled_levels: tuple[int, int] = (13, 16)
    age_range: tuple[float, float] = (18.0, 110.0)
    hu_window: tuple[float, float] = (-200.0, 1500.0)
    min_body_voxels: int = 200
    window_days: int = 183
    rows_per_site: tuple[int, int] = (1, 1_000_000)
    class_share: tuple[float, float] = (0.02, 0.95)
    artifact_root: Path = Path("data/interim/texture")

    def __post_init__(self) -> None:
        osteopenia, osteoporosis = self.who_thresholds
        if not osteoporosis < osteopenia:
            raise ChecksConfigError(
                f"who_thresholds {self.who_thresholds}: the osteoporosis cut-off must be below the "
                "osteopenia one (WHO: -2.5 < -1.0)"
            )
        if not 0.0 <= self.class_share[0] <= self.class_share[1] <= 1.0:
            raise ChecksConfigError(f"class_share {self.class_share} must satisfy 0 <= low <= high <= 1")
        unknown = set(self.external_sites) - set(self.sites)
        if unknown:
            raise ChecksConfigError(f"external_sites {sorted(unknown)} are not in checks.sites: add them there")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ChecksConfig":
        """Build from the merged params (``checks``, ``ingest`` and ``paths``).

        Raises:
            ChecksConfigError: a section or key is missing or a bound is malformed.
        """
        try:
            checks, ingest = params["checks"], params["ingest"]
            scanners = tuple(str(s) for s in checks.get("scanners") or ())
            return cls(
                sites=tuple(str(s) for s in checks["sites"]),
                vendors=tuple(str(v) for v in checks["vendors"]),
                scanners=scanners,
                external_sites=tuple(str(s) for s in checks["external_sites"]),
                splits=tuple(str(s) for s in checks["splits"]),
                bmd_range=_pair(checks, "bmd_range"),
                t_score_range=_pair(checks, "t_score_range"),
                who_thresholds=(float(checks["who_thresholds"][0]), float(checks["who_thresholds"][1])),
                labeled_levels=_pair(checks, "labeled_levels", int),
                age_range=_pair(checks, "age_range"),
                hu_window=_pair(ingest, "hu_window", float, "ingest"),
                min_body_voxels=int(ingest["min_body_voxels"]),
                window_days=int(ingest["dxa_window_days"]),
                rows_per_site=_pair(checks, "rows_per_site", int),
                class_share=_pair(checks, "class_share"),
                artifact_root=Path(params["paths"]["interim"]) / "texture",
            )
        except KeyError as exc:
            raise ChecksConfigError(
                f"params.yaml lacks {exc.args[0]!r} needed by data_checks: add it (see the checks: section)"
            ) from exc
