"""Report text, the gate and input errors (no Great Expectations run needed)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_checks import (
    ChecksConfig, ChecksError, ChecksInputError, ChecksReport, ExpectationFailure, SuiteSummary,
    ValidationFailedError, format_report, gate,
)

FAIL = ExpectationFailure(
    suite="dxa", expectation_type="expect_column_values_to_be_between", column="bmd_g_cm2",
    unexpected_count=3, unexpected_percent=1.5, element_count=200, why="plausible areal BMD",
)
BROKEN = ExpectationFailure(
    suite="dxa", expectation_type="expect_column_values_to_be_in_set", column="chk_x",
    unexpected_count=None, unexpected_percent=None, element_count=None, exception="KeyError: 'chk_x'",
)


def _report(*failures: ExpectationFailure) -> ChecksReport:
    return ChecksReport(
        suites=(SuiteSummary("vertebrae", True, 30, 0, 10),
                SuiteSummary("dxa", not failures, 20, len(failures), 200)),
        failures=failures, docs_index=Path("docs/index.html"),
    )


def test_format_report_names_expectation_column_and_rows():
    text = format_report(_report(FAIL, BROKEN))
    assert text.splitlines()[0] == "data checks: FAILED (2 of 50 expectations in 1 of 2 suites)"
    assert "expect_column_values_to_be_between(bmd_g_cm2): 3 of 200 rows (1.50 %)" in text
    assert "could not run: KeyError" in text
    assert "PASS vertebrae" in text and "FAIL dxa" in text and "docs/index.html" in text


def test_gate_raises_a_typed_error_only_on_failure():
    gate(_report())  # passes silently
    with pytest.raises(ValidationFailedError) as info:
        gate(_report(FAIL))
    assert isinstance(info.value, ChecksError)
    assert info.value.report.failures == (FAIL,)
    assert "3 of 200 rows" in str(info.value) and "fix" in str(info.value)


def test_report_queries():
    report = _report(FAIL, BROKEN)
    assert not report.success
    assert report.failed_types("dxa") == {FAIL.expectation_type, BROKEN.expectation_type}
    assert report.failed_columns("vertebrae") == set()


@pytest.mark.parametrize("tables", [{}, {"vertebra": pd.DataFrame()}])
def test_unknown_or_no_table_is_an_input_error(tables, tmp_path):
    from data_checks import run_checks

    with pytest.raises(ChecksInputError):
        run_checks(tables, ChecksConfig(), docs_dir=tmp_path)


def test_read_tables_finds_stage_folders_and_the_interim_root(tmp_path, base_tables):
    from data_checks.io import read_tables

    (tmp_path / "ingest").mkdir()
    base_tables["vertebrae"].to_parquet(tmp_path / "ingest" / "vertebrae.parquet")
    base_tables["texture"].to_parquet(tmp_path / "texture.parquet")
    base_tables["training"].to_parquet(tmp_path / "train.parquet")
    out = read_tables(tmp_path, training=tmp_path / "train.parquet")
    assert set(out) == {"vertebrae", "texture", "training"}
    pd.testing.assert_frame_equal(out["vertebrae"], base_tables["vertebrae"])  # dtypes survive (UTC dates)
    with pytest.raises(ChecksInputError):
        read_tables(tmp_path / "empty")
    with pytest.raises(ChecksInputError):
        read_tables(tmp_path, training=tmp_path / "nope.parquet")
