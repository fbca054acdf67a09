"""The `osteo` command line: one sub-command per pipeline step.

DVC stages run these commands; Prefect tasks call the same functions of
:mod:`osteo.steps`. Commands only print what a step returned: nothing here
holds step logic. Heavy imports happen inside each step so `osteo --help`
stays instant.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from osteo import steps
from osteo.params import load_params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="osteo-platform: opportunistic osteoporosis screening from routine CT.",
)
cohort_app = typer.Typer(help="Synthetic multi-site cohort: generate it, or report its calibration.")
features_app = typer.Typer(no_args_is_help=True,
                           help="Feast feature store: materialize, assemble the training table, time online reads.")
flow_app = typer.Typer(no_args_is_help=True, help="Prefect flows (embedded local mode by default).")
train_app = typer.Typer(no_args_is_help=True,
                        help="Train the screening model (train.method): self-supervised pretraining, then fine-tuning.")
experiments_app = typer.Typer(no_args_is_help=True, help="Comparisons across methods (the paper's ablation).")
app.add_typer(cohort_app, name="cohort")
app.add_typer(train_app, name="train")
app.add_typer(experiments_app, name="experiments")
app.add_typer(features_app, name="features")
app.add_typer(flow_app, name="flow")


def _params(ctx: typer.Context) -> dict[str, Any]:
    return ctx.obj["params"]


def _timed(label: str, fn, *args, **kwargs) -> Any:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    typer.echo(f"{label}: {time.perf_counter() - t0:.1f} s")
    return out


@app.callback()
def main(
    ctx: typer.Context,
    profile: Optional[str] = typer.Option(None, help="Profile overlay: demo | tiny | paper (default: $OSTEO_PROFILE or params.yaml)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Configuration file."),
) -> None:
    """Load params.yaml with the selected profile for every sub-command."""
    ctx.obj = {"params": load_params(params_file, profile)}


# --- data -------------------------------------------------------------------
@cohort_app.callback(invoke_without_command=True)
def cohort(
    ctx: typer.Context,
    site: list[str] = typer.Option(None, "--site", help="Generate only these sites (repeatable)."),
    n_patients: Optional[int] = typer.Option(None, help="Cap patients per site (quick subsets)."),
) -> None:
    """Generate the synthetic multi-site cohort as a hospital-style raw export."""
    if ctx.invoked_subcommand is None:
        typer.echo(f"cohort: {_timed('cohort', steps.cohort, _params(ctx), sites=site or None, n_patients=n_patients)}")


@cohort_app.command("report")
def cohort_report(ctx: typer.Context, out: Path = typer.Option(None, help="Output folder (default: <paths.reports>/cohort).")) -> None:
    """Write the cohort calibration report (PNG plots + markdown table)."""
    typer.echo(json.dumps(steps.cohort_report(_params(ctx), out), indent=2, default=str))


@app.command()
def ingest(ctx: typer.Context) -> None:
    """Ingest CT + masks + DXA: pseudonymise, reorient, resample, extract vertebra ROIs."""
    typer.echo(_timed("ingest", steps.ingest, _params(ctx)).format())


@app.command()
def texture(ctx: typer.Context) -> None:
    """Compute texture pools (HU + 4 GLCM maps) and scalar radiomics per vertebra."""
    typer.echo(f"texture: {steps.texture(_params(ctx))}")


@app.command()
def splits(ctx: typer.Context) -> None:
    """Assign patients to train/valid/test per site (external sites test-only); store table + hash."""
    s = steps.splits(_params(ctx))
    typer.echo(f"splits: sha256 {s.sha256[:16]}  " + "  ".join(
        f"{site}: " + "/".join(f"{k}={v}" for k, v in sorted(c.items())) for site, c in sorted(s.counts.items())))


@app.command()
def validate(
    ctx: typer.Context,
    training: bool = typer.Option(False, "--training", help="Validate the assembled training table only."),
) -> None:
    """Great Expectations gate: validate the stage tables (or the training table); exit 1 on failure."""
    from data_checks import ValidationFailedError, format_report, gate

    report = steps.validate(_params(ctx), training=training)
    typer.echo(format_report(report))
    try:
        gate(report)
    except ValidationFailedError:
        raise typer.Exit(code=1)


# --- feature store -------------------------------------------------------------
def _echo_materialize(s) -> None:
    typer.echo("materialize: rows written " + ", ".join(f"{k}={v}" for k, v in s.rows_written.items())
               + f" (offline: ct={s.ct_rows}, dxa={s.dxa_rows}, duplicate DXA dropped={s.dxa_duplicates_dropped})")


def _echo_training_table(s, window_days: int) -> None:
    p = s.pairing
    typer.echo(f"training table: {s.rows} labelled vertebrae; by split {s.by_split}; by site {s.by_site}")
    typer.echo(f"  pairing: vertebrae at L1-L4 {p.get('at_label_levels')}, paired {p.get('paired')}, "
               f"excluded by the ±{window_days}-day rule {p.get('anchors_excluded_by_window')} "
               f"(candidate CT/DXA pairs outside the window: {p.get('pairs_outside_window')})")


def _echo_latency(lat) -> None:
    typer.echo(f"online read latency ({lat.backend}, {lat.n} look-ups): p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms")


@features_app.command("materialize")
def features_materialize(ctx: typer.Context, full: bool = typer.Option(False, help="Reload every row.")) -> None:
    """Apply the Feast repository and materialize incrementally to the online store."""
    _echo_materialize(steps.materialize(_params(ctx), full=full))


@features_app.command("training-table")
def features_training_table(ctx: typer.Context) -> None:
    """Pair vertebrae with DXA labels (±window, osteo_training_v1), attach splits, write the table."""
    params = _params(ctx)
    _echo_training_table(steps.training_table(params), params["ingest"]["dxa_window_days"])


@features_app.command("latency")
def features_latency(ctx: typer.Context, n: Optional[int] = typer.Option(None, help="Look-ups (default: params).")) -> None:
    """Time single-vertebra online look-ups through osteo_screening_v1 (p50/p99)."""
    _echo_latency(steps.latency(_params(ctx), n=n))


# --- models -----------------------------------------------------------------------
_METHOD = typer.Option(None, help="tp_swav | swav | scratch | selftrain (default: params train.method).")
_NO_TRACK = typer.Option(False, "--no-tracking", help="Do not log to MLflow (files only).")


@train_app.command("pretrain")
def train_pretrain(ctx: typer.Context, method: Optional[str] = _METHOD, no_tracking: bool = _NO_TRACK) -> None:
    """TP-SwAV (or SwAV) pretraining on every vertebra of the train split -> models/pretrain/encoder.pt."""
    out = _timed("pretrain", steps.train_pretrain, _params(ctx), method, tracking=not no_tracking)
    typer.echo(f"method {out['method']}: encoder {out['encoder'] or '(none: trained from scratch)'}; "
               f"MLflow run {out['run_id'] or '-'}")


@train_app.command("finetune")
def train_finetune(ctx: typer.Context, method: Optional[str] = _METHOD, no_tracking: bool = _NO_TRACK) -> None:
    """MoE multi-task fine-tuning, validation threshold, valid/test scores -> models/finetune, metrics/train.json."""
    out = _timed("finetune", steps.train_finetune, _params(ctx), method, tracking=not no_tracking)
    metrics = json.loads(Path(out["metrics"]).read_text())
    typer.echo(f"method {out['method']}: model {out['model']}, threshold {out['threshold']:.4f} "
               f"(chosen on valid), MLflow run {out['run_id'] or '-'}")
    for split in ("valid", "test"):
        pooled = (metrics.get(split) or {}).get("pooled", {}).get("patient", {})
        typer.echo(f"  {split:<5} patient-level pooled: " + ", ".join(
            f"{k.upper()} {pooled[k]:.1f}" for k in ("sen", "spe", "f1") if pooled.get(k) is not None))


@experiments_app.command("ablation")
def experiments_ablation(
    ctx: typer.Context,
    arms: Optional[list[str]] = typer.Option(None, "--arm", help="Arm to run (repeatable; default: all)."),
    out: Path = typer.Option(Path("docs/results.md"), help="Markdown file whose ablation table block is replaced."),
    pseudo_rounds: Optional[int] = typer.Option(None, help="Override model.companion.pseudo_rounds for the run."),
    no_tracking: bool = _NO_TRACK,
) -> None:
    """Scratch vs SwAV vs TP-SwAV, class-only vs unified loss, no-MoE vs MoE, companions, baselines -> one table."""
    overrides = {"model": {"companion": {"pseudo_rounds": pseudo_rounds}}} if pseudo_rounds else None
    tidy = _timed("ablation", steps.ablation, _params(ctx), arms, out, overrides, tracking=not no_tracking)
    f1 = tidy[(tidy["scope"] == "pooled") & (tidy["level"] == "patient") & (tidy["metric"] == "f1")]
    for _, row in f1.iterrows():
        typer.echo(f"  {row['arm']:<20} test patient-level pooled F1 {row['value']:.1f}")
    typer.echo(f"table written to {out}")


# --- flows and the main job -------------------------------------------------------
@flow_app.command("materialize")
def flow_materialize(ctx: typer.Context) -> None:
    """Prefect flow: ingest -> texture -> validate -> splits -> materialize -> training table."""
    run_materialize_flow = _flow_runner(_params(ctx))
    result = run_materialize_flow(_params(ctx))
    _print_flow_summary(result, _params(ctx))
    if result["state"] != "completed":
        raise typer.Exit(code=1)


def _flow_runner(params: dict[str, Any]):
    from flows.runtime import configure_prefect

    configure_prefect(params)  # before Prefect is imported
    from flows.materialize import run_materialize_flow

    return run_materialize_flow


def _print_flow_summary(result: dict[str, Any], params: dict[str, Any]) -> None:
    """One screen: data counts, validation, feature-store rows, pairing, online latency."""
    typer.echo(f"flow materialize_features: {result['state'].upper()}")
    if result.get("error"):
        typer.echo(f"  reason: {result['error']}")
    if "ingest" in result:
        for kind in ("studies", "vertebrae", "dxa"):
            c = result["ingest"][kind]
            why = ", ".join(f"{k} {v}" for k, v in sorted(c["quarantined_by_reason"].items())) or "-"
            typer.echo(f"  ingest {kind:<9} seen {c['seen']:>5}  ingested {c['ingested']:>5}  quarantined {c['quarantined']:>4} ({why})")
    if "texture" in result:
        t = result["texture"]
        typer.echo(f"  texture   pools {t['seen'] - t['quarantined']:>5}  computed {t['computed']}  reused {t['skipped']}  "
                   f"quarantined {t['quarantined']}")
    for key in ("validation", "training_validation"):
        if key in result:
            typer.echo(f"  {key.replace('_', ' ')}: {result[key]['summary']}")
    if "materialize" in result:
        typer.echo("  feature views (rows written to the online store): "
                   + ", ".join(f"{k} {v}" for k, v in result["materialize"]["rows_written"].items()))
    if "training_table" in result:
        tt, p = result["training_table"], result["training_table"]["pairing"]
        typer.echo(f"  training table: {tt['rows']} labelled vertebrae {tt['by_split']}; "
                   f"excluded by the ±{params['ingest']['dxa_window_days']}-day CT/DXA rule: "
                   f"{p.get('anchors_excluded_by_window')} of {p.get('anchors_with_dxa')} vertebrae with a DXA")
    if "latency" in result:
        lat = result["latency"]
        typer.echo(f"  online read latency ({lat['backend']}, {lat['n']} look-ups): p50 {lat['p50_ms']:.2f} ms, "
                   f"p99 {lat['p99_ms']:.2f} ms")


@app.command("params")
def show_params(ctx: typer.Context, section: Optional[str] = typer.Argument(None)) -> None:
    """Print the merged parameters of the active profile (optionally one section)."""
    import yaml

    params = _params(ctx)
    typer.echo(yaml.safe_dump(params[section] if section else params, sort_keys=False))


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job: cohort, then the materialize_features Prefect flow, then a summary."""
    params = _params(ctx)
    run_materialize_flow = _flow_runner(params)
    t0 = time.perf_counter()
    typer.echo(f"== osteo demo (profile {params['profile']})")
    typer.echo(f"cohort: {_timed('cohort', steps.cohort, params)}")
    result = run_materialize_flow(params)
    _print_flow_summary(result, params)
    typer.echo(f"== done in {time.perf_counter() - t0:.0f} s")
    if result["state"] != "completed":
        raise typer.Exit(code=1)


if __name__ == "__main__":  # pragma: no cover
    app()
