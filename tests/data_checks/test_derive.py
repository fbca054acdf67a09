"""Derived check columns: WHO classes at the thresholds, file checks, cross-row facts."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest

from data_checks import ChecksConfig
from data_checks.derive import derive, pool_file_checks, who_class_from_t_score


def test_who_class_thresholds_follow_the_method_spec():
    t = pd.Series([0.5, -1.0, -1.01, -2.49, -2.5, -4.0, np.nan])
    out = who_class_from_t_score(t, (-1.0, -2.5))
    assert out.iloc[:6].tolist() == [0, 1, 1, 1, 2, 2]  # METHOD.md §1: normal > -1, osteoporosis <= -2.5
    assert np.isnan(out.iloc[6])


def test_pool_file_checks_accept_array_or_file_hash_and_flag_the_rest(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", arr)
    array_sha = hashlib.sha256(arr.tobytes()).hexdigest()
    file_sha = hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()
    df = pd.DataFrame({
        "pool_path": ["a.npy", "a.npy", "a.npy", "missing.npy", None],
        "pool_sha256": [array_sha, file_sha, "0" * 64, array_sha, array_sha],
    })
    exists, ok = pool_file_checks(df, tmp_path)
    assert exists.tolist() == [True, True, True, False, False]
    assert ok.tolist() == [True, True, False, None, None]  # a missing file is reported once, by `exists`


def test_training_derivations(tmp_path):
    cfg = dataclasses.replace(ChecksConfig(), artifact_root=tmp_path)
    utc = pd.Timestamp("2022-01-01", tz="UTC")
    df = pd.DataFrame({
        "patient_id": ["p1", "p1", "p2", "p3"],
        "split": ["train", "valid", "test", "test"],
        "site": ["A", "A", "A", "B"],
        "who_class": [0, 0, 1, 2],
        "t_score": [0.0, 0.0, -2.0, -3.0],
        "ct_date": [utc] * 4,
        "dxa_date": [utc + pd.Timedelta(days=d) for d in (0, -10, 200, 5)],
    })
    out = derive("training", df, cfg)
    assert out["chk_patient_splits"].tolist() == [2, 2, 1, 1]
    assert out["chk_site_rows"].tolist() == [3, 3, 3, 1]
    assert out["chk_who_class_share"].tolist() == pytest.approx([0.5, 0.5, 0.25, 0.25])
    assert out["chk_ct_dxa_days"].tolist() == pytest.approx([0, 10, 200, 5])  # |Δt|, sign-free
    assert out["chk_ct_date_utc"].all() and out["chk_dxa_date_utc"].all()
    assert list(df.columns) == list(out.columns[: len(df.columns)])  # input untouched, columns appended
    assert "chk_patient_splits" not in df


def test_naive_dates_are_flagged_not_utc():
    out = derive("vertebrae", pd.DataFrame({"ct_date": pd.to_datetime(["2021-01-01"])}), ChecksConfig())
    assert not out["chk_ct_date_utc"].any()


def test_file_sha256_matches_the_array_bytes_or_the_file_bytes_in_one_pass(tmp_path):
    """C-order .npy: the array's bytes are read past the header (no load); Fortran / byte-swapped arrays are
    loaded and hashed in C order; any file also matches on its own bytes; truncation and mismatches fail."""
    import io

    from data_checks.derive import file_sha256_matches

    a = np.arange(5 * 6 * 4, dtype=np.float32).reshape(5, 6, 4)
    digest = hashlib.sha256(a.tobytes()).hexdigest()
    c = tmp_path / "c.npy"
    np.save(c, a)
    assert file_sha256_matches(c, digest)
    assert file_sha256_matches(c, hashlib.sha256(c.read_bytes()).hexdigest())        # the file's own bytes
    assert not file_sha256_matches(c, hashlib.sha256(b"other").hexdigest())
    f = tmp_path / "f.npy"
    np.save(f, np.asfortranarray(a))
    assert f.read_bytes() != c.read_bytes() and file_sha256_matches(f, digest)
    be = tmp_path / "be.npy"
    np.save(be, a.astype(">f4"))
    assert file_sha256_matches(be, hashlib.sha256(a.astype(">f4").tobytes()).hexdigest())
    v2 = tmp_path / "v2.npy"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(2, 0))
    v2.write_bytes(buf.getvalue())
    assert file_sha256_matches(v2, digest)
    cut = tmp_path / "cut.npy"
    cut.write_bytes(c.read_bytes()[:-8])
    assert not file_sha256_matches(cut, digest)
    other = tmp_path / "x.npz"
    other.write_bytes(b"payload")
    assert file_sha256_matches(other, hashlib.sha256(b"payload").hexdigest())
