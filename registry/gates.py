"""Promotion gates: configuration in, every failure with its numbers out (pure).

Gates read the metrics dict of :func:`osteo_model.evaluate.evaluate_predictions`
(``metrics[scope][level][metric]``, scopes ``site_<X>``, ``internal``,
``external``, ``pooled``; subgroups under ``metrics["subgroups"][attr][value]``).
Four kinds, each configured under ``registry.gates`` in params.yaml:

* ``rules``: bounds ``{scope, level, metric, min and/or max}``. Scope ``site``
  expands to every internal site, ``external`` to every external site (one
  check per site); ``pooled`` and ``internal`` address the pooled scopes.
* ``max_drop``: ``{scope, level, metric, max}``, the largest allowed drop vs the
  current champion in the metric's unit (for lower-is-better metrics such as
  ``bmd_mae`` a rise counts as a drop). Skipped, with a note, when there is no
  champion yet.
* ``subgroup_sensitivity``: patient-level sensitivity floor in every subgroup of
  the listed attributes; subgroups with fewer than ``min_positives``
  osteoporotic patients are reported as skipped (too few to judge).
* ``calibration``: bounds on the logistic-recalibration slope.

A metric that is absent or ``null`` is a failure ("incomplete evaluation"),
never a pass. Every configured gate yields at least one check, so a report can
be verified to cover the configuration (:meth:`GateReport.covers`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from registry.errors import RegistryConfigError

SCOPES = ("site", "external", "pooled", "internal")
LEVELS = ("vertebra", "patient")
LOWER_IS_BETTER = frozenset({"bmd_mae", "brier", "ece"})


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

    def __post_init__(self) -> None:
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
        unknown = set(g) - {"rules", "max_drop", "subgroup_sensitivity", "calibration"}
        if unknown:
            raise RegistryConfigError(f"registry.gates: unknown keys {sorted(unknown)}")
        try:
            sub = g.get("subgroup_sensitivity")
            cal = g.get("calibration")
            return cls(internal_sites=tuple(s for s in sites if s not in external), external_sites=external,
                       rules=tuple(GateRule(**r) for r in g.get("rules") or ()),
                       max_drop=tuple(DropRule(**r) for r in g.get("max_drop") or ()),
                       subgroup_sensitivity=None if sub is None else SubgroupRule(
                           **{**sub, "attributes": tuple(sub.get("attributes", SubgroupRule.attributes))}),
                       calibration=None if cal is None else CalibrationRule(
                           **{**cal, "slope": tuple(cal.get("slope", CalibrationRule.slope))}))
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


@dataclass(frozen=True)
class GateCheck:
    """One evaluated check; ``status`` is ``pass``, ``fail`` or ``skipped`` (with the reason in ``note``)."""

    gate: str
    kind: str
    scope: str
    level: str
    metric: str
    value: float | None
    bound: Any
    status: str
    note: str = ""


@dataclass(frozen=True)
class GateReport:
    """Outcome of :func:`evaluate_gates`: every check, the config digest and the champion compared to."""

    checks: tuple[GateCheck, ...]
    config_digest: str
    champion_version: str | None = None
    gate_ids: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures and set(self.gate_ids) <= {c.gate for c in self.checks}

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    def covers(self, cfg: GatesConfig) -> bool:
        """True when the report was computed with ``cfg`` and holds a check for each configured gate."""
        return self.config_digest == cfg.digest() and cfg.gate_ids() <= {c.gate for c in self.checks}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "config_digest": self.config_digest,
                "champion_version": self.champion_version, "gate_ids": list(self.gate_ids),
                "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateReport":
        checks = tuple(GateCheck(**{**c, "bound": tuple(c["bound"]) if isinstance(c["bound"], list) else c["bound"]})
                       for c in d["checks"])
        return cls(checks, d["config_digest"], d.get("champion_version"), tuple(d.get("gate_ids", ())))

    def failure_lines(self) -> list[str]:
        """One line per failure: ``gate kind scope/level metric: value vs bound (note)``."""
        return [f"{c.gate} {c.kind} {c.scope}/{c.level} {c.metric}: value {c.value} vs bound {c.bound}"
                + (f" ({c.note})" if c.note else "") for c in self.failures]


def _value(metrics: Mapping[str, Any] | None, scope: str, level: str, metric: str) -> float | None:
    try:
        v = metrics[scope][level][metric]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return None if v is None else float(v)


def _bounds(gate: str, kind: str, scope: str, level: str, metric: str, v: float | None,
            lo: float | None, hi: float | None) -> GateCheck:
    bound = (lo, hi)
    if v is None or v != v:
        return GateCheck(gate, kind, scope, level, metric, None, bound, "fail", "incomplete evaluation: metric missing")
    ok = (lo is None or v >= lo) and (hi is None or v <= hi)
    return GateCheck(gate, kind, scope, level, metric, v, bound, "pass" if ok else "fail")


def evaluate_gates(metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None, cfg: GatesConfig,
                   champion_version: str | None = None) -> GateReport:
    """Check a candidate's metrics against every configured gate.

    Args:
        metrics: the candidate's metrics dict (``evaluate_predictions`` layout).
        champion_metrics: the current champion's metrics, or None when there is no champion.
        cfg: the gates configuration.
        champion_version: the champion version ``champion_metrics`` belongs to; promotion
            refuses a report whose champion is no longer the champion.

    Returns:
        A :class:`GateReport` listing every check (failures carry value and bound).
    """
    checks: list[GateCheck] = []
    for i, r in enumerate(cfg.rules):
        for scope in cfg.expand(r.scope) or (r.scope,):
            checks.append(_bounds(f"rules[{i}]", "min" if r.max is None else "bounds", scope, r.level, r.metric,
                                  _value(metrics, scope, r.level, r.metric), r.min, r.max))
    for i, d in enumerate(cfg.max_drop):
        for scope in cfg.expand(d.scope) or (d.scope,):
            gate, v = f"max_drop[{i}]", _value(metrics, scope, d.level, d.metric)
            if champion_metrics is None:
                checks.append(GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "skipped",
                                        "no champion yet: nothing to compare with"))
                continue
            c = _value(champion_metrics, scope, d.level, d.metric)
            if v is None or c is None:
                checks.append(GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "fail",
                                        "incomplete evaluation: metric missing for "
                                        + ("the candidate" if v is None else "the champion")))
                continue
            drop = (v - c) if d.metric in LOWER_IS_BETTER else (c - v)
            checks.append(GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max,
                                    "pass" if drop <= d.max else "fail", f"champion {c:.4g}, drop {drop:.4g}"))
    sub = cfg.subgroup_sensitivity
    if sub is not None:
        groups = metrics.get("subgroups") if isinstance(metrics, Mapping) else None
        for attr in sub.attributes:
            table = (groups or {}).get(attr)
            if not table:
                checks.append(GateCheck("subgroup_sensitivity", "subgroup_sensitivity", f"subgroups.{attr}",
                                        "patient", "sen", None, sub.min, "fail",
                                        "incomplete evaluation: subgroup table missing"))
                continue
            for value, m in sorted(table.items()):
                scope, n_pos = f"subgroups.{attr}.{value}", int((m or {}).get("n_pos") or 0)
                if n_pos < sub.min_positives:
                    checks.append(GateCheck("subgroup_sensitivity", "subgroup_sensitivity", scope, "patient", "sen",
                                            (m or {}).get("sen"), sub.min, "skipped",
                                            f"{n_pos} positive patients < min_positives {sub.min_positives}"))
                    continue
                checks.append(_bounds("subgroup_sensitivity", "subgroup_sensitivity", scope, "patient", "sen",
                                      (m or {}).get("sen"), sub.min, None))
    cal = cfg.calibration
    if cal is not None:
        for scope in cfg.expand(cal.scope) or (cal.scope,):
            checks.append(_bounds("calibration", "calibration", scope, cal.level, "cal_slope",
                                  _value(metrics, scope, cal.level, "cal_slope"), cal.slope[0], cal.slope[1]))
    return GateReport(tuple(checks), cfg.digest(), champion_version if champion_metrics is not None else None,
                      tuple(sorted(cfg.gate_ids())))
