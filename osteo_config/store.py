"""The ``features_store:`` section: Feast project, stores and the point-in-time window."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd


PROFILES = ("local", "production")


class FeatureStoreError(RuntimeError):
    """The feature store is misconfigured or not ready (no yaml, not applied, service missing)."""


@dataclass(frozen=True)
class FeatureStoreConfig:
    """The ``features_store:`` section of params.yaml (units and ranges commented there).

    ``window_days`` is read from ``ingest.dxa_window_days``: one key for the pairing rule.
    """

    profile: str = "local"
    project: str = "osteo"
    repo_dir: str = "data/feature_repo"
    window_days: int = 183
    ct_ttl_days: int = 36500
    label_levels: tuple[int, ...] = (13, 14, 15, 16)
    registry_path: str = "data/registry.db"
    sqlite_path: str = "data/online_store.db"
    registry_sql: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    redis: str = "127.0.0.1:6379"
    cache_ttl_seconds: int = 60
    latency_lookups: int = 1000
    feast_typechecks: bool = False

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise FeatureStoreError(f"features_store.profile={self.profile!r}: choose one of {PROFILES}")
        if not self.project.replace("_", "").isalnum():
            raise FeatureStoreError(f"features_store.project={self.project!r}: use letters, digits, underscores")
        if not isinstance(self.feast_typechecks, bool):
            raise FeatureStoreError(f"features_store.feast_typechecks={self.feast_typechecks!r}: true or false")
        if self.window_days <= 0:
            raise FeatureStoreError(f"ingest.dxa_window_days={self.window_days}: must be > 0 days")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "FeatureStoreConfig":
        """Build from the merged params (``features_store`` section + ``ingest.dxa_window_days``)."""
        sec = dict(params.get("features_store", {}) or {})
        window = int(params.get("ingest", {}).get("dxa_window_days", cls.window_days))
        known = {k: v for k, v in sec.items() if k in cls.__dataclass_fields__}
        if "label_levels" in known:
            known["label_levels"] = tuple(int(v) for v in known["label_levels"])
        return cls(window_days=window, **known)

    @property
    def window(self) -> "pd.Timedelta":
        """The pairing window as a pandas Timedelta."""
        import pandas as pd
        return pd.Timedelta(days=self.window_days)
