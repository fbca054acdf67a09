"""The ``registry:`` section: where versions are registered and the promotion gates (pure data).

The tracking + registry URI is not configured here: it is the one of the
``tracking:`` section (``tracking.profile`` -> ``tracking.uri`` or
``tracking.production_uri``), resolved by :func:`osteo_config.tracking.resolve_tracking_uri`,
the same resolver the training runs use. Registered versions therefore always sit
beside the runs that produced them. That URI may be a database (``sqlite:///``,
``postgresql://``) or an MLflow tracking server (``http(s)://``).

The registry's own store (promotion lock + keyed audit log + promotion intents) is
``registry.lock_uri``: a database the registry's clients reach directly (PostgreSQL:
advisory lock; SQLite: fcntl file lock beside the file). Empty = the tracking URI when
that is a database; required when the tracking URI is an MLflow server, which offers
neither a lock nor an append-only table.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from osteo_config.errors import ConfigError
from osteo_config.params import ParamsError
from osteo_config.tracking import DEFAULT_TRACKING_URI, resolve_tracking_uri


class RegistryConfigError(ConfigError):
    """A ``registry:`` value in params.yaml (or a tracking URI) is invalid."""


TRACKING_SCHEMES = ("sqlite:///", "postgresql", "http://", "https://")
STORE_SCHEMES = ("sqlite:///", "postgresql")
APPROVAL_MODES = ("none", "required")

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
    lock_uri: str | None = None
    approval: str = "none"
    audit_key_env: str = "OSTEO_REGISTRY_AUDIT_KEY"
    audit_key_file: str = "~/.config/osteo/registry-audit.key"
    allow_demo_audit_key: bool = False

    def __post_init__(self) -> None:
        if self.lock_timeout_s <= 0:
            raise RegistryConfigError(f"registry.lock_timeout_s={self.lock_timeout_s} must be > 0")
        if not self.uri.startswith(TRACKING_SCHEMES):
            raise RegistryConfigError(f"tracking URI {self.uri!r}: the registry needs sqlite:///<file>, "
                                      "postgresql://... or an MLflow tracking server http(s)://...; "
                                      "set tracking.uri / tracking.production_uri in params.yaml")
        if self.lock_uri and not self.lock_uri.startswith(STORE_SCHEMES):
            raise RegistryConfigError(f"registry.lock_uri={self.lock_uri!r}: the lock and audit log need a "
                                      "database, postgresql://... (advisory lock) or sqlite:///<file> (file lock)")
        if not self.lock_uri and not self.uri.startswith(STORE_SCHEMES):
            raise RegistryConfigError(f"tracking URI {self.uri!r} is an MLflow server: set registry.lock_uri to a "
                                      "PostgreSQL URL (or sqlite:///<file> on one machine) for the promotion lock "
                                      "and the audit log")
        if self.approval not in APPROVAL_MODES:
            raise RegistryConfigError(f"registry.approval={self.approval!r}: use one of {list(APPROVAL_MODES)}")

    @property
    def store_uri(self) -> str:
        """Database of the promotion lock, audit log and intents (``lock_uri``, else the tracking DB)."""
        return self.lock_uri or self.uri

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


SCOPES = ("site", "external", "pooled", "internal")


LEVELS = ("vertebra", "patient")


@dataclass(frozen=True)
class GateRule:
    """One bound: ``min <= metrics[scope][level][metric] <= max`` (either bound may be None)."""

    scope: str
    level: str
    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DropRule:
    """Largest allowed drop of ``metric`` vs the champion, in the metric's unit."""

    scope: str
    level: str
    metric: str
    max: float


@dataclass(frozen=True)
class SubgroupRule:
    """Patient-level sensitivity floor (percent) per subgroup of each attribute."""

    attributes: tuple[str, ...] = ("sex", "age_band", "scanner")
    min: float = 60.0
    min_positives: int = 5


@dataclass(frozen=True)
class CalibrationRule:
    """Bounds of the calibration slope at ``scope`` / ``level``."""

    scope: str = "pooled"
    level: str = "vertebra"
    slope: tuple[float, float] = (0.5, 2.0)


BOUNDS = ("ci", "point")
EVIDENCE_ACTIONS = ("block", "warn")


@dataclass(frozen=True)
class EvidenceRule:
    """Minimum evidence per scope: patients with and without osteoporosis a gate needs to decide.

    A rule or drop check whose scope's test split holds fewer than ``positives`` osteoporotic or
    ``negatives`` other patients is ``insufficient`` (not pass, not fail); ``action: block`` stops
    the promotion on it, ``warn`` lets the other gates decide and shows it.
    """

    positives: int = 10
    negatives: int = 10
    action: str = "block"

    def __post_init__(self) -> None:
        if self.positives < 0 or self.negatives < 0:
            raise RegistryConfigError("registry.gates.min_evidence: positives and negatives must be >= 0")
        if self.action not in EVIDENCE_ACTIONS:
            raise RegistryConfigError(f"registry.gates.min_evidence.action={self.action!r}: "
                                      f"use one of {list(EVIDENCE_ACTIONS)}")


def _check_scope(scope: str, level: str, where: str) -> None:
    if scope not in SCOPES or level not in LEVELS:
        raise RegistryConfigError(f"{where}: scope {scope!r} / level {level!r}: scope in {SCOPES}, level in {LEVELS}")


@dataclass(frozen=True)
class GatesConfig:
    """``registry.gates`` plus the site lists of ``evaluate:`` (which sites ``site``/``external`` expand to)."""

    internal_sites: tuple[str, ...] = ("A", "B", "C")
    external_sites: tuple[str, ...] = ("D",)
    rules: tuple[GateRule, ...] = ()
    max_drop: tuple[DropRule, ...] = ()
    subgroup_sensitivity: SubgroupRule | None = None
    calibration: CalibrationRule | None = None
    bound: str = "ci"                  # rules: ci = min vs <metric>_lo, max vs <metric>_hi; point = the estimate
    drop_bound: str = "point"          # max_drop: point = paired difference; ci = its worse CI end
    min_evidence: EvidenceRule | None = None

    def __post_init__(self) -> None:
        for key in ("bound", "drop_bound"):
            if getattr(self, key) not in BOUNDS:
                raise RegistryConfigError(f"registry.gates.{key}={getattr(self, key)!r}: use one of {list(BOUNDS)}")
        for i, r in enumerate(self.rules):
            _check_scope(r.scope, r.level, f"registry.gates.rules[{i}]")
            if r.min is None and r.max is None:
                raise RegistryConfigError(f"registry.gates.rules[{i}] needs min and/or max")
        for i, d in enumerate(self.max_drop):
            _check_scope(d.scope, d.level, f"registry.gates.max_drop[{i}]")
        if self.calibration is not None:
            _check_scope(self.calibration.scope, self.calibration.level, "registry.gates.calibration")
            lo, hi = self.calibration.slope
            if not lo <= hi:
                raise RegistryConfigError("registry.gates.calibration.slope must be [low, high] with low <= high")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "GatesConfig":
        """Parse ``params['registry']['gates']`` and the sites of ``params['evaluate']``."""
        ev = params.get("evaluate") or {}
        sites = tuple(ev.get("sites", ("A", "B", "C", "D")))
        external = tuple(ev.get("external_sites", ("D",)))
        g = dict((params.get("registry") or {}).get("gates") or {})
        unknown = set(g) - {"rules", "max_drop", "subgroup_sensitivity", "calibration", "bound", "drop_bound",
                            "min_evidence"}
        if unknown:
            raise RegistryConfigError(f"registry.gates: unknown keys {sorted(unknown)}")
        try:
            sub = g.get("subgroup_sensitivity")
            cal = g.get("calibration")
            ev = g.get("min_evidence")
            return cls(internal_sites=tuple(s for s in sites if s not in external), external_sites=external,
                       rules=tuple(GateRule(**r) for r in g.get("rules") or ()),
                       max_drop=tuple(DropRule(**r) for r in g.get("max_drop") or ()),
                       subgroup_sensitivity=None if sub is None else SubgroupRule(
                           **{**sub, "attributes": tuple(sub.get("attributes", SubgroupRule.attributes))}),
                       calibration=None if cal is None else CalibrationRule(
                           **{**cal, "slope": tuple(cal.get("slope", CalibrationRule.slope))}),
                       bound=str(g.get("bound", "ci")), drop_bound=str(g.get("drop_bound", "point")),
                       min_evidence=None if ev is None else EvidenceRule(**ev))
        except TypeError as exc:
            raise RegistryConfigError(f"registry.gates: {exc}; see the key comments in params.yaml") from exc

    def gate_ids(self) -> frozenset[str]:
        """Identifiers of every configured gate (a complete report has a check for each)."""
        ids = {f"rules[{i}]" for i in range(len(self.rules))} | {f"max_drop[{i}]" for i in range(len(self.max_drop))}
        if self.subgroup_sensitivity is not None:
            ids.add("subgroup_sensitivity")
        if self.calibration is not None:
            ids.add("calibration")
        return frozenset(ids)

    def digest(self) -> str:
        """SHA-256 (16 hex) of the configuration: a report is only valid for the config it was computed with."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def expand(self, scope: str) -> tuple[str, ...]:
        """Metric-dict scopes a rule scope addresses."""
        if scope == "site":
            return tuple(f"site_{s}" for s in self.internal_sites)
        if scope == "external":
            return tuple(f"site_{s}" for s in self.external_sites)
        return (scope,)
