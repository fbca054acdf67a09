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
