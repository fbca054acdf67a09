"""Typed errors of the data-validation gates; each message says what to do."""
from __future__ import annotations

from typing import TYPE_CHECKING

from osteo_config.checks import ChecksConfigError  # noqa: F401  (raised by the config package)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from data_checks.report import ChecksReport


class ChecksError(Exception):
    """Base class of every data_checks error."""


class ChecksInputError(ChecksError, ValueError):
    """``run_checks`` got a table it does not know, or nothing to check."""


class ValidationFailedError(ChecksError):
    """At least one expectation failed: the data must not flow to the next stage.

    Args:
        report: the full report; ``str(error)`` is its readable summary.
    """

    def __init__(self, report: "ChecksReport") -> None:
        from data_checks.report import format_report

        self.report = report
        super().__init__(
            format_report(report)
            + "\nfix the upstream stage (or the bounds in params.yaml `checks:` if they are wrong), then re-run"
        )
