"""``run_checks``: run every table's suite through a GE checkpoint and build the Data Docs.

The thin shell around Great Expectations: a context (in memory, or a file
context under ``context_root/gx``), one pandas data source, one dataframe
asset + suite + validation definition + checkpoint per table. Each checkpoint
updates one Data Docs site rooted at ``docs_dir``.

Privacy: the checkpoint's result format is SUMMARY with unexpected values
excluded (``exclude_unexpected_values``, ``partial_unexpected_count: 0``, no
unexpected rows or index lists), so that neither the validation results nor
the Data Docs carry a value of any column, identifying ones
(:data:`data_checks.config.IDENTIFYING_COLUMNS`) included; results keep
counts and percentages only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from data_checks.config import TABLES, ChecksConfig
from data_checks.derive import derive
from data_checks.errors import ChecksInputError
from data_checks.report import ChecksReport, ExpectationFailure, SuiteSummary
from data_checks.suites import SUITES

DATASOURCE = "osteo_tables"
DOCS_SITE = "osteo_data_docs"

# SUMMARY keeps counts/percentages; every field that could carry a cell value is off.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "exclude_unexpected_values": True,
    "return_unexpected_index_query": False,
}


def _context(docs_dir: Path, context_root: Path | None) -> Any:
    """A GE context with progress bars off and one Data Docs site at ``docs_dir``."""
    docs_dir = Path(docs_dir).resolve()
    if context_root is None:
        # no default temporary docs site: the only site is ours
        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
        context = gx.get_context(mode="ephemeral", project_config=config)
        base_directory = str(docs_dir)
    else:
        context = gx.get_context(mode="file", project_root_dir=str(context_root))
        # relative to the context folder, so that gx/great_expectations.yml holds no machine path
        base_directory = os.path.relpath(docs_dir, Path(context.root_directory).resolve())
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": base_directory},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    if DOCS_SITE in (context.list_data_docs_sites() or {}):
        context.update_data_docs_site(DOCS_SITE, site)
    else:
        context.add_data_docs_site(DOCS_SITE, site)
    return context


def _columns_of(kwargs: Mapping[str, Any]) -> str | None:
    if kwargs.get("column") is not None:
        return str(kwargs["column"])
    if kwargs.get("column_list"):
        return ",".join(map(str, kwargs["column_list"]))
    if kwargs.get("column_A") is not None:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return None


def _failures(suite: str, validation: Any) -> list[ExpectationFailure]:
    out = []
    for r in validation.results:
        if r.success:
            continue
        cfg, result = r.expectation_config, r.result or {}
        info = r.exception_info or {}
        raised = info.get("raised_exception", False)
        out.append(ExpectationFailure(
            suite=suite,
            expectation_type=cfg.type,
            column=_columns_of(cfg.kwargs),
            unexpected_count=result.get("unexpected_count"),
            unexpected_percent=result.get("unexpected_percent"),
            element_count=result.get("element_count"),
            why=str(cfg.notes or ""),
            exception=str(info.get("exception_message", "")).splitlines()[0][:200] if raised else None,
        ))
    return out


def _store_once(factory: Any, obj: Any) -> Any:
    """Add a validation definition or checkpoint to the context, or overwrite the stored one of its name.

    GE's ``add_or_update`` of these re-saves everything they hold: each stores the suite again,
    and re-saving an existing suite compares every expectation with every stored one (pydantic
    dicts, quadratic in the suite's size: ~180 expectations in the radiomics suite made it half
    of ``run_checks``). The suite is stored once, just before, with ``suites.add_or_update``.
    """
    from great_expectations.exceptions import DataContextError

    try:
        existing = factory.get(name=obj.name)
    except DataContextError:
        return factory.add(obj)
    obj.id = existing.id
    obj.save()
    return obj


def run_checks(
    tables: Mapping[str, pd.DataFrame],
    cfg: ChecksConfig,
    docs_dir: Path,
    context_root: Path | None = None,
) -> ChecksReport:
    """Validate each table with its suite through a GE checkpoint; build the Data Docs.

    Args:
        tables: table name (``vertebrae``, ``dxa``, ``radiomics``, ``texture``,
            ``training``) -> DataFrame as its stage wrote it; any subset.
        cfg: bounds, allowed sets and the root texture paths are relative to.
        docs_dir: folder of the Data Docs site (``index.html`` is written there).
        context_root: project folder of a file context (``<root>/gx``, which keeps
            suites, checkpoints and results); ``None`` = in-memory context.

    Returns:
        The report; call :func:`data_checks.gate` on it to stop on failure.

    Raises:
        ChecksInputError: no table given, or an unknown table name.
    """
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ChecksInputError(f"unknown tables {unknown}: name them among {list(TABLES)}")
    if not tables:
        raise ChecksInputError(f"no table to check: pass at least one of {list(TABLES)}")
    context = _context(Path(docs_dir), context_root)
    source = context.data_sources.add_or_update_pandas(DATASOURCE)
    summaries, failures = [], []
    for name in (t for t in TABLES if t in tables):  # fixed order: stable reports and docs
        frame = derive(name, tables[name], cfg)
        suite = context.suites.add_or_update(SUITES[name](cfg, frame))
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole_table")
        definition = _store_once(context.validation_definitions,
                                 gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
        checkpoint = _store_once(context.checkpoints, gx.Checkpoint(
            name=f"{name}_gate",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT,
        ))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for validation in result.run_results.values():
            bad = _failures(name, validation)
            failures.extend(bad)
            summaries.append(SuiteSummary(
                suite=name, success=bool(validation.success), evaluated=len(validation.results),
                failed=len(bad), rows=len(frame),
            ))
    index = Path(docs_dir) / "index.html"
    return ChecksReport(suites=tuple(summaries), failures=tuple(failures),
                        docs_index=index if index.is_file() else None)
