"""The model card text: intended use, lineage, the per-site headline with CIs and counts, what the gates decided."""
from __future__ import annotations

from dataclasses import replace

from osteo_config.screen import INTENDED_USE
from registry.gates import EvidenceRule, evaluate_gates, scope_decisions
from registry.model_card import model_description, version_description

from .conftest import LINEAGE, fake_metrics


def test_version_card_carries_lineage_headline_with_cis_and_each_scopes_decision(gates_cfg):
    m = fake_metrics(half_width=5.0, A={"auroc_lo": 0.85, "auroc_hi": 0.95}, B={"sen": 40.0})
    m["sites"] = ["A", "B", "C", "D"]
    m["threshold"] = 0.4321
    m["site_C"]["patient"].update(n_pos=2, n_patients=7)
    cfg = replace(gates_cfg, min_evidence=EvidenceRule(10, 10, "block"))
    report = evaluate_gates(m, None, cfg)
    text = version_description("7", {**LINEAGE, "method": "tp_swav", "training_run_id": "r" * 32}, m,
                               scope_decisions(report, m), report.passed)
    assert INTENDED_USE in text and "**Version 7** (tp_swav)" in text
    assert all(v in text for v in LINEAGE.values()) and "0.4321" in text and "**not passed**" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| site_")}
    assert set(rows) == {"site_A", "site_B", "site_C", "site_D"}
    assert "40.0 [35.0, 45.0]" in rows["site_B"] and rows["site_B"].rstrip().endswith("| fail |")
    assert "| 7 (2) |" in rows["site_C"] and rows["site_C"].rstrip().endswith("| insufficient |")
    assert rows["site_A"].rstrip().endswith("| pass |") and "0.900 [0.850, 0.950]" in rows["site_A"]


def test_version_card_without_gates_or_champion_says_so(gates_cfg):
    text = version_description("1", LINEAGE, fake_metrics())
    assert "not evaluated" in text and "no champion to compare with" in text and "| pooled |" in text


def test_model_description_names_the_promotion_path():
    assert "osteo registry approve" in model_description("osteo-screening", "required")
    assert INTENDED_USE in model_description("osteo-screening", "none")
