"""The retrain flow's one-line outcome names each promotion state, awaiting approval included."""
from __future__ import annotations

from flows.retrain import outcome_message


def test_outcome_message_per_state():
    assert outcome_message({"state": "promoted", "version": "4"}) == "version 4 promoted to champion"
    waiting = outcome_message({"state": "awaiting_approval", "version": "5"})
    assert "awaiting approval" in waiting and "osteo registry approve 5" in waiting and "rejected" not in waiting
    rejected = outcome_message({"state": "rejected", "version": "6", "failed_gates": [
        {"gate": "rules[0]", "scope": "site_B", "level": "patient", "metric": "sen", "value": 35.0, "bound": 60.0}]})
    assert rejected.startswith("version 6 rejected: 1 failed gate(s)") and "site_B/patient sen = 35.0" in rejected
