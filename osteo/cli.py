"""The `osteo` command line: one sub-command per pipeline step.

DVC stages and Prefect tasks call these same entry points (or the library
functions behind them); nothing here holds step logic. Heavy imports happen
inside each command so that `osteo --help` stays instant.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from osteo.params import load_params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="osteo-platform: opportunistic osteoporosis screening from routine CT.",
)
cohort_app = typer.Typer(help="Synthetic multi-site cohort: generate it, or report its calibration.")
app.add_typer(cohort_app, name="cohort")


def _params(ctx: typer.Context) -> dict[str, Any]:
    return ctx.obj["params"]


def _path(params: dict[str, Any], key: str) -> Path:
    return Path(params["paths"][key])


@app.callback()
def main(
    ctx: typer.Context,
    profile: Optional[str] = typer.Option(None, help="Profile overlay: demo | tiny | paper (default: $OSTEO_PROFILE or params.yaml)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Configuration file."),
) -> None:
    """Load params.yaml with the selected profile for every sub-command."""
    ctx.obj = {"params": load_params(params_file, profile)}


@cohort_app.callback(invoke_without_command=True)
def cohort(
    ctx: typer.Context,
    site: list[str] = typer.Option(None, "--site", help="Generate only these sites (repeatable)."),
    n_patients: Optional[int] = typer.Option(None, help="Cap patients per site (quick subsets)."),
) -> None:
    """Generate the synthetic multi-site cohort as a hospital-style raw export."""
    if ctx.invoked_subcommand is not None:
        return
    _run_cohort(_params(ctx), sites=site or None, n_patients=n_patients)


def _run_cohort(params: dict[str, Any], sites: list[str] | None = None, n_patients: int | None = None) -> Any:
    from cohort.config import CohortConfig
    from cohort.simulate import run_cohort

    t0 = time.perf_counter()
    summary = run_cohort(
        CohortConfig.from_params(params), _path(params, "raw"), _path(params, "truth"),
        sites=sites, n_patients=n_patients,
    )
    typer.echo(f"cohort: {summary} ({time.perf_counter() - t0:.1f} s)")
    return summary


@cohort_app.command("report")
def cohort_report(
    ctx: typer.Context,
    out: Path = typer.Option(None, help="Output folder (default: <paths.reports>/cohort)."),
) -> None:
    """Write the cohort calibration report (PNG plots + markdown table)."""
    from cohort.config import CohortConfig
    from cohort.report import write_report

    params = _params(ctx)
    out = out or _path(params, "reports") / "cohort"
    result = write_report(_path(params, "raw"), _path(params, "truth"), out, CohortConfig.from_params(params))
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def ingest(ctx: typer.Context) -> None:
    """Ingest CT + masks + DXA: pseudonymise, reorient, resample, extract vertebra ROIs."""
    _run_ingest(_params(ctx))


def _run_ingest(params: dict[str, Any]) -> Any:
    from features.ingest import IngestConfig, run_ingest

    t0 = time.perf_counter()
    summary = run_ingest(
        IngestConfig.from_params(params), _path(params, "raw"), _path(params, "interim") / "ingest",
        profile=params["profile"],
    )
    typer.echo(summary.format())
    typer.echo(f"ingest: {time.perf_counter() - t0:.1f} s")
    return summary


@app.command()
def texture(ctx: typer.Context) -> None:
    """Compute texture pools (HU + 4 GLCM maps) and scalar radiomics per vertebra."""
    _run_texture(_params(ctx))


def _run_texture(params: dict[str, Any]) -> Any:
    from features.texture_stage import TextureConfig, run_texture

    t0 = time.perf_counter()
    interim = _path(params, "interim")
    summary = run_texture(TextureConfig.from_params(params), interim / "ingest", interim / "texture")
    typer.echo(f"texture: {summary} ({time.perf_counter() - t0:.1f} s)")
    return summary


@app.command("params")
def show_params(ctx: typer.Context, section: Optional[str] = typer.Argument(None)) -> None:
    """Print the merged parameters of the active profile (optionally one section)."""
    import yaml

    params = _params(ctx)
    typer.echo(yaml.safe_dump(params[section] if section else params, sort_keys=False))


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the main job on the active profile: cohort -> ingest -> texture, then a summary."""
    params = _params(ctx)
    t0 = time.perf_counter()
    typer.echo(f"== osteo demo (profile {params['profile']})")
    for step in (_run_cohort, _run_ingest, _run_texture):
        step(params)
    typer.echo(f"== done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    app()
