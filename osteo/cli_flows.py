"""The orchestration commands of `osteo`: Prefect flows (`osteo flow ...`), the cron deployment, the demo.

Registered on the app of :mod:`osteo.cli` (imported at its end); the CLI is the only importer of ``flows/``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from osteo.cli import _fail, _params, app, features_latency, flow_app
from osteo.summary import _print_flow_summary, _print_retrain_summary


# --- flows and the main job -------------------------------------------------------
@flow_app.command("materialize")
def flow_materialize(
    ctx: typer.Context,
    cohort: bool = typer.Option(False, help="Run the cohort stage first (the synthetic export)."),
) -> None:
    """Prefect flow: (cohort ->) ingest -> texture -> validate -> splits -> materialize -> training table,
    each a DVC stage (DVC re-runs only what changed; `dvc status` is clean afterwards)."""
    params = _params(ctx)
    run_materialize_flow, kwargs = _flow_runner(ctx)
    result = run_materialize_flow(**kwargs, cohort=cohort)
    _print_flow_summary(result, params)
    if result["state"] != "completed":
        raise typer.Exit(code=1)
    ctx.invoke(features_latency, ctx, n=None)  # a measurement of the store the flow built, not a pipeline stage


def _flow_runner(ctx: typer.Context, name: str = "materialize"):
    """Configure Prefect, check the profile, import the flow: returns ``(runner, kwargs)``.

    The flows run DVC stages, which read params.yaml's ``profile:``; a ``--profile`` / ``$OSTEO_PROFILE``
    that differs is refused here (exit 1) with what to do, before any stage runs.
    """
    import os

    from flows.runtime import configure_prefect
    from flows.stages import ProfileMismatchError, check_profile

    root = ctx.find_root().params
    params_file = Path(root.get("params_file") or "params.yaml")
    requested = root.get("profile") or os.environ.get("OSTEO_PROFILE") or None
    try:
        profile = check_profile(Path.cwd(), params_file, requested)
    except ProfileMismatchError as exc:
        _fail(exc)
    configure_prefect(_params(ctx))  # before Prefect is imported
    kwargs = {"params_file": str(params_file), "profile": profile, "repo": str(Path.cwd())}
    if name == "retrain":
        from flows.retrain import run_retrain_flow

        return run_retrain_flow, kwargs
    from flows.materialize import run_materialize_flow

    return run_materialize_flow, kwargs


@flow_app.command("retrain")
def flow_retrain(
    ctx: typer.Context,
    materialize: bool = typer.Option(True, help="Run the materialize_features subflow first."),
    cohort: bool = typer.Option(False, help="With the subflow: run the cohort stage first (the synthetic export)."),
    reason: Optional[str] = typer.Option(None, help="Why (recorded in the promotion log when promote runs)."),
) -> None:
    """Prefect flow: features -> pretrain -> finetune -> evaluate -> promote, each a DVC stage.

    Exit 0 when a version is promoted, 3 when it is rejected by the gates, 1 when the flow failed.
    """
    params = _params(ctx)
    run_retrain_flow, kwargs = _flow_runner(ctx, "retrain")
    result = run_retrain_flow(**kwargs, materialize=materialize, cohort=cohort, reason=reason)
    _print_retrain_summary(result, params)
    raise typer.Exit(code={"promoted": 0, "rejected": 3}.get(result["state"], 1))


@app.command()
def deploy(ctx: typer.Context) -> None:
    """Serve the scheduled `retrain` deployment (cron flows.retrain.cron, one run at a time) until interrupted.

    Against a Prefect server: `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api osteo deploy.
    """
    params = _params(ctx)
    _, kwargs = _flow_runner(ctx, "retrain")
    from prefect import serve

    from flows.retrain import deployment

    dep = deployment(params.get("flows") or {}, kwargs["profile"], kwargs["params_file"], kwargs["repo"])
    typer.echo(f"serving deployment retrain-scheduled/{dep.name} (cron '{params['flows']['retrain']['cron']}' UTC, "
               f"concurrency limit {dep.concurrency_limit}); Ctrl-C stops it")
    serve(dep)


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job: the retrain Prefect flow with the cohort, each step a DVC stage
    (cohort -> features -> train -> evaluate -> gates -> registry); `dvc status` is clean afterwards."""
    params = _params(ctx)
    run_retrain_flow, kwargs = _flow_runner(ctx, "retrain")
    t0 = time.perf_counter()
    typer.echo(f"== osteo demo (profile {kwargs['profile']})")
    result = run_retrain_flow(**kwargs, materialize=True, cohort=True, reason="osteo demo")
    features = (result.get("features") or {}).get("training_table")
    if features:
        typer.echo(f"  training table: {features['rows']} labelled vertebrae {features['by_split']}")
    _print_retrain_summary(result, params)
    typer.echo(f"== done in {time.perf_counter() - t0:.0f} s")
    from osteo_config import resolve_tracking_uri

    uri = resolve_tracking_uri(params.get("tracking"))
    typer.echo(f"Compare runs in the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"
               "  -> http://127.0.0.1:5000 (experiment " + params["tracking"]["experiment"] + ")")
    typer.echo("Registry:  .venv/bin/osteo registry status  |  .venv/bin/osteo registry log")
    if result["state"] == "failed":
        raise typer.Exit(code=1)
