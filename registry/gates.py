"""Promotion gates: configuration in, every failure with its numbers out (pure).

Gates read the metrics dict of :func:`osteo_model.evaluate.evaluate_predictions`
(``metrics[scope][level][metric]``, scopes ``site_<X>``, ``internal``,
``external``, ``pooled``; subgroups under ``metrics["subgroups"][attr][value]``).
Four kinds, each configured under ``registry.gates`` in params.yaml:

* ``rules``: bounds ``{scope, level, metric, min and/or max}``. Scope ``site``
  expands to every internal site, ``external`` to every external site (one
  check per site); ``pooled`` and ``internal`` address the pooled scopes. With
  ``bound: ci`` (the default) a floor is checked against the lower bound of the
  metric's bootstrap CI (``<metric>_lo``) and a ceiling against the upper bound
  (``<metric>_hi``): a site passes when the evidence says it is above the floor,
  not when its point estimate happens to be. ``bound: point`` checks the estimate.
* ``max_drop``: ``{scope, level, metric, max}``, the largest allowed drop vs the
  current champion in the metric's unit, read from the **paired** comparison
  ``metrics["vs_champion"]`` (both models scored on the same test patients, by
  ``osteo evaluate``), never from the champion's registration-time metrics on
  another test set. ``drop_bound: point`` uses the paired difference,
  ``ci`` its worse CI end. For lower-is-better metrics (``bmd_mae``) a rise counts
  as a drop. Skipped, with a note, when there is no champion yet; a comparison
  made against another champion version fails as stale.
* ``subgroup_sensitivity``: patient-level sensitivity floor in every subgroup of
  the listed attributes; subgroups with fewer than ``min_positives``
  osteoporotic patients are reported as skipped (too few to judge).
* ``calibration``: bounds on the logistic-recalibration slope.

**Minimum evidence** (``min_evidence: {positives, negatives, action}``): a rule or
drop check whose scope holds fewer test patients with (or without) osteoporosis
than required is ``insufficient``, neither pass nor fail; ``action: block`` keeps
the candidate out of promotion on it, ``warn`` lets the other checks decide.

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
from osteo_config.registry import (LEVELS, SCOPES, CalibrationRule, DropRule, EvidenceRule, GateRule,  # noqa: F401
                                   GatesConfig, SubgroupRule)

LOWER_IS_BETTER = frozenset({"bmd_mae", "brier", "ece"})


@dataclass(frozen=True)
class GateCheck:
    """One evaluated check; ``status`` is ``pass``, ``fail``, ``skipped`` or ``insufficient`` (reason in ``note``)."""

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
    evidence_blocks: bool = True          # min_evidence.action == "block": an insufficient check blocks promotion

    @property
    def passed(self) -> bool:
        return (not self.failures and not (self.evidence_blocks and self.insufficient)
                and set(self.gate_ids) <= {c.gate for c in self.checks})

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def insufficient(self) -> tuple[GateCheck, ...]:
        """Checks that could not decide: too few test patients with or without osteoporosis in their scope."""
        return tuple(c for c in self.checks if c.status == "insufficient")

    def covers(self, cfg: GatesConfig) -> bool:
        """True when the report was computed with ``cfg`` and holds a check for each configured gate."""
        return self.config_digest == cfg.digest() and cfg.gate_ids() <= {c.gate for c in self.checks}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "config_digest": self.config_digest,
                "champion_version": self.champion_version, "gate_ids": list(self.gate_ids),
                "evidence_blocks": self.evidence_blocks, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateReport":
        checks = tuple(GateCheck(**{**c, "bound": tuple(c["bound"]) if isinstance(c["bound"], list) else c["bound"]})
                       for c in d["checks"])
        return cls(checks, d["config_digest"], d.get("champion_version"), tuple(d.get("gate_ids", ())),
                   bool(d.get("evidence_blocks", True)))

    def failure_lines(self) -> list[str]:
        """One line per failure (and per blocking insufficient check): ``gate kind scope/level metric: value vs bound (note)``."""
        shown = self.failures + (self.insufficient if self.evidence_blocks else ())
        return [f"{c.gate} {c.kind} {c.scope}/{c.level} {c.metric}: value {c.value} vs bound {c.bound}"
                + (f" ({c.note})" if c.note else "") for c in shown]

    def by_scope(self) -> dict[str, dict[str, int]]:
        """Per scope, how many checks passed / failed / were skipped / lacked evidence (for the summary)."""
        out: dict[str, dict[str, int]] = {}
        for c in self.checks:
            row = out.setdefault(c.scope, {"pass": 0, "fail": 0, "skipped": 0, "insufficient": 0})
            row[c.status] = row.get(c.status, 0) + 1
        return out


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


def _ci_bounds(gate: str, scope: str, level: str, metric: str, metrics: Mapping[str, Any],
               lo: float | None, hi: float | None) -> GateCheck:
    """A rule on the CI: the floor against ``<metric>_lo``, the ceiling against ``<metric>_hi``."""
    kind, bound = ("min" if hi is None else "bounds"), (lo, hi)
    point = _value(metrics, scope, level, metric)
    ends = {"lo": _value(metrics, scope, level, f"{metric}_lo"), "hi": _value(metrics, scope, level, f"{metric}_hi")}
    need = [e for e, b in (("lo", lo), ("hi", hi)) if b is not None]
    missing = [e for e in need if ends[e] is None or ends[e] != ends[e]]
    if point is None or point != point or missing:
        what = "metric missing" if point is None or point != point else \
            f"no CI ({', '.join(f'{metric}_{e}' for e in missing)}): add {metric} to evaluate.ci_metrics"
        return GateCheck(gate, kind, scope, level, metric, None, bound, "fail", f"incomplete evaluation: {what}")
    ok = (lo is None or ends["lo"] >= lo) and (hi is None or ends["hi"] <= hi)
    used = ends["lo"] if lo is not None else ends["hi"]
    note = f"point {point:.4g}, CI [{_fmt(ends['lo'])}, {_fmt(ends['hi'])}]"
    return GateCheck(gate, kind, scope, level, metric, used, bound, "pass" if ok else "fail", note)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _evidence(metrics: Mapping[str, Any], scope: str, rule: EvidenceRule | None) -> str | None:
    """None when ``scope``'s test patients suffice for ``rule``, else why not (counts from ``<scope>.patient``)."""
    if rule is None or scope.startswith("subgroups."):
        return None
    try:
        pat = metrics[scope]["patient"]  # type: ignore[index]
        n_pos, n = int(pat["n_pos"]), int(pat.get("n_patients", pat.get("n")))
    except (KeyError, TypeError, ValueError):
        return "insufficient evidence: patient counts missing from the evaluation"
    n_neg = n - n_pos
    if n_pos < rule.positives or n_neg < rule.negatives:
        return (f"insufficient evidence: {n_pos} osteoporotic / {n_neg} other test patients "
                f"< min_evidence {rule.positives} / {rule.negatives}")
    return None


def _gated(check: GateCheck, metrics: Mapping[str, Any], rule: EvidenceRule | None) -> GateCheck:
    """``check`` turned ``insufficient`` when its scope lacks evidence (a missing metric still fails)."""
    why = _evidence(metrics, check.scope, rule)
    if why is None or check.status == "skipped" or "incomplete evaluation" in check.note:
        return check
    return GateCheck(check.gate, check.kind, check.scope, check.level, check.metric, check.value, check.bound,
                     "insufficient", why + (f"; {check.note}" if check.note else "")
                     + f"; would {'pass' if check.status == 'pass' else 'fail'}")


def _drop(gate: str, d: DropRule, scope: str, metrics: Mapping[str, Any], champion_version: str | None,
          drop_bound: str) -> GateCheck:
    """One max_drop check from the paired comparison on the same test patients."""
    v = _value(metrics, scope, d.level, d.metric)
    comp = metrics.get("vs_champion") if isinstance(metrics, Mapping) else None
    if not isinstance(comp, Mapping):
        return GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "fail",
                         f"incomplete evaluation: no paired comparison with champion v{champion_version}: "
                         "re-run `osteo evaluate` with the champion registered")
    compared = comp.get("champion_version")
    if champion_version is not None and compared is not None and str(compared) != str(champion_version):
        return GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "fail",
                         f"stale evaluation: compared with v{compared}, the champion is now v{champion_version}: "
                         "re-run `osteo evaluate`")
    paired = ((comp.get(scope) or {}).get(d.level) or {}).get(d.metric) if isinstance(comp.get(scope), Mapping) \
        else None
    diff = None if not isinstance(paired, Mapping) else paired.get("diff")
    if diff is None or diff != diff:
        return GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "fail",
                         f"incomplete evaluation: no paired {d.level} {d.metric} difference for {scope} "
                         "(evaluate.compare_metrics must list it)")
    lo, hi = paired.get("lo"), paired.get("hi")
    worse = d.metric in LOWER_IS_BETTER
    if drop_bound == "ci":
        end = hi if worse else lo
        if end is None or end != end:
            return GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "fail",
                             "incomplete evaluation: the paired difference has no CI")
        drop = float(end) if worse else -float(end)
    else:
        drop = float(diff) if worse else -float(diff)
    note = (f"paired on the same test patients: candidate - champion {float(diff):.4g} "
            f"[{_fmt(lo)}, {_fmt(hi)}], p_perm {_fmt(paired.get('p_perm'))}; drop {drop:.4g}")
    return GateCheck(gate, "max_drop", scope, d.level, d.metric, v, d.max, "pass" if drop <= d.max else "fail", note)


def evaluate_gates(metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None, cfg: GatesConfig,
                   champion_version: str | None = None) -> GateReport:
    """Check a candidate's metrics against every configured gate.

    Args:
        metrics: the candidate's metrics dict (``evaluate_predictions`` layout); with a
            champion it must hold ``vs_champion`` (the paired comparison ``max_drop`` reads).
        champion_metrics: the current champion's registered metrics, or None when there is no
            champion; only tells that there is one (drops are never computed from it: those
            numbers come from another test set).
        cfg: the gates configuration.
        champion_version: the current champion's version; a paired comparison made against
            another version fails as stale, and promotion refuses a report whose champion is
            no longer the champion.

    Returns:
        A :class:`GateReport` listing every check (failures carry value and bound).
    """
    checks: list[GateCheck] = []
    ev = cfg.min_evidence
    for i, r in enumerate(cfg.rules):
        for scope in cfg.expand(r.scope) or (r.scope,):
            if cfg.bound == "ci":
                check = _ci_bounds(f"rules[{i}]", scope, r.level, r.metric, metrics, r.min, r.max)
            else:
                check = _bounds(f"rules[{i}]", "min" if r.max is None else "bounds", scope, r.level, r.metric,
                                _value(metrics, scope, r.level, r.metric), r.min, r.max)
            checks.append(_gated(check, metrics, ev))
    for i, d in enumerate(cfg.max_drop):
        for scope in cfg.expand(d.scope) or (d.scope,):
            gate = f"max_drop[{i}]"
            if champion_metrics is None and champion_version is None:
                checks.append(GateCheck(gate, "max_drop", scope, d.level, d.metric,
                                        _value(metrics, scope, d.level, d.metric), d.max, "skipped",
                                        "no champion yet: nothing to compare with"))
                continue
            checks.append(_gated(_drop(gate, d, scope, metrics, champion_version, cfg.drop_bound), metrics, ev))
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
    has_champion = champion_metrics is not None or champion_version is not None
    return GateReport(tuple(checks), cfg.digest(), champion_version if has_champion else None,
                      tuple(sorted(cfg.gate_ids())), ev is None or ev.action == "block")


def scope_decisions(report: GateReport, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per metric scope (``site_A`` ... ``pooled``): test patients with / without osteoporosis and
    what the scope's checks decided (``pass`` / ``fail`` / ``insufficient`` evidence / ``skipped``).

    The scope's decision is ``fail`` if any check failed, else ``insufficient`` if any lacked
    evidence, else ``pass`` (``skipped`` when every check was skipped). Subgroup scopes are left out.
    """
    out = []
    for scope, counts in report.by_scope().items():
        if scope.startswith("subgroups"):
            continue
        pat = (metrics.get(scope) or {}).get("patient") or {} if isinstance(metrics, Mapping) else {}
        n_pos, n = pat.get("n_pos"), pat.get("n_patients", pat.get("n"))
        decision = ("fail" if counts["fail"] else "insufficient" if counts["insufficient"]
                    else "pass" if counts["pass"] else "skipped")
        out.append({"scope": scope, "n_pos": n_pos, "n_neg": None if n is None or n_pos is None else n - n_pos,
                    "decision": decision, **counts,
                    "checks": [{"gate": c.gate, "metric": c.metric, "level": c.level, "status": c.status}
                               for c in report.checks if c.scope == scope]})
    order = {"site": 0, "internal": 1, "external": 2, "pooled": 3}
    return sorted(out, key=lambda r: (order.get(r["scope"].split("_")[0], 9), r["scope"]))
