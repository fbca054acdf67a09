"""Each suite passes the good fixture and catches every planted defect class, and only it."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from data_checks import ValidationFailedError, format_report, gate

BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"


def test_good_fixture_passes_every_suite(check, tables):
    before = {name: df.copy(deep=True) for name, df in tables.items()}
    report = check(tables)
    for name, df in tables.items():  # derived columns go to copies, never into the caller's frames
        pd.testing.assert_frame_equal(df, before[name])
    assert report.success, format_report(report)
    assert {s.suite for s in report.suites} == {"vertebrae", "dxa", "radiomics", "texture", "training"}
    assert all(s.evaluated >= 10 and s.rows == len(tables[s.suite]) for s in report.suites)
    gate(report)  # must not raise
    assert format_report(report).startswith("data checks: PASSED")
    assert report.docs_index is not None and report.docs_index.is_file()
    for suite in ("vertebrae", "dxa", "radiomics", "texture", "training"):  # one validation page per suite
        assert list((report.docs_index.parent / "validations" / suite).rglob("*.html"))


def _set(df: pd.DataFrame, row: int, **values) -> pd.DataFrame:
    for col, value in values.items():
        df.loc[df.index[row], col] = value
    return df


def _dup_row(df: pd.DataFrame, row: int, **changes) -> pd.DataFrame:
    extra = df.iloc[[row]].copy()
    for col, value in changes.items():
        extra[col] = value
    return pd.concat([df, extra], ignore_index=True)


def _patient_rows(df: pd.DataFrame, site: str, nth: int = 0) -> pd.Index:
    pid = df.loc[df["site"] == site, "patient_id"].unique()[nth]
    return df.index[df["patient_id"] == pid]


def _move_to_train(df: pd.DataFrame) -> pd.DataFrame:  # a whole site-D patient, so no split leakage
    df.loc[_patient_rows(df, "D"), "split"] = "train"
    return df


def _one_split_row(df: pd.DataFrame) -> pd.DataFrame:  # one row of a train patient moved to test
    rows = _patient_rows(df, "A")
    df.loc[rows[0], "split"] = "test"
    return df


def _all_normal(df: pd.DataFrame) -> pd.DataFrame:
    df["t_score"], df["who_class"], df["bmd_g_cm2"] = 0.3, 0, 1.036
    return df


def _late_dxa(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[df.index[0], "dxa_date"] = df.loc[df.index[0], "ct_date"] + pd.Timedelta(days=200)
    return df


# (defect id, table, mutation, expected failed (expectation type, column) set, rows that must be counted)
DEFECTS: list[tuple[str, str, Callable[[pd.DataFrame], pd.DataFrame], set, int | None]] = [
    ("bmd_out_of_range", "dxa", lambda d: _set(d, 0, bmd_g_cm2=2.7), {(BETWEEN, "bmd_g_cm2")}, 1),
    ("t_score_out_of_range", "dxa", lambda d: _set(d, 0, t_score=-7.0, who_class=2), {(BETWEEN, "t_score")}, 1),
    ("who_class_inconsistent", "dxa", lambda d: _set(d, 0, t_score=0.3, who_class=2),
     {("expect_column_pair_values_to_be_equal", "who_class,chk_who_class_expected")}, 1),
    ("unknown_vendor", "dxa", lambda d: _set(d, 1, device_vendor="Norland"), {(IN_SET, "device_vendor")}, 1),
    ("unknown_site", "vertebrae", lambda d: _set(d, 2, site="Z"), {(IN_SET, "site")}, 1),
    ("duplicate_key", "vertebrae", lambda d: _dup_row(d, 3),
     {("expect_compound_columns_to_be_unique", "patient_id,study_id,level")}, 2),
    ("duplicate_dxa", "dxa", lambda d: _dup_row(d, 0, dxa_id="f" * 32),
     {("expect_compound_columns_to_be_unique", "patient_id,dxa_date,region")}, 2),
    ("duplicate_dxa_id", "dxa", lambda d: _dup_row(d, 0, region="L1-L4", level=0, dxa_date=d["dxa_date"].iloc[0] + pd.Timedelta(days=1)),
     {("expect_column_values_to_be_unique", "dxa_id")}, 2),
    ("hu_outside_window", "vertebrae", lambda d: _set(d, 0, hu_mean=1600.0), {(BETWEEN, "hu_mean")}, 1),
    ("level_outside_1_18", "vertebrae", lambda d: _set(d, 0, level=19),
     {(BETWEEN, "level"), ("expect_column_pair_values_to_be_in_set", "level,level_name")}, 1),
    ("window_violated", "training", _late_dxa, {(BETWEEN, "chk_ct_dxa_days")}, 1),
    ("patient_in_two_splits", "training", _one_split_row, {(BETWEEN, "chk_patient_splits")}, 4),
    ("external_site_in_train", "training", _move_to_train, {("expect_column_values_to_not_be_in_set", "site")}, 4),
    ("unlabeled_level", "training", lambda d: _set(d, 0, level=12), {(BETWEEN, "level")}, 1),
    ("class_balance", "training", _all_normal,
     {(BETWEEN, "chk_who_class_share"), ("expect_column_distinct_values_to_contain_set", "who_class")}, None),
    ("missing_texture_file", "training", lambda d: _set(d, 0, pool_path="texture/00/" + "0" * 64 + ".npy"),
     {(IN_SET, "chk_pool_exists")}, 1),
    ("hash_mismatch", "training", lambda d: _set(d, 1, pool_sha256=hashlib.sha256(b"other").hexdigest()),
     {(IN_SET, "chk_pool_hash_ok")}, 1),
    ("texture_table_missing_file", "texture", lambda d: _set(d, 0, pool_path="texture/gone.npy"),
     {(IN_SET, "chk_pool_exists")}, 1),
    ("non_finite_radiomics", "radiomics", lambda d: _set(_set(d, 0, original_glcm_Contrast=np.inf), 1, original_firstorder_Mean=np.nan),
     {(BETWEEN, "original_glcm_Contrast"), ("expect_column_values_to_not_be_null", "original_firstorder_Mean")}, 1),
    ("missing_column", "dxa", lambda d: d.drop(columns=["device_model"]), {("expect_table_columns_to_match_set", None)}, None),
]


@pytest.mark.parametrize("defect, table, mutate, expected, count", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_suite_catches_planted_defect(check, tables, defect, table, mutate, expected, count):
    report = check({table: mutate(tables[table])})
    assert not report.success
    got = {(f.expectation_type, f.column) for f in report.failures}
    assert got == expected, format_report(report)  # the defect, and nothing else, is reported
    if count is not None:
        assert all(f.unexpected_count == count for f in report.failures), format_report(report)
    with pytest.raises(ValidationFailedError) as info:
        gate(report)
    message = str(info.value)
    assert "FAILED" in message and all(t in message for t, _ in expected)
    for f in report.failures:
        if f.unexpected_count is not None:
            assert f"{f.unexpected_count} of {f.element_count} rows" in message


def test_corrupted_texture_file_fails_the_hash_check(check, tables, cfg, tmp_path):
    df = tables["texture"]
    src = cfg.artifact_root / df.loc[0, "pool_path"]
    bad = tmp_path / "corrupt.npy"
    shutil.copy(src, bad)
    blob = bytearray(bad.read_bytes())
    blob[-1] ^= 0xFF  # flip one byte of the last float
    bad.write_bytes(bytes(blob))
    df.loc[0, "pool_path"] = str(bad)  # absolute paths are honoured
    report = check({"texture": df})
    assert {(f.expectation_type, f.column, f.unexpected_count) for f in report.failures} == {
        (IN_SET, "chk_pool_hash_ok", 1)}


def test_site_row_count_bounds_come_from_config(check, tables, cfg):
    per_site = tables["training"].groupby("site").size()
    tight = dataclasses.replace(cfg, rows_per_site=(1, int(per_site.max()) - 1))
    report = check({"training": tables["training"]}, tight)
    (failure,) = report.failures
    assert (failure.column, failure.unexpected_count) == ("chk_site_rows", int(per_site[per_site == per_site.max()].sum()))
    assert check({"training": tables["training"]}, cfg).success


def test_scanner_set_is_checked_when_configured(check, tables, cfg):
    scanners = tuple(sorted(tables["vertebrae"]["scanner"].unique()))
    assert check({"vertebrae": tables["vertebrae"]}, dataclasses.replace(cfg, scanners=scanners)).success
    report = check({"vertebrae": tables["vertebrae"]}, dataclasses.replace(cfg, scanners=scanners[1:]))
    assert {(f.column, f.unexpected_count) for f in report.failures} == {
        ("scanner", int((tables["vertebrae"]["scanner"] == scanners[0]).sum()))}


def test_naive_dates_break_the_utc_contract(check, tables):
    df = tables["dxa"]
    df["dxa_date"] = df["dxa_date"].dt.tz_localize(None)
    assert {f.column for f in check({"dxa": df}).failures} == {"chk_dxa_date_utc"}


# Expectations whose results hold counts only (or a dtype name): the only kinds allowed on identifiers.
COUNT_ONLY = {
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_unique",
    "expect_compound_columns_to_be_unique", "expect_column_values_to_match_regex",
    "expect_column_values_to_be_in_type_list",
}


def test_identifying_columns_only_meet_count_only_expectations(tables, cfg):
    from data_checks import IDENTIFYING_COLUMNS
    from data_checks.derive import derive
    from data_checks.suites import SUITES

    seen = set()
    for name, build in SUITES.items():
        for e in build(cfg, derive(name, tables[name], cfg)).expectations:
            kw = e.configuration.kwargs
            cols = {kw.get("column"), kw.get("column_A"), kw.get("column_B"), *kw.get("column_list", [])}
            if cols & set(IDENTIFYING_COLUMNS):
                seen.add(e.expectation_type)
                assert e.expectation_type in COUNT_ONLY, (name, e.expectation_type, cols)
    assert {"expect_column_values_to_not_be_null", "expect_compound_columns_to_be_unique"} <= seen

