"""Pseudonymisation properties: keyed, deterministic, consistent date shifts, key lookup rules."""
from __future__ import annotations

from datetime import date

import secrets

import pytest

from features.errors import PseudonymKeyError
from cohort.writers import write_synthetic_marker
from features.ingest import safe_harbor_age
from features.pseudonym import DEMO_KEY, Pseudonymizer, age_years, check_fingerprint, key_fingerprint, load_key

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
    strong = secrets.token_hex(32)
    monkeypatch.setenv("OSTEO_T_KEY", strong)
    assert load_key("OSTEO_T_KEY", tmp_path / "none", False, None) == (strong.encode(), "env")
    monkeypatch.delenv("OSTEO_T_KEY")
    f = tmp_path / "k"
    f.write_text(strong + "\n")
    f.chmod(0o600)
    assert load_key("OSTEO_T_KEY", f, False, None) == (strong.encode(), "file")
    f.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="chmod 600"):
        load_key("OSTEO_T_KEY", f, False, None)                       # readable by others
    f.chmod(0o600)
    for weak in ("short", "k" * 64, "0123456789abcdef" * 2):          # too short / no entropy / 16 symbols x 2
        f.write_text(weak)
        with pytest.raises(PseudonymKeyError, match="too weak"):
            load_key("OSTEO_T_KEY", f, True, None)
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("patients.csv", "ct_studies.csv", "dxa.csv"):
        (raw / name).write_text("a,b\n1,2\n")
    with pytest.raises(PseudonymKeyError, match="token_hex"):
        load_key("OSTEO_T_KEY", tmp_path / "none", True, raw)        # no marker: never the demo key
    write_synthetic_marker(raw)
    assert load_key("OSTEO_T_KEY", tmp_path / "none", True, raw) == (DEMO_KEY, "demo")
    with pytest.raises(PseudonymKeyError):
        load_key("OSTEO_T_KEY", tmp_path / "none", False, raw)       # allow_demo_key: false


def test_fingerprint_identifies_the_key_without_revealing_it(tmp_path):
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    assert key_fingerprint(a) == key_fingerprint(a) != key_fingerprint(b) and len(key_fingerprint(a)) == 16
    record = tmp_path / "fp.json"
    assert check_fingerprint(a, record) == check_fingerprint(a, record)             # recorded, then matched
    with pytest.raises(PseudonymKeyError, match="not the key this workspace"):
        check_fingerprint(b, record)


def test_ages_are_whole_years_top_coded_at_90():
    assert [safe_harbor_age(a) for a in (44.99, 70.5, 89.99, 90.0, 103.2)] == [44, 70, 89, 90, 90]
