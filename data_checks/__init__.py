"""Great Expectations suites that gate every dataset (issue: feature store and data validation).

Entry points:
    run_checks(tables, cfg, docs_dir, context_root=None) -> ChecksReport
    gate(report)            raises ValidationFailedError when anything failed
    format_report(report)   CLI-friendly text
    read_tables(interim_dir, training=None) -> dict[str, DataFrame]   (the CLI's reader)

Great Expectations is imported lazily (on first use of ``run_checks``), so that
importing the package, its config or its report types stays cheap.
"""
from __future__ import annotations

from typing import Any

from data_checks.config import IDENTIFYING_COLUMNS, TABLES, ChecksConfig
from data_checks.errors import ChecksConfigError, ChecksError, ChecksInputError, ValidationFailedError
from data_checks.io import read_tables
from data_checks.report import ChecksReport, ExpectationFailure, SuiteSummary, format_report, gate

__all__ = [
    "IDENTIFYING_COLUMNS", "TABLES", "ChecksConfig", "ChecksConfigError", "ChecksError", "ChecksInputError",
    "ChecksReport", "ExpectationFailure", "SuiteSummary", "ValidationFailedError", "format_report", "gate",
    "read_tables", "run_checks",
]


def __getattr__(name: str) -> Any:
    if name == "run_checks":
        from data_checks.runner import run_checks

        return run_checks
    raise AttributeError(f"module 'data_checks' has no attribute {name!r}")
