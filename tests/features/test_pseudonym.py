"""Pseudonymisation properties: keyed, deterministic, consistent date shifts, key lookup rules."""
from __future__ import annotations

from datetime import date

import pytest

from features.errors import PseudonymKeyError
from features.pseudonym import DEMO_KEY, Pseudonymizer, age_years, load_key

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def test_ids_deterministic_and_keyed():
    a1, a2, b = Pseudonymizer(KEY_A, 365), Pseudonymizer(KEY_A, 365), Pseudonymizer(KEY_B, 365)
    mrns = [f"MRN{i:05d}" for i in range(200)]
    assert [a1.patient_id(m) for m in mrns] == [a2.patient_id(m) for m in mrns]
    assert all(a1.patient_id(m) != b.patient_id(m) for m in mrns)
    assert len({a1.patient_id(m) for m in mrns}) == len(mrns)
    assert a1.study_id("ACC1") != a1.patient_id("ACC1")          # domain separation
    assert a1.dxa_id("ACC1", "L1") != a1.dxa_id("ACC1", "L2")
    assert all("MRN" not in a1.patient_id(m) for m in mrns)
    assert "a" * 32 not in repr(a1)


def test_date_shift_consistent_and_bounded():
    p = Pseudonymizer(KEY_A, 30)
    shifts = [p.shift_days(f"M{i}") for i in range(500)]
    assert min(shifts) >= -30 and max(shifts) <= 30 and len(set(shifts)) > 40
    ct, dxa, birth = date(2020, 3, 1), date(2020, 7, 15), date(1950, 2, 28)
    assert (p.shift("M7", dxa) - p.shift("M7", ct)) == (dxa - ct)      # intervals preserved
    assert age_years(p.shift("M7", birth), p.shift("M7", ct)) == age_years(birth, ct)
    assert Pseudonymizer(KEY_B, 30).shift_days("M7") is not None
    assert [Pseudonymizer(KEY_B, 30).shift_days(f"M{i}") for i in range(50)] != shifts[:50]


def test_key_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("OSTEO_T_KEY", "x" * 20)
    assert load_key("OSTEO_T_KEY", tmp_path / "none", False, "paper") == (b"x" * 20, "env")
    monkeypatch.delenv("OSTEO_T_KEY")
    f = tmp_path / "k"
    f.write_text("y" * 40 + "\n")
    assert load_key("OSTEO_T_KEY", f, False, "paper") == (b"y" * 40, "file")
    assert load_key("OSTEO_T_KEY", tmp_path / "none", True, "tiny") == (DEMO_KEY, "demo")
    with pytest.raises(PseudonymKeyError, match="token_hex"):
        load_key("OSTEO_T_KEY", tmp_path / "none", True, "paper")      # demo key never in production
    with pytest.raises(PseudonymKeyError):
        load_key("OSTEO_T_KEY", tmp_path / "none", False, "demo")
    f.write_text("short")
    with pytest.raises(PseudonymKeyError, match="minimum"):
        load_key("OSTEO_T_KEY", f, True, "demo")
