"""The ``splits:`` section: patient-level train/valid/test assignment per site."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


SPLITS = ("train", "valid", "test")


ASSIGNMENTS = ("rank", "threshold")


class SplitError(ValueError):
    """Split configuration or input is unusable (fractions, duplicate patients, missing table)."""


@dataclass(frozen=True)
class SplitConfig:
    """The ``splits:`` section of params.yaml (units and ranges commented there)."""

    seed: int = 20260601
    assignment: str = "rank"
    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    site_fractions: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    external_sites: tuple[str, ...] = ("D",)
    file: str = "splits/splits.parquet"

    def __post_init__(self) -> None:
        if self.assignment not in ASSIGNMENTS:
            raise SplitError(f"splits.assignment={self.assignment!r}: choose one of {ASSIGNMENTS}")
        for site, fr in (("default", self.fractions), *self.site_fractions):
            if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
                raise SplitError(f"splits fractions for {site} = {fr}: give train/valid/test >= 0 summing to 1")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "SplitConfig":
        """Build from the merged params' ``splits`` section."""
        sec = dict(params.get("splits", {}) or {})

        def triple(d: Mapping[str, float]) -> tuple[float, float, float]:
            unknown = set(d) - set(SPLITS)
            if unknown:
                raise SplitError(f"splits fractions name {sorted(unknown)}: use train, valid, test")
            return tuple(float(d.get(k, 0.0)) for k in SPLITS)  # type: ignore[return-value]

        kw: dict[str, Any] = {k: sec[k] for k in ("seed", "assignment", "file") if k in sec}
        if "fractions" in sec:
            kw["fractions"] = triple(sec["fractions"])
        site_fr = sec.get("site_fractions") or {}
        if site_fr == "cohort":             # the synthetic cohort's planned split sizes (cohort.test_scale)
            from osteo_config.cohort import CohortConfig

            cohort = CohortConfig.from_params(params)
            kw["site_fractions"] = tuple(sorted((s, cohort.split_fractions(s)) for s in cohort.sites
                                                if s not in tuple(sec.get("external_sites") or ("D",))))
        elif isinstance(site_fr, Mapping):
            kw["site_fractions"] = tuple(sorted((str(s), triple(f)) for s, f in site_fr.items()))
        else:
            raise SplitError(f"splits.site_fractions={site_fr!r}: a mapping site -> fractions, or `cohort`")
        if "external_sites" in sec:
            kw["external_sites"] = tuple(str(s) for s in sec["external_sites"] or ())
        return cls(**kw)

    def fractions_for(self, site: str) -> tuple[float, float, float]:
        return dict(self.site_fractions).get(site, self.fractions)
