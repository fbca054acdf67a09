"""Screenshots of the MLflow UI for reviewers: an experiment's runs table and the comparison of its latest runs.

Serves ``mlflow server`` on 127.0.0.1 for an existing tracking store, opens it in headless Chromium
(``make browser``) and writes two PNGs::

    python -m tools.mlflow_screenshot --tracking-uri sqlite:///mlflow.db --experiment osteo-training \\
        --out docs/mlflow_compare.png --runs 2
    # -> docs/mlflow_compare.png (comparison view) and docs/mlflow_compare_runs.png (runs table)
    python -m tools.mlflow_screenshot --model-card osteo-screening --out docs/mlflow_model_card.png
    # -> the newest registered version's page: its model card (description), aliases, tags

Per-site metrics (``valid.site_A.vertebra.sen``, ``test.site_B.patient.f1``...) are logged on each training run's
``evaluate-valid`` child, not on the parent, so "the latest N parent runs" are compared through those children;
the comparison's ``method`` tag row says which parent each column belongs to.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.browser import (chromium, collapse_section, metric_row, open_comparison, open_model_card, open_runs_table,
                           screenshot)

EVAL_STAGE = "evaluate-valid"       # child run that carries the split/site/level metrics (osteo_model.experiment)
COMPARE_WINDOW = (1600, 1800)       # px; tall enough for run details, the metric table and the tags in one shot


class NoRunsError(LookupError):
    """The experiment has no evaluated training runs to compare."""


@dataclass(frozen=True)
class Compared:
    """The runs a comparison shows: evaluation children (one column each) and their parents' names."""

    experiment_id: str
    run_ids: list[str]                  # evaluate-valid children, newest first
    parent_names: list[str]             # the training runs they belong to, same order
    metric_keys: list[str]              # sorted union of the children's metric keys (the table's row order)


def latest_evaluated(tracking_uri: str, experiment: str, n: int) -> Compared:
    """The ``n`` newest training runs of ``experiment`` that reached evaluation, as their evaluation children.

    Raises:
        NoRunsError: the experiment is missing or none of its runs has an ``evaluate-valid`` child.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NoRunsError(f"no experiment {experiment!r} in {tracking_uri}: train first (osteo demo) or pass "
                          f"--experiment with one of {[e.name for e in client.search_experiments()]}")
    runs = client.search_runs([exp.experiment_id], f"tags.stage = '{EVAL_STAGE}'",
                              order_by=["attributes.start_time DESC"], max_results=n)
    if not runs:
        raise NoRunsError(f"experiment {experiment!r} has no {EVAL_STAGE!r} runs: no training run finished")
    parents = [client.get_run(r.data.tags["mlflow.parentRunId"]).info.run_name
               if "mlflow.parentRunId" in r.data.tags else r.info.run_name for r in runs]
    keys = sorted({k for r in runs for k in r.data.metrics})
    return Compared(exp.experiment_id, [r.info.run_id for r in runs], parents, keys)


def first_site_metric(keys: list[str]) -> str:
    """The first per-site metric row (``*.site_*``), where the comparison screenshot scrolls to."""
    return next((k for k in keys if ".site_" in k), keys[0])


def take(base: str, compared: Compared, out: Path, timeout: float = 90.0) -> tuple[Path, Path]:
    """Write the comparison view to ``out`` and the runs table beside it (``<stem>_runs.png``) from a served UI."""
    with chromium() as driver:
        open_runs_table(driver, base, compared.experiment_id, compared.parent_names, timeout)
        table = screenshot(driver, out.with_name(f"{out.stem}_runs{out.suffix}"))
        driver.set_window_size(*COMPARE_WINDOW)
        open_comparison(driver, base, compared.run_ids, [compared.experiment_id], timeout)
        collapse_section(driver, "Visualizations")     # a one-metric parallel-coordinates plot says little
        focus = first_site_metric(compared.metric_keys)
        metric_row(driver, focus, compared.metric_keys.index(focus), timeout)
        return screenshot(driver, out), table


def take_model_card(base: str, tracking_uri: str, name: str, out: Path, timeout: float = 90.0) -> tuple[Path, str]:
    """Screenshot of the newest version's page of registered model ``name`` (its model card); returns (png, version)."""
    from mlflow.tracking import MlflowClient

    versions = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_model_versions(
        f"name = '{name}'")
    if not versions:
        raise NoRunsError(f"no registered versions of {name!r} in {tracking_uri}: run `osteo demo` first")
    version = str(max(int(v.version) for v in versions))
    with chromium(COMPARE_WINDOW) as driver:
        open_model_card(driver, base, name, version, [f"Version {version}", "site_A"], timeout)
        return screenshot(driver, out), version


def main(argv: list[str] | None = None) -> int:
    from tools.browser import mlflow_ui

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="backend store to serve")
    ap.add_argument("--experiment", default="osteo-training", help="experiment name")
    ap.add_argument("--out", type=Path, default=Path("docs/mlflow_compare.png"),
                    help="comparison PNG; the runs table goes to <stem>_runs.png beside it")
    ap.add_argument("--runs", type=int, default=2, help="how many of the latest evaluated runs to compare (>= 2)")
    ap.add_argument("--model-card", metavar="NAME", help="instead: the newest version page of this registered model")
    args = ap.parse_args(argv)
    if args.model_card:
        with tempfile.TemporaryDirectory() as tmp, mlflow_ui(args.tracking_uri, Path(tmp) / "server.log") as base:
            png, version = take_model_card(base, args.tracking_uri, args.model_card, args.out)
        print(f"{args.model_card} v{version}: {png}")
        return 0
    if args.runs < 2:
        ap.error("--runs must be at least 2 to compare")
    compared = latest_evaluated(args.tracking_uri, args.experiment, args.runs)
    with tempfile.TemporaryDirectory() as tmp, mlflow_ui(args.tracking_uri, Path(tmp) / "server.log") as base:
        compare, table = take(base, compared, args.out)
    print(f"compared {', '.join(compared.parent_names)}: {compare} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
