"""The ``evaluate:`` section: sites, bootstrap, calibration bins and subgroups of the test evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from osteo_config.errors import ConfigError


class EvaluationError(ConfigError):
    """Predictions or the ``evaluate:`` section cannot produce a valid evaluation."""


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate:`` section of params.yaml (units and ranges are commented there)."""

    sites: tuple[str, ...] = ("A", "B", "C", "D")
    external_sites: tuple[str, ...] = ("D",)
    n_boot: int = 1000
    ci_level: float = 0.95
    seed: int = 20260601
    min_defined_share: float = 0.9
    n_perm: int = 1000
    ci_metrics: tuple[str, ...] = ("acc", "sen", "spe", "f1", "auroc", "auprc", "bmd_r", "bmd_mae")
    compare_metrics: tuple[str, ...] = ("acc", "sen", "spe", "f1", "auroc")
    reliability_bins: int = 10
    age_bands: tuple[float, ...] = (60.0, 70.0, 80.0)
    subgroups: tuple[str, ...] = ("sex", "age_band", "scanner")

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise EvaluationError(f"evaluate.{msg}; fix it in params.yaml")
        check(len(self.sites) > 0 and set(self.external_sites) <= set(self.sites),
              f"external_sites {list(self.external_sites)} must be a subset of sites {list(self.sites)}")
        check(self.n_boot >= 1, f"n_boot={self.n_boot} must be >= 1")
        check(0.0 < self.ci_level < 1.0, f"ci_level={self.ci_level} must lie in (0, 1)")
        check(0.0 <= self.min_defined_share <= 1.0, f"min_defined_share={self.min_defined_share} must lie in [0, 1]")
        check(self.n_perm >= 1, f"n_perm={self.n_perm} must be >= 1")
        check(self.reliability_bins >= 2, f"reliability_bins={self.reliability_bins} must be >= 2")
        check(list(self.age_bands) == sorted(self.age_bands), "age_bands must be increasing")
        check(set(self.subgroups) <= {"sex", "age_band", "scanner", "site", "contrast"},
              f"subgroups {list(self.subgroups)}: choose from sex, age_band, scanner, site, contrast")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "EvaluateConfig":
        """Parse ``params['evaluate']`` (unknown keys are an error)."""
        section = dict(params.get("evaluate") or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise EvaluationError(f"evaluate: unknown keys {sorted(unknown)}; valid keys are {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        return cls(**values)
