"""The checks report: what failed, where, on how many rows; its text form; the gate.

A report holds counts and percentages only. Unexpected values never reach it
(nor the Data Docs: see ``RESULT_FORMAT`` in :mod:`data_checks.runner`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_checks.errors import ValidationFailedError


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation.

    Attributes:
        suite: suite (= table) name.
        expectation_type: e.g. ``expect_column_values_to_be_between``.
        column: the column(s) it looks at (``a,b`` for pairs/compounds; ``None`` for table-level).
        unexpected_count: rows that broke it (``None`` for table-level or aggregate expectations).
        unexpected_percent: same as a percentage of non-null rows.
        element_count: rows it looked at.
        why: the expectation's purpose (its ``notes``).
        exception: exception class and message when it could not be evaluated (e.g. missing column).
    """

    suite: str
    expectation_type: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    element_count: int | None
    why: str = ""
    exception: str | None = None


@dataclass(frozen=True)
class SuiteSummary:
    """Outcome of one suite on one table."""

    suite: str
    success: bool
    evaluated: int
    failed: int
    rows: int


@dataclass(frozen=True)
class ChecksReport:
    """Result of :func:`data_checks.run_checks`.

    Attributes:
        suites: one summary per validated table.
        failures: every failed expectation, in suite order.
        docs_index: the Data Docs ``index.html`` (``None`` if not built).
    """

    suites: tuple[SuiteSummary, ...]
    failures: tuple[ExpectationFailure, ...] = field(default_factory=tuple)
    docs_index: Path | None = None

    @property
    def success(self) -> bool:
        """True when every expectation of every suite passed."""
        return all(s.success for s in self.suites) and not self.failures

    def failed_types(self, suite: str | None = None) -> set[str]:
        """Expectation types that failed (optionally in one suite)."""
        return {f.expectation_type for f in self.failures if suite is None or f.suite == suite}

    def failed_columns(self, suite: str | None = None) -> set[str | None]:
        """Columns of failed expectations (optionally in one suite)."""
        return {f.column for f in self.failures if suite is None or f.suite == suite}


def _describe(f: ExpectationFailure) -> str:
    where = f"{f.expectation_type}({f.column})" if f.column else f.expectation_type
    if f.exception:
        what = f"could not run: {f.exception}"
    elif f.unexpected_count is not None:
        pct = f" ({f.unexpected_percent:.2f} %)" if f.unexpected_percent is not None else ""
        what = f"{f.unexpected_count} of {f.element_count} rows{pct}"
    else:
        what = "table-level expectation not met"
    return f"    - {where}: {what}" + (f" [{f.why}]" if f.why else "")


def format_report(report: ChecksReport) -> str:
    """Readable, CLI-friendly summary: one line per suite, one per failed expectation."""
    n_exp = sum(s.evaluated for s in report.suites)
    n_bad = sum(s.failed for s in report.suites)
    bad_suites = sum(not s.success for s in report.suites)
    head = (
        f"data checks: PASSED ({n_exp} expectations in {len(report.suites)} suites)"
        if report.success
        else f"data checks: FAILED ({n_bad} of {n_exp} expectations in {bad_suites} of {len(report.suites)} suites)"
    )
    lines = [head]
    for s in report.suites:
        lines.append(f"  {'PASS' if s.success else 'FAIL'} {s.suite:<10} "
                     f"{s.evaluated - s.failed}/{s.evaluated} expectations, {s.rows} rows")
        lines.extend(_describe(f) for f in report.failures if f.suite == s.suite)
    if report.docs_index is not None:
        lines.append(f"  Data Docs: {report.docs_index}")
    return "\n".join(lines)


def gate(report: ChecksReport) -> None:
    """Stop the pipeline when any expectation failed.

    Raises:
        ValidationFailedError: the report has a failure; its message is :func:`format_report`.
    """
    if not report.success:
        raise ValidationFailedError(report)
