"""``RegistryConfig``: the non-gate part of the ``registry:`` section of params.yaml, plus the database.

The database (tracking + registry URI) is not configured here: it is the one of
the ``tracking:`` section (``tracking.profile`` -> ``tracking.uri`` or
``tracking.production_uri``), resolved by :func:`osteo_config.params.resolve_tracking_uri`,
the same resolver the training runs use. Registered versions therefore always sit
beside the runs that produced them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from osteo_config.params import DEFAULT_TRACKING_URI, ParamsError, resolve_tracking_uri
from registry.errors import RegistryConfigError

# keys that moved to the ``tracking:`` section (one place for the database URI)
_MOVED = {"profile": "tracking.profile", "tracking_uri": "tracking.uri",
          "production_tracking_uri": "tracking.production_uri"}


@dataclass(frozen=True)
class RegistryConfig:
    """Where the registry lives and what a candidate must carry (units/ranges commented in params.yaml).

    ``uri`` is the resolved tracking/registry URI (SQLite -> fcntl file lock,
    PostgreSQL -> advisory lock); :meth:`from_params` fills it from ``tracking:``.
    """

    uri: str = DEFAULT_TRACKING_URI
    model_name: str = "osteo-screening"
    lock_timeout_s: float = 60.0
    required_tags: tuple[str, ...] = ("data_version", "split_hash", "params_hash")

    def __post_init__(self) -> None:
        if self.lock_timeout_s <= 0:
            raise RegistryConfigError(f"registry.lock_timeout_s={self.lock_timeout_s} must be > 0")
        if not self.uri.startswith(("sqlite:///", "postgresql")):
            raise RegistryConfigError(f"tracking URI {self.uri!r}: the registry needs sqlite:///<file> or "
                                      "postgresql://... (its audit table and lock live in that database); "
                                      "set tracking.uri / tracking.production_uri in params.yaml")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "RegistryConfig":
        """Parse ``params['registry']`` without its ``gates`` (see :class:`registry.gates.GatesConfig`);
        the URI comes from ``params['tracking']``."""
        section = {k: v for k, v in dict(params.get("registry") or {}).items() if k != "gates"}
        moved = sorted(set(section) & set(_MOVED))
        if moved:
            raise RegistryConfigError(f"registry: keys {moved} moved to the tracking: section "
                                      f"({', '.join(f'registry.{k} -> {_MOVED[k]}' for k in moved)}); "
                                      "runs and registry share one database URI")
        known = set(cls.__dataclass_fields__) - {"uri"}
        unknown = set(section) - known
        if unknown:
            raise RegistryConfigError(f"registry: unknown keys {sorted(unknown)}; "
                                      f"valid keys are {sorted(known | {'gates'})}")
        try:
            uri = resolve_tracking_uri(params.get("tracking"))
        except ParamsError as exc:
            raise RegistryConfigError(str(exc)) from exc
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        return cls(uri=uri, **values)
