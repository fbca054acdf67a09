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
from osteo_config.registry import (LEVELS, SCOPES, CalibrationRule, DropRule, GateRule, GatesConfig,  # noqa: F401
                                   SubgroupRule)

LOWER_IS_BETTER = frozenset({"bmd_mae", "brier", "ece"})


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
