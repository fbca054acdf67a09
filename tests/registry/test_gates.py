"""Gates as a pure function: each rule kind fails with its numbers; missing metrics fail; config parsing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_config.params import load_params
from registry.errors import RegistryConfigError
from registry.gates import GateReport, GatesConfig, evaluate_gates

from .conftest import fake_metrics

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


def test_drop_vs_champion(gates_cfg):
    champion = fake_metrics(f1=80.0)
    ok = evaluate_gates(fake_metrics(f1=76.0), champion, gates_cfg, champion_version="3")
    assert ok.passed and ok.champion_version == "3"
    bad = evaluate_gates(fake_metrics(f1=80.0, A={"f1": 72.0}), champion, gates_cfg, champion_version="3")
    (f,) = bad.failures
    assert (f.gate, f.scope, f.metric, f.value, f.bound) == ("max_drop[0]", "site_A", "f1", 72.0, 5.0)
    assert "champion 80" in f.note and "drop 8" in f.note
    gap = fake_metrics(f1=80.0)
    del gap["site_B"]["patient"]["f1"]
    assert ("max_drop[0]", "site_B", "f1") in _fails(evaluate_gates(fake_metrics(), gap, gates_cfg, "3"))


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
    r = evaluate_gates(fake_metrics(B={"sen": 10.0}), fake_metrics(), gates_cfg, "2")
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
