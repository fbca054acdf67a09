"""Gates as a pure function: each rule kind fails with its numbers; missing metrics fail; config parsing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_config.params import load_params
from registry.errors import RegistryConfigError
from registry.gates import GateReport, GatesConfig, evaluate_gates

from .conftest import fake_metrics, with_paired

REPO = Path(__file__).resolve().parents[2]


def _fails(report: GateReport) -> set[tuple[str, str, str]]:
    return {(c.gate, c.scope, c.metric) for c in report.failures}


def test_good_metrics_pass_every_gate_and_cover_the_config(gates_cfg):
    r = evaluate_gates(fake_metrics(), None, gates_cfg)
    assert r.passed and r.covers(gates_cfg) and not r.failures
    assert {c.gate for c in r.checks} == set(gates_cfg.gate_ids())
    # per-site rule expands to the internal sites only; external rule to D
    assert {c.scope for c in r.checks if c.gate == "rules[0]"} == {"site_A", "site_B", "site_C"}
    assert {c.scope for c in r.checks if c.gate == "rules[1]"} == {"site_D"}
    assert all(c.status == "skipped" for c in r.checks if c.kind == "max_drop")   # no champion yet


def test_min_rule_failure_carries_value_and_bound(gates_cfg):
    r = evaluate_gates(fake_metrics(B={"sen": 41.5}), None, gates_cfg)
    assert not r.passed
    (f,) = r.failures
    assert (f.gate, f.scope, f.level, f.metric, f.value, f.bound) == ("rules[0]", "site_B", "patient", "sen", 41.5,
                                                                      (60.0, None))
    ext = evaluate_gates(fake_metrics(D={"f1": 20.0}), None, gates_cfg)
    assert _fails(ext) == {("rules[1]", "site_D", "f1")}


def test_missing_or_null_metric_is_a_failure_not_a_pass(gates_cfg):
    m = fake_metrics()
    del m["site_C"]["patient"]["sen"]
    m["site_D"]["patient"]["f1"] = None
    del m["pooled"]
    r = evaluate_gates(m, None, gates_cfg)
    assert {("rules[0]", "site_C", "sen"), ("rules[1]", "site_D", "f1"), ("rules[2]", "pooled", "auroc"),
            ("calibration", "pooled", "cal_slope")} == _fails(r)
    assert all("incomplete evaluation" in c.note for c in r.failures)
    nan = fake_metrics(sen=float("nan"))
    assert not evaluate_gates(nan, None, gates_cfg).passed


def test_drop_vs_champion_reads_the_paired_comparison(gates_cfg):
    champion = fake_metrics(f1=80.0)
    ok = evaluate_gates(with_paired(fake_metrics(f1=76.0), champion, "3"), champion, gates_cfg, champion_version="3")
    assert ok.passed and ok.champion_version == "3"
    bad = evaluate_gates(with_paired(fake_metrics(f1=80.0, A={"f1": 72.0}), champion, "3"), champion, gates_cfg,
                         champion_version="3")
    (f,) = bad.failures
    assert (f.gate, f.scope, f.metric, f.value, f.bound) == ("max_drop[0]", "site_A", "f1", 72.0, 5.0)
    assert "paired" in f.note and "drop 8" in f.note
    gap = with_paired(fake_metrics(), fake_metrics(f1=80.0), "3")
    del gap["vs_champion"]["site_B"]["patient"]["f1"]
    assert ("max_drop[0]", "site_B", "f1") in _fails(evaluate_gates(gap, champion, gates_cfg, "3"))


def test_drop_never_uses_the_champions_registration_metrics(gates_cfg):
    # registered on another test set the champion looked much better (f1 95): the paired comparison on
    # the same patients says the candidate is no worse, so the drop gate passes; without it, it fails
    registered = fake_metrics(f1=95.0)
    same_patients = fake_metrics(f1=71.0)
    cand = with_paired(fake_metrics(f1=70.0), same_patients, "3")
    assert evaluate_gates(cand, registered, gates_cfg, "3").passed
    missing = evaluate_gates(fake_metrics(f1=70.0), registered, gates_cfg, "3")
    assert {c.gate for c in missing.failures} == {"max_drop[0]"}
    assert all("no paired comparison" in c.note for c in missing.failures)


def test_drop_compared_with_another_champion_is_stale(gates_cfg):
    cand = with_paired(fake_metrics(), fake_metrics(), "2")
    r = evaluate_gates(cand, fake_metrics(), gates_cfg, champion_version="3")
    assert {c.gate for c in r.failures} == {"max_drop[0]"} and all("stale" in c.note for c in r.failures)


def test_drop_on_the_ci_end_is_stricter(gates_cfg):
    from dataclasses import replace
    cand = with_paired(fake_metrics(f1=78.0), fake_metrics(f1=80.0), "3", half_width=6.0)   # diff -2 [-8, 4]
    assert evaluate_gates(cand, {}, gates_cfg, "3").passed
    strict = replace(gates_cfg, drop_bound="ci")
    r = evaluate_gates(cand, {}, strict, "3")
    assert {(c.gate, c.scope) for c in r.failures} == {("max_drop[0]", f"site_{s}") for s in "ABC"}
    assert all("drop 8" in c.note for c in r.failures)


def test_floor_applies_to_the_lower_ci_bound(gates_cfg):
    # point estimate 70 % clears the 60 % floor, but the lower CI bound (58 %) does not: evidence says nothing
    m = fake_metrics(B={"sen": 70.0, "sen_lo": 58.0})
    r = evaluate_gates(m, None, gates_cfg)
    (f,) = r.failures
    assert (f.gate, f.scope, f.value, f.bound) == ("rules[0]", "site_B", 58.0, (60.0, None))
    assert "point 70" in f.note
    from dataclasses import replace
    assert evaluate_gates(m, None, replace(gates_cfg, bound="point")).passed
    no_ci = fake_metrics()
    del no_ci["site_A"]["patient"]["sen_lo"]
    (f,) = evaluate_gates(no_ci, None, gates_cfg).failures
    assert f.scope == "site_A" and "ci_metrics" in f.note


def test_too_few_patients_is_insufficient_evidence_not_a_pass(gates_cfg):
    from dataclasses import replace
    from registry.gates import EvidenceRule
    cfg = replace(gates_cfg, min_evidence=EvidenceRule(positives=10, negatives=10, action="block"))
    m = fake_metrics()
    m["site_C"]["patient"].update(n_pos=2, n_patients=7, n=7)       # the demo's site C before this issue
    r = evaluate_gates(m, None, cfg)
    assert not r.failures and not r.passed
    assert {(c.gate, c.scope) for c in r.insufficient} == {("rules[0]", "site_C")}
    (c,) = r.insufficient
    assert "2 osteoporotic / 5 other" in c.note and "would pass" in c.note
    assert any("insufficient evidence" in line for line in r.failure_lines())
    assert r.by_scope()["site_C"]["insufficient"] == 1 and r.by_scope()["site_A"]["pass"] == 1
    warn = evaluate_gates(m, None, replace(cfg, min_evidence=EvidenceRule(10, 10, "warn")))
    assert warn.passed and len(warn.insufficient) == 1 and not warn.failure_lines()
    back = GateReport.from_dict(warn.to_dict())
    assert back == warn and back.passed
    # a metric missing in a thin scope still fails (incomplete), it is not excused as "insufficient"
    del m["site_C"]["patient"]["sen"]
    assert ("rules[0]", "site_C", "sen") in _fails(evaluate_gates(m, None, cfg))


def test_subgroup_sensitivity_and_underpowered_subgroups(gates_cfg):
    m = fake_metrics()
    m["subgroups"]["sex"]["M"] = {"n": 20, "n_pos": 6, "sen": 33.3}
    m["subgroups"]["sex"]["X"] = {"n": 2, "n_pos": 1, "sen": 0.0}            # too few positives: skipped
    r = evaluate_gates(m, None, gates_cfg)
    assert _fails(r) == {("subgroup_sensitivity", "subgroups.sex.M", "sen")}
    (skip,) = [c for c in r.checks if c.scope == "subgroups.sex.X"]
    assert skip.status == "skipped" and "1 positive" in skip.note
    del m["subgroups"]["sex"]
    assert ("subgroup_sensitivity", "subgroups.sex", "sen") in _fails(evaluate_gates(m, None, gates_cfg))


def test_calibration_slope_bounds(gates_cfg):
    r = evaluate_gates(fake_metrics(slope=0.3), None, gates_cfg)
    (f,) = r.failures
    assert (f.gate, f.metric, f.value, f.bound) == ("calibration", "cal_slope", 0.3, (0.5, 2.0))
    assert not evaluate_gates(fake_metrics(slope=2.5), None, gates_cfg).passed


def test_report_round_trip_and_coverage(gates_cfg):
    r = evaluate_gates(with_paired(fake_metrics(B={"sen": 10.0}), fake_metrics(), "2"), fake_metrics(), gates_cfg, "2")
    back = GateReport.from_dict(r.to_dict())
    assert back == r and back.failure_lines() == r.failure_lines()
    other = GatesConfig(rules=gates_cfg.rules[:1])
    assert not r.covers(other) and not evaluate_gates(fake_metrics(), None, other).covers(gates_cfg)


def test_degraded_model_is_refused_by_the_right_gate(gates_cfg):
    from osteo_model.evaluate import EvaluateConfig, evaluate_predictions
    rng = np.random.default_rng(0)
    n = 240                                                       # 60 patients per site, 3 vertebrae each
    pid = np.repeat(np.arange(n), 3)
    bmd = np.repeat(rng.normal(0.85, 0.15, n), 3) + rng.normal(0, 0.02, 3 * n)
    good = pd.DataFrame({"patient_id": pid.astype(str), "site": np.array(list("ABCD"))[pid // 60],
                         "level": np.tile([13, 14, 15], n), "y_true": (bmd < 0.75).astype(int),
                         "score": 1 / (1 + np.exp((bmd - 0.77) / 0.04)),
                         "sex": np.where(pid % 2, "F", "M")})
    cfg = EvaluateConfig(n_boot=20)
    gates = GatesConfig(internal_sites=("A", "B", "C"), external_sites=("D",), rules=gates_cfg.rules[:1])
    assert evaluate_gates(evaluate_predictions(good, cfg, 0.4), None, gates).passed
    degraded = good.copy()
    at_b = degraded["site"] == "B"
    degraded.loc[at_b, "score"] = rng.uniform(0.0, 0.3, at_b.sum())  # the model misses site B's osteoporosis
    r = evaluate_gates(evaluate_predictions(degraded, cfg, 0.4), None, gates)
    assert _fails(r) == {("rules[0]", "site_B", "sen")} and r.failures[0].value < 60.0


def test_gates_from_repo_params():
    for profile in ("demo", "tiny", "paper"):
        cfg = GatesConfig.from_params(load_params(REPO / "params.yaml", profile))
        assert cfg.external_sites == ("D",) and "A" in cfg.internal_sites and cfg.rules
    with pytest.raises(RegistryConfigError, match="scope"):
        GatesConfig.from_params({"registry": {"gates": {"rules": [{"scope": "planet", "level": "patient",
                                                                   "metric": "sen", "min": 1}]}}})
    with pytest.raises(RegistryConfigError, match="unknown"):
        GatesConfig.from_params({"registry": {"gates": {"rulez": []}}})


def test_registry_and_evaluation_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, registry.registry, registry.gates, registry.audit, registry.lock, registry.config, "
            "osteo_model.metrics, osteo_model.evaluate; "
            "bad = [m for m in ('torch', 'features', 'flows') if m in sys.modules]; "
            "bad += [m for m in sys.modules if m.startswith('osteo_model.') and m not in "
            "('osteo_model.metrics', 'osteo_model.bootstrap', 'osteo_model.evaluate')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_scope_decisions_count_patients_and_name_the_decision(gates_cfg):
    from dataclasses import replace
    from registry.gates import EvidenceRule, scope_decisions
    cfg = replace(gates_cfg, min_evidence=EvidenceRule(10, 10, "block"))
    m = fake_metrics(A={"sen": 40.0})
    m["site_C"]["patient"].update(n_pos=2, n_patients=7, n=7)
    rows = {r["scope"]: r for r in scope_decisions(evaluate_gates(m, None, cfg), m)}
    assert rows["site_A"]["decision"] == "fail" and rows["site_A"]["fail"] == 1
    assert rows["site_C"]["decision"] == "insufficient" and (rows["site_C"]["n_pos"], rows["site_C"]["n_neg"]) == (2, 5)
    assert rows["site_B"]["decision"] == "pass" and (rows["site_B"]["n_pos"], rows["site_B"]["n_neg"]) == (20, 30)
    assert rows["pooled"]["decision"] == "pass" and not any(s.startswith("subgroups") for s in rows)
    assert [r["scope"] for r in scope_decisions(evaluate_gates(m, None, cfg), m)][:3] == ["site_A", "site_B", "site_C"]
