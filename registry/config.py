"""``RegistryConfig``: the non-gate part of the ``registry:`` section of params.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from registry.errors import RegistryConfigError


@dataclass(frozen=True)
class RegistryConfig:
    """Where the registry lives and what a candidate must carry (units/ranges commented in params.yaml).

    ``profile`` picks the tracking URI: ``local`` -> ``tracking_uri`` (SQLite, file lock),
    ``production`` -> ``production_tracking_uri`` (PostgreSQL, advisory lock).
    """

    profile: str = "local"
    tracking_uri: str = "sqlite:///mlflow.db"
    production_tracking_uri: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow"
    model_name: str = "osteo-screening"
    lock_timeout_s: float = 60.0
    required_tags: tuple[str, ...] = ("data_version", "split_hash", "params_hash")

    def __post_init__(self) -> None:
        if self.profile not in ("local", "production"):
            raise RegistryConfigError(f"registry.profile={self.profile!r}: use local | production")
        if self.lock_timeout_s <= 0:
            raise RegistryConfigError(f"registry.lock_timeout_s={self.lock_timeout_s} must be > 0")
        for uri in (self.tracking_uri, self.production_tracking_uri):
            if not uri.startswith(("sqlite:///", "postgresql")):
                raise RegistryConfigError(f"tracking URI {uri!r}: the registry needs sqlite:///<file> or "
                                          "postgresql://... (its audit table and lock live in that database)")

    @property
    def uri(self) -> str:
        """The tracking/registry URI of the active profile."""
        return self.production_tracking_uri if self.profile == "production" else self.tracking_uri

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "RegistryConfig":
        """Parse ``params['registry']`` without its ``gates`` (see :class:`registry.gates.GatesConfig`)."""
        section = {k: v for k, v in dict(params.get("registry") or {}).items() if k != "gates"}
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise RegistryConfigError(f"registry: unknown keys {sorted(unknown)}; "
                                      f"valid keys are {sorted(known | {'gates'})}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        return cls(**values)
