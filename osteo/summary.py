"""What the `osteo` commands print: one-screen summaries of what a step or a flow returned (text only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from osteo import steps


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


def _echo_promotion(out: dict[str, Any]) -> None:
    name, version = out["model_name"], out["version"]
    if out["state"] == "promoted":
        prev = out.get("previous_champion")
        typer.echo(f"{name} v{version}: PROMOTED to champion" + (f" (previous-champion v{prev})" if prev else ""))
    elif out["state"] == "awaiting_approval":
        typer.echo(f"{name} v{version}: gates PASSED, AWAITING APPROVAL (challenger; registry.approval: required): "
                   f"`osteo registry approve {version} --reason TEXT --approver NAME`")
    else:
        champ = out.get("champion")
        typer.echo(f"{name} v{version}: REJECTED; it stays registered (status refused), champion "
                   + (f"stays v{champ}" if champ else "unset"))
        for g in out["failed_gates"]:
            what = "no decision (too few patients)" if g.get("status") == "insufficient" else "failed gate"
            typer.echo(f"  {what} {g['gate']} ({g['kind']}) {g['scope']}/{g['level']} {g['metric']}: "
                       f"value {g['value']} vs bound {g['bound']}" + (f" ({g['note']})" if g.get("note") else ""))
        for r in out["reasons"]:
            if not r.startswith("gate failed:"):
                typer.echo(f"  refused: {r}")
    for line in _gate_scope_lines(out):
        typer.echo(line)
    typer.echo(f"aliases: {out['aliases']}  (actor {out['actor']}; audit event {out['event_seq']})")


def _gate_scope_lines(prom: dict[str, Any]) -> list[str]:
    """Per site / pooled scope: test patients with / without osteoporosis and what its gates decided."""
    rows = prom.get("gate_scopes") or []
    if not rows:
        return []
    word = {"pass": "passed", "fail": "FAILED", "insufficient": "INSUFFICIENT EVIDENCE", "skipped": "skipped"}
    lines = ["gates per scope (test patients osteoporotic / other; checks passed, failed, lacking evidence):"]
    for r in rows:
        counts = "n/a" if r.get("n_pos") is None else f"{r['n_pos']:>3} / {r['n_neg']:<3}"
        lines.append(f"  {r['scope']:<9} {counts}  {word.get(r['decision'], r['decision']):<21} "
                     f"({r.get('pass', 0)} passed, {r.get('fail', 0)} failed, {r.get('insufficient', 0)} insufficient"
                     + (f", {r['skipped']} skipped" if r.get("skipped") else "") + ")")
    return lines


def _print_retrain_summary(result: dict[str, Any], params: dict[str, Any]) -> None:
    """One screen: the retrain flow's outcome, per-site test metrics, gates and aliases (from the stages' files)."""
    typer.echo(f"flow retrain: {result['state'].upper()}")
    if result.get("message") and result["state"] != "rejected":  # a rejection's gates are listed below
        typer.echo(f"  {result['message']}")
    if result.get("stages"):
        typer.echo("  stages: " + ", ".join(f"{k} {'ran' if v['ran'] else 'skipped'}"
                                             for k, v in result["stages"].items()))
    if "finetune" in result:
        f = result["finetune"]
        typer.echo(f"  model: method {f.get('method')}, threshold {f.get('threshold'):.4f} (chosen on valid, "
                   f"sensitivity >= {params['model']['companion']['min_sensitivity']}); MLflow run {f.get('run_id')}")
    ev = result.get("evaluate") or {}
    table = ev.get("per_site") or []
    if not table and ev.get("metrics_file") and Path(ev["metrics_file"]).is_file():
        from osteo_model.evaluate import site_table

        table = site_table(json.loads(Path(ev["metrics_file"]).read_text()))
    if table:
        typer.echo("  test split, patient level (any-vertebra rule), [95% patient-bootstrap CI]:")
        for line in steps.format_site_table(table).splitlines():
            typer.echo("    " + line)
    prom = result.get("promotion") or {}
    if prom:
        typer.echo(f"  registry: {params['registry']['model_name']} v{prom.get('version')} {prom.get('state').upper()}; "
                   f"aliases {prom.get('aliases') or '{} (no champion yet)'}")
        for line in _gate_scope_lines(prom):
            typer.echo("    " + line)
        for g in prom.get("failed_gates") or []:
            if g.get("status") == "insufficient":
                typer.echo(f"    no decision {g.get('gate')}: {g.get('scope')} {g.get('level')} {g.get('metric')}: "
                           f"{g.get('note')}")
                continue
            bound = g.get("bound") or [None, None]
            bound = bound if isinstance(bound, list) else [bound, None]
            rule = " and ".join(x for x in (f">= {bound[0]:g}" if bound[0] is not None else "",
                                            f"<= {bound[1]:g}" if len(bound) > 1 and bound[1] is not None else "") if x)
            value = g.get("value")
            typer.echo(f"    failed gate {g.get('gate')}: {g.get('scope')} {g.get('level')} {g.get('metric')} = "
                       f"{'n/a' if value is None else format(value, '.3g')}, needs {rule}")


def _print_flow_summary(result: dict[str, Any], params: dict[str, Any]) -> None:
    """One screen: stages run, data counts, validation, feature-store rows, pairing, online latency."""
    typer.echo(f"flow materialize_features: {result['state'].upper()}")
    if result.get("error"):
        typer.echo(f"  reason: {result['error']}")
    if result.get("stages"):
        typer.echo("  stages: " + ", ".join(f"{k} {'ran' if v['ran'] else 'skipped'}"
                                             for k, v in result["stages"].items()))
    if "ingest" in result:
        for kind in ("studies", "vertebrae", "dxa"):
            c = result["ingest"][kind]
            why = ", ".join(f"{k} {v}" for k, v in sorted(c["quarantined_by_reason"].items())) or "-"
            typer.echo(f"  ingest {kind:<9} seen {c['seen']:>5}  ingested {c['ingested']:>5}  quarantined {c['quarantined']:>4} ({why})")
    suites = (result.get("validation") or {}).get("suites") or {}
    if "texture" in suites:
        typer.echo(f"  texture   pools {suites['texture']['rows']:>5}  radiomics rows "
                   f"{(suites.get('radiomics') or {}).get('rows', '-')}")
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
