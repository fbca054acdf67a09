"""The ``tracking:`` section: the one MLflow tracking + model-registry URI every package uses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from osteo_config.params import ParamsError


# --- the MLflow tracking / model-registry database: one resolver for every package ---------------
TRACKING_PROFILES = ("local", "production")


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(tracking: Mapping[str, Any] | None) -> str:
    """The MLflow tracking + model-registry URI selected by a ``tracking:`` section.

    ``profile: local`` (default) -> ``uri`` (SQLite file, default ``sqlite:///mlflow.db``);
    ``profile: production`` -> ``production_uri`` (PostgreSQL). Both
    :class:`osteo_model.tracking.TrackingConfig` (runs) and
    :class:`registry.config.RegistryConfig` (aliases, audit log, lock) call this, so
    runs and registered versions always live in the same database.

    Raises:
        ParamsError: unknown profile, or the production profile without ``production_uri``.
    """
    sec = dict(tracking or {})
    profile = sec.get("profile", "local")
    if profile not in TRACKING_PROFILES:
        raise ParamsError(f"tracking.profile={profile!r}: use one of {list(TRACKING_PROFILES)}")
    if profile == "production":
        uri = sec.get("production_uri")
        if not uri:
            raise ParamsError("tracking.profile=production needs tracking.production_uri "
                              "(e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow)")
        return str(uri)
    return str(sec.get("uri") or DEFAULT_TRACKING_URI)


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking:`` section of params.yaml (keys commented there).

    ``profile`` picks the database: ``local`` -> ``uri``, ``production`` -> ``production_uri``;
    :attr:`active_uri` is what every run is logged to (:func:`osteo_config.params.resolve_tracking_uri`,
    the same resolver the registry uses).
    """

    profile: str = "local"
    uri: str = DEFAULT_TRACKING_URI
    production_uri: str | None = None
    artifact_location: str = "mlartifacts"
    experiment: str = "osteo-training"
    log_system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    log_model: bool = True

    def __post_init__(self) -> None:
        resolve_tracking_uri(self._uris())                 # a bad profile fails here, with what to fix

    def _uris(self) -> dict[str, Any]:
        return {"profile": self.profile, "uri": self.uri, "production_uri": self.production_uri}

    @property
    def active_uri(self) -> str:
        """The tracking + registry URI of the active profile."""
        return resolve_tracking_uri(self._uris())

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrackingConfig":
        sec = dict(params.get("tracking") or {})
        unknown = set(sec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"tracking: unknown keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**sec)
