"""The `osteo` command line: one sub-command per pipeline step (the outermost shell).

The configuration is parsed once here (:func:`osteo_config.load_config`); each command hands it to
:mod:`osteo.steps`. DVC stages run these commands and the Prefect flows run the DVC stages
(:mod:`osteo.cli_flows`); summaries are printed by :mod:`osteo.summary`. Nothing here holds step
logic; heavy imports happen inside each step so `osteo --help` stays instant.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from osteo import steps
from osteo_config import Config, ConfigError, load_config
from osteo.summary import _echo_latency, _echo_materialize, _echo_promotion, _echo_training_table

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
experiments_app = typer.Typer(no_args_is_help=True, help="Comparisons: across methods (the paper's ablation), "
                                                             "across scanners (robustness to shift).")
registry_app = typer.Typer(no_args_is_help=True,
                           help="MLflow model registry: promote through the gates, roll back, status, audit log.")
app.add_typer(cohort_app, name="cohort")
app.add_typer(train_app, name="train")
app.add_typer(experiments_app, name="experiments")
app.add_typer(features_app, name="features")
app.add_typer(flow_app, name="flow")
app.add_typer(registry_app, name="registry")
screen_app = typer.Typer(no_args_is_help=True,
                         help="Screen new CT studies with the champion: tables, PDF + SR reports, review queue.")
app.add_typer(screen_app, name="screen")


def _cfg(ctx: typer.Context) -> Config:
    """The configuration, parsed once at this edge (every section typed and frozen)."""
    return ctx.obj["config"]


def _params(ctx: typer.Context) -> dict[str, Any]:
    """The merged params as plain data, for the shell only (printing, Prefect settings)."""
    return _cfg(ctx).as_dict()


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
    """Load params.yaml with the selected profile for every sub-command (parsed once, here)."""
    try:
        ctx.obj = {"config": load_config(params_file, profile)}
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


# --- data -------------------------------------------------------------------
@cohort_app.callback(invoke_without_command=True)
def cohort(
    ctx: typer.Context,
    site: list[str] = typer.Option(None, "--site", help="Generate only these sites (repeatable)."),
    n_patients: Optional[int] = typer.Option(None, help="Cap patients per site (quick subsets)."),
) -> None:
    """Generate the synthetic multi-site cohort as a hospital-style raw export."""
    if ctx.invoked_subcommand is None:
        typer.echo(f"cohort: {_timed('cohort', steps.cohort, _cfg(ctx), sites=site or None, n_patients=n_patients)}")


@cohort_app.command("report")
def cohort_report(ctx: typer.Context, out: Path = typer.Option(None, help="Output folder (default: <paths.reports>/cohort).")) -> None:
    """Write the cohort calibration report (PNG plots + markdown table)."""
    typer.echo(json.dumps(steps.cohort_report(_cfg(ctx), out), indent=2, default=str))


@app.command()
def ingest(ctx: typer.Context) -> None:
    """Ingest CT + masks + DXA: pseudonymise, reorient, resample, extract vertebra ROIs."""
    typer.echo(_timed("ingest", steps.ingest, _cfg(ctx)).format())


@app.command()
def texture(ctx: typer.Context) -> None:
    """Compute texture pools (HU + 4 GLCM maps) and scalar radiomics per vertebra."""
    typer.echo(f"texture: {steps.texture(_cfg(ctx))}")


@app.command()
def splits(ctx: typer.Context) -> None:
    """Assign patients to train/valid/test per site (external sites test-only); store table + hash."""
    s = steps.splits(_cfg(ctx))
    typer.echo(f"splits: sha256 {s.sha256[:16]}  " + "  ".join(
        f"{site}: " + "/".join(f"{k}={v}" for k, v in sorted(c.items())) for site, c in sorted(s.counts.items())))


@app.command()
def validate(
    ctx: typer.Context,
    training: bool = typer.Option(False, "--training", help="Validate the assembled training table only."),
) -> None:
    """Great Expectations gate: validate the stage tables (or the training table); exit 1 on failure."""
    from data_checks import ValidationFailedError, format_report, gate

    report = steps.validate(_cfg(ctx), training=training)
    typer.echo(format_report(report))
    try:
        gate(report)
    except ValidationFailedError:
        raise typer.Exit(code=1)


@features_app.command("materialize")
def features_materialize(ctx: typer.Context, full: bool = typer.Option(False, help="Reload every row.")) -> None:
    """Apply the Feast repository and materialize incrementally to the online store."""
    _echo_materialize(steps.materialize(_cfg(ctx), full=full))


@features_app.command("training-table")
def features_training_table(ctx: typer.Context) -> None:
    """Pair vertebrae with DXA labels (±window, osteo_training_v1), attach splits, write the table."""
    cfg = _cfg(ctx)
    _echo_training_table(steps.training_table(cfg), cfg.ingest.dxa_window_days)


@features_app.command("latency")
def features_latency(ctx: typer.Context, n: Optional[int] = typer.Option(None, help="Look-ups (default: params).")) -> None:
    """Time single-vertebra online look-ups through osteo_screening_v1 (p50/p99)."""
    _echo_latency(steps.latency(_cfg(ctx), n=n))


# --- models -----------------------------------------------------------------------
_METHOD = typer.Option(None, help="tp_swav | swav | scratch | selftrain (default: params train.method).")
_NO_TRACK = typer.Option(False, "--no-tracking", help="Do not log to MLflow (files only).")


@train_app.command("pretrain")
def train_pretrain(ctx: typer.Context, method: Optional[str] = _METHOD, no_tracking: bool = _NO_TRACK) -> None:
    """TP-SwAV (or SwAV) pretraining on every vertebra of the train split -> models/pretrain/encoder.pt."""
    out = _timed("pretrain", steps.train_pretrain, _cfg(ctx), method, tracking=not no_tracking)
    typer.echo(f"method {out['method']}: encoder {out['encoder'] or '(none: trained from scratch)'}; "
               f"MLflow run {out['run_id'] or '-'}")


@train_app.command("finetune")
def train_finetune(ctx: typer.Context, method: Optional[str] = _METHOD, no_tracking: bool = _NO_TRACK) -> None:
    """MoE multi-task fine-tuning, validation threshold, valid/test scores -> models/finetune, metrics/train.json."""
    out = _timed("finetune", steps.train_finetune, _cfg(ctx), method, tracking=not no_tracking)
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
    seeds: int = typer.Option(1, min=1, help="Train every arm with this many seeds (train.seed + 0..N-1); "
                                             ">= 3 reports mean ± SD."),
    no_tracking: bool = _NO_TRACK,
) -> None:
    """Scratch vs SwAV vs TP-SwAV, class-only vs unified loss, no-MoE vs MoE, companions, baselines -> one table."""
    overrides = {"model": {"companion": {"pseudo_rounds": pseudo_rounds}}} if pseudo_rounds else None
    tidy = _timed("ablation", steps.ablation, _cfg(ctx), arms, out, overrides, tracking=not no_tracking,
                  seeds=seeds)
    f1 = tidy[(tidy["scope"] == "pooled") & (tidy["level"] == "patient") & (tidy["metric"] == "f1")]
    for arm, values in f1.groupby("arm", sort=False)["value"]:
        sd = f" ± {values.std():.1f}" if len(values) > 1 else ""
        typer.echo(f"  {arm:<20} test patient-level pooled F1 {values.mean():.1f}{sd} ({len(values)} seed(s))")
    typer.echo(f"table written to {out}")


@experiments_app.command("robustness")
def experiments_robustness(
    ctx: typer.Context,
    shifts: Optional[list[str]] = typer.Option(None, "--shift", help="Shift of robustness.shifts to run "
                                               "(repeatable; default: all). The reference always runs."),
    n_patients: Optional[int] = typer.Option(None, min=2, help="Patients per site (default robustness.n_patients)."),
    out: Path = typer.Option(Path("docs/results.md"), help="Markdown file whose robustness table block is replaced."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Table as JSON (default <paths.metrics>/robustness.json)."),
    work: Optional[Path] = typer.Option(None, help="Per-site work folders (default <paths.data>/robustness)."),
    model_uri: Optional[str] = typer.Option(None, help="MLflow model URI (default models:/<registry.model_name>@champion)."),
    keep_work: Optional[bool] = typer.Option(None, "--keep-work/--no-keep-work",
                                             help="Keep each site's export, ROIs and pools (default robustness.keep_work)."),
    no_tracking: bool = _NO_TRACK,
) -> None:
    """Scanner-shift sites (noise, HU slope/offset, PSF, slices, contrast; alone and combined) screened by the
    champion, each vs site D re-simulated unshifted on the same patients -> docs/results.md, metrics/robustness.json."""
    from screening.errors import ScreeningError
    from screening.robustness_report import format_table

    try:
        record = _timed("robustness", steps.robustness, _cfg(ctx), shifts, n_patients, work, json_out, out,
                        model_uri=model_uri, keep_work=keep_work, tracking=not no_tracking)
    except (ScreeningError, ConfigError) as exc:
        _fail(exc)
    typer.echo(format_table(record))
    typer.echo(f"table written to {out}; JSON {json_out or _cfg(ctx).paths.metrics / 'robustness.json'}; "
               f"MLflow run {record.get('run_id') or '-'}")


# --- evaluation and registry --------------------------------------------------------
EXIT_ERROR = 1          # a typed error (no evaluation, no previous champion, bad params): the message says what to do
EXIT_CHAIN_BROKEN = 2   # `osteo registry log`: the audit log's hash chain does not verify
EXIT_REJECTED = 3       # `osteo registry promote --fail-on-reject`: the gates refused the candidate


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=EXIT_ERROR)


@app.command()
def evaluate(ctx: typer.Context, no_tracking: bool = _NO_TRACK) -> None:
    """Test split, stored threshold, per site A-D, vs the champion -> metrics/evaluate.json, reports/evaluation."""
    from osteo_model.evaluate import EvaluationError
    from registry.errors import RegistryError

    try:
        out = _timed("evaluate", steps.evaluate, _cfg(ctx), tracking=not no_tracking)
    except (EvaluationError, RegistryError) as exc:
        _fail(exc)
    champion = (f"champion v{out['champion_version']} re-scored on the same {out['n_patients_common']} test patients"
                if out["champion_version"] else "no champion to compare with")
    typer.echo(f"threshold {out['threshold']:.4f} (stored with the model, chosen on valid); {champion}")
    typer.echo("test split, patient level (any-vertebra rule), value [95% CI]:")
    typer.echo(steps.format_site_table(out["per_site"]))
    typer.echo(f"metrics {out['evaluate_json']}; report {out['report']}; MLflow run {out['run_id'] or '-'}")


@registry_app.command("promote")
def registry_promote(
    ctx: typer.Context,
    actor: Optional[str] = typer.Option(None, help="Who promotes (default: $OSTEO_ACTOR, else the OS user)."),
    reason: Optional[str] = typer.Option(None, help="Why (recorded in the audit log)."),
    fail_on_reject: bool = typer.Option(True, "--fail-on-reject/--no-fail-on-reject",
                                        help="Exit 3 when the gates reject the candidate (the DVC stage passes "
                                             "--no-fail-on-reject: a rejection is a recorded outcome, not an error)."),
) -> None:
    """Register the evaluated candidate; promote it to champion when every gate passes -> metrics/promotion.json.

    Exit 0: promoted (or rejected with --no-fail-on-reject); 3: rejected by the gates; 1: error (e.g. no evaluate.json).
    """
    from registry.errors import RegistryError

    try:
        out = steps.promote(_cfg(ctx), actor=actor, reason=reason)
    except RegistryError as exc:
        _fail(exc)
    _echo_promotion(out)
    if out["state"] == "rejected" and fail_on_reject:
        raise typer.Exit(code=EXIT_REJECTED)


@registry_app.command("rollback")
def registry_rollback(
    ctx: typer.Context,
    reason: str = typer.Option(..., help="Why (required; recorded in the audit log)."),
    actor: Optional[str] = typer.Option(None, help="Who (default: $OSTEO_ACTOR, else the OS user)."),
) -> None:
    """Make previous-champion the champion again (exit 1 when there is none)."""
    from registry.errors import RegistryError

    try:
        out = steps.rollback(_cfg(ctx), reason, actor=actor)
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"{out['model_name']}: champion v{out['rolled_back_version']} -> v{out['champion']} (rolled back by "
               f"{out['actor']}: {out['reason']}); aliases {out['aliases']}")


@registry_app.command("approve")
def registry_approve(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="The version awaiting approval (registry.approval: required)."),
    reason: str = typer.Option(..., help="Why (required; recorded in the audit log)."),
    approver: Optional[str] = typer.Option(None, help="Who approves, a named person (default: $OSTEO_ACTOR)."),
) -> None:
    """A named approver moves champion to VERSION (gates re-checked under the current config); exit 3 if refused."""
    from registry.errors import RegistryError

    try:
        out = steps.registry_approve(_cfg(ctx), version, reason, approver=approver)
    except RegistryError as exc:
        _fail(exc)
    if out["state"] != "promoted":
        typer.echo(f"{out['model_name']} v{version}: approval REFUSED: " + "; ".join(out["reasons"]), err=True)
        raise typer.Exit(code=EXIT_REJECTED)
    typer.echo(f"{out['model_name']} v{version}: APPROVED by {out['actor']}, now champion; aliases {out['aliases']} "
               f"(audit event {out['event_seq']})")


@registry_app.command("reject")
def registry_reject(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="The version awaiting approval."),
    reason: str = typer.Option(..., help="Why (required; recorded in the audit log)."),
    approver: Optional[str] = typer.Option(None, help="Who rejects, a named person (default: $OSTEO_ACTOR)."),
) -> None:
    """A named approver turns down VERSION (it loses challenger; champion unchanged)."""
    from registry.errors import RegistryError

    try:
        out = steps.registry_reject(_cfg(ctx), version, reason, approver=approver)
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"{out['model_name']} v{version}: REJECTED by {out['actor']}; aliases {out['aliases']} "
               f"(audit event {out['event_seq']})")


@registry_app.command("repair")
def registry_repair(
    ctx: typer.Context,
    roll_back: bool = typer.Option(False, "--roll-back", help="Undo the cut-short operation instead of finishing it."),
    actor: Optional[str] = typer.Option(None, help="Who repairs (default: $OSTEO_ACTOR, else the OS user)."),
) -> None:
    """Finish (or --roll-back) a promotion cut short by a crash, so aliases, tags and the log agree; exit 1 if not."""
    from registry.errors import RegistryError

    try:
        out = steps.registry_repair(_cfg(ctx), roll_back=roll_back, actor=actor)
    except RegistryError as exc:
        _fail(exc)
    for e in out["repaired"]:
        typer.echo(f"repaired: seq {e['seq']} {e['event']} v{e['version']} ({e['reason']})")
    if not out["repaired"]:
        typer.echo("nothing to repair: no operation was cut short")
    if out["problems"]:
        typer.echo("STILL INCONSISTENT: " + "; ".join(out["problems"]), err=True)
        raise typer.Exit(code=EXIT_ERROR)
    typer.echo(f"consistent; aliases {out['aliases']}")


@registry_app.command("log")
def registry_log(
    ctx: typer.Context,
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Check the keyed (HMAC-SHA256) chain: an edited, removed or foreign-key row "
                                     "exits 2."),
) -> None:
    """The append-only promotion log (who / what / when / why), keyed hash chain verified; exit 2 if it is broken."""
    from registry.errors import RegistryError

    try:
        out = steps.registry_log(_cfg(ctx))
    except RegistryError as exc:
        _fail(exc)
    typer.echo(out["text"])
    if out["pending_intents"]:
        typer.echo(f"CUT SHORT: intents {out['pending_intents']} never completed: run `osteo registry repair`", err=True)
    if not verify:
        return
    if not out["chain_ok"]:
        typer.echo(f"HASH CHAIN BROKEN: {out['chain_error']}", err=True)
        raise typer.Exit(code=EXIT_CHAIN_BROKEN)
    typer.echo(f"keyed hash chain verified: {out['n_verified']} rows, intact")


@registry_app.command("status")
def registry_status(ctx: typer.Context) -> None:
    """Registered versions, aliases and the champion's headline test metrics."""
    out = steps.registry_status(_cfg(ctx))
    if not out["registered"]:
        typer.echo(f"{out['model_name']}: no version registered yet (`osteo evaluate`, then `osteo registry promote`)")
        return
    typer.echo(f"{out['model_name']}: " + (", ".join(f"{a} = v{v}" for a, v in sorted(out["aliases"].items()))
                                           or "no aliases (no champion yet)"))
    typer.echo(f"  {'version':>7}  {'status':<18}  {'aliases':<28}  {'gates':<6}  {'data':<16}  created (UTC)")
    for v in out["versions"]:
        typer.echo(f"  {v['version']:>7}  {v['status']:<18}  {','.join(v['aliases']) or '-':<28}  "
                   f"{v['gates_passed'] or '-':<6}  {v['data_version'] or '-':<16}  {v['created']}")
    if out["champion_headline"]:
        typer.echo(f"  champion v{out['champion']} test metrics at registration (patient level):")
        for scope, levels in out["champion_headline"].items():
            m = levels.get("patient") or {}
            typer.echo(f"    {scope:<10} " + "  ".join(
                f"{k.upper()} {'n/a' if m.get(k) is None else format(m[k], '.3f' if k == 'auroc' else '.1f')}"
                for k in ("sen", "spe", "f1", "auroc")))


# --- screening new studies ---------------------------------------------------------------
EXIT_DRIFT = 4          # `osteo screen run`: the batch drifted from the model's training distribution (outputs written)
EXIT_PACS = 5           # `osteo screen run --pacs` / `approve`: the PACS did not answer or refused (state file unchanged)
_OUT = typer.Option(Path("screening"), "--out", help="Output folder (batches, ledger).")


@screen_app.command("run")
def screen_run(
    ctx: typer.Context,
    input_dir: Optional[Path] = typer.Argument(None, help="Export folder: ct_studies.csv, patients.csv, CTs, masks "
                                               "(no DXA); or --pacs."),
    out: Path = _OUT,
    pacs: Optional[str] = typer.Option(None, "--pacs", help="DICOMweb root of the PACS, e.g. "
                                       "http://HOST:8042/dicom-web: screen its new CT series, store SR + PDF back."),
    model_uri: Optional[str] = typer.Option(None, help="MLflow model URI (default models:/<registry.model_name>@champion)."),
    segmenter: Optional[str] = typer.Option(None, help="Command for studies without a mask (every PACS study), e.g. "
                                            "'TotalSegmentator -i {ct} -o {out} --ml'."),
    rescreen: bool = typer.Option(False, "--rescreen", help="Re-screen studies an older model version screened."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="tcp://HOST:8786 of a running Dask "
                                               "scheduler for the per-study work (default compute.dask_address)."),
) -> None:
    """Screen a folder or a PACS: exit 0 done, 1 typed error (no champion, skew, bad export), 4 drift alert,
    5 the PACS did not answer or refused a request (the state file is unchanged: the next run retakes the series)."""
    from features.errors import IngestSetupError
    from features.parallel import DaskUnreachableError
    from screening.errors import ScreeningError
    from screening.pacs import PacsError

    if (input_dir is None) == (pacs is None):
        _fail(typer.BadParameter("pass an export folder or --pacs URL (exactly one)"))
    try:
        res = steps.screen(_cfg(ctx), input_dir, out, model_uri=model_uri, segmenter=segmenter, rescreen=rescreen,
                           pacs_url=pacs, dask_address=dask_address)
    except PacsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_PACS)
    except (ScreeningError, IngestSetupError, DaskUnreachableError) as exc:
        _fail(exc)
    typer.echo(res.format())
    batch = res.batch if pacs else res
    if batch is not None and batch.drift_alert:
        raise typer.Exit(code=EXIT_DRIFT)


def _review(out: Path, batch: str, reviewer: str, approve: bool, reason: Optional[str] = None) -> None:
    from screening.errors import ScreeningError
    from screening.pacs import PacsError

    try:
        res = steps.screen_review(out, batch, reviewer, approve, reason)
    except PacsError as exc:
        typer.echo(f"error: {exc} (the reports are released locally; the next `osteo screen run --pacs` stores "
                   f"them)", err=True)
        raise typer.Exit(code=EXIT_PACS)
    except ScreeningError as exc:
        _fail(exc)
    typer.echo(f"batch {batch}: {res['state']} by {res['reviewer']} "
               f"({res.get('released', res.get('rejected'))} studies)")
    if res.get("stored"):
        typer.echo(f"  stored back on the PACS: {res['stored']['sr']} SR + {res['stored']['pdf']} Encapsulated PDF")


@screen_app.command("approve")
def screen_approve(batch: str = typer.Argument(..., help="Batch id (printed by `osteo screen run`)."),
                   reviewer: str = typer.Option(..., help="Who reviewed (recorded in every report)."),
                   out: Path = _OUT) -> None:
    """Release a batch's pending SRs and PDFs, signed by the reviewer."""
    _review(out, batch, reviewer, True)


@screen_app.command("reject")
def screen_reject(batch: str = typer.Argument(..., help="Batch id."),
                  reviewer: str = typer.Option(..., help="Who reviewed."),
                  reason: Optional[str] = typer.Option(None, help="Why (recorded in review.json)."),
                  out: Path = _OUT) -> None:
    """Discard a batch's pending reports (nothing is released)."""
    _review(out, batch, reviewer, False, reason)


@app.command("params")
def show_params(ctx: typer.Context, section: Optional[str] = typer.Argument(None)) -> None:
    """Print the merged parameters of the active profile (optionally one section)."""
    import yaml

    params = _params(ctx)
    typer.echo(yaml.safe_dump(params[section] if section else params, sort_keys=False))


# the orchestration commands (flows, deploy, demo) register themselves on `app` / `flow_app`
from osteo import cli_flows  # noqa: E402,F401


if __name__ == "__main__":       # `python -m osteo.cli`: run the imported module's app, which has every command
    from osteo.cli import app as _app

    _app()
