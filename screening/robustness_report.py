"""The robustness table: each simulated site evaluated like site D, the paired drop vs the reference, the targets.

Per site, :func:`osteo_model.evaluate.evaluate_predictions` (the evaluate stage's metrics, patient-bootstrap
CIs) on its paired, scored vertebrae at the model's stored threshold. Per shift, the difference against the
reference (the base site re-simulated unshifted through the same path) on the patients both screened:
:func:`osteo_model.evaluate.paired_comparison` (paired patient-bootstrap CI, permutation ``p_perm``). Since a
shift site holds the reference's patients and DXA labels (:mod:`osteo_config.robustness`), the difference is
the shift's effect alone; patients a shift quarantined are reported as lost coverage, not folded into F1.

Targets (issue 11; point estimates, never tuned): ``Δ F1 >= -robustness.targets.max_f1_drop`` and the
shift's patient sensitivity ``>= robustness.targets.min_sensitivity``; a site without evidence (nothing
screened, a metric undefined) does not pass.

Outputs: the JSON record (:func:`build_record`), the markdown block between :data:`MARKERS` (the ablation's
writer, :func:`osteo_model.ablation.write_table`), one MLflow run ``robustness`` (counts and metrics only).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from osteo_config.robustness import REFERENCE, UNITS, outside_training, training_ranges
from osteo_config.tracking import TrackingConfig

MARKERS = ("<!-- robustness-table:begin -->", "<!-- robustness-table:end -->")
PATIENT_KEYS = ("sen", "spe", "f1", "auroc")
PAIRED_KEYS = ("sen", "spe", "f1", "auroc")


def _pick(block: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {f"{k}{s}": block.get(f"{k}{s}") for k in keys for s in ("", "_lo", "_hi")}


def paired_vs_reference(pred: pd.DataFrame, ref: pd.DataFrame, threshold: float, cfg) -> dict[str, Any]:
    """Shift minus reference on the vertebrae both screened (same patients, same DXA labels), patient level.

    Returns ``{"n_patients_common", "n_label_mismatch", <metric>: {"diff", "lo", "hi", "n_undefined",
    "p_perm"}}``; a patient whose label differs between the two (0 by construction) is left out and counted.
    """
    from osteo_model import evaluate as E
    from osteo_model import metrics as M

    common = set(pred["vertebra_id"]) & set(ref["vertebra_id"])
    a = M.patient_table(pred[pred["vertebra_id"].isin(common)], threshold)
    b = M.patient_table(ref[ref["vertebra_id"].isin(common)], threshold)
    both = a.merge(b[["patient_id", "y_true", "score"]], on="patient_id", suffixes=("", "_ref"))
    agree = both["y_true"] == both["y_true_ref"]
    both = both[agree].reset_index(drop=True)
    out: dict[str, Any] = {"n_patients_common": int(len(both)), "n_label_mismatch": int((~agree).sum())}
    if both.empty:
        return out
    out.update(E.paired_comparison(
        both["patient_id"].to_numpy(), both["site"].astype(str).to_numpy(), both["y_true"].to_numpy(dtype="int64"),
        E.decision_outputs(both, threshold), E.decision_outputs(both.assign(score=both["score_ref"]), threshold),
        PAIRED_KEYS, cfg))
    return out


def _verdict(value: float | None, ok: bool) -> bool | None:
    return None if value is None else bool(ok)


def site_row(run, ref, ecfg, threshold: float, ranges: Mapping[str, tuple[float, float]], targets,
             base_site: str) -> dict[str, Any]:
    """One table row (JSON-able) of a :class:`screening.robustness.SiteRun`."""
    from osteo_model import evaluate as E

    q = run.quarantine
    studies_q = q[q["kind"] == "study"] if len(q) else q
    row: dict[str, Any] = {
        "site": run.name, "overlay": run.shift.values() if run.shift else {},
        "shift": run.shift.describe() if run.shift else "none (base site as simulated)",
        "outside_training": outside_training(run.shift, ranges) if run.shift else {},
        **run.counts, "studies_quarantined": int(len(studies_q)),
        "quarantined_by_reason": {k: int(v) for k, v in sorted(studies_q["reason"].value_counts().items())}
        if len(studies_q) else {},
        "vertebrae_quarantined": int((q["kind"] == "vertebra").sum()) if len(q) else 0,
        "seconds": run.seconds}
    pat = vert = {}
    if len(run.predictions):
        m = E.evaluate_predictions(run.predictions, ecfg, threshold)[f"site_{base_site}"]
        pat, vert = m["patient"], m["vertebra"]
    row.update(n_patients=int(pat.get("n_patients") or 0), n_pos=int(pat.get("n_pos") or 0),
               n_vertebrae=int(vert.get("n") or 0))
    row["n_neg"] = row["n_patients"] - row["n_pos"]
    row["patient"] = _pick(pat, PATIENT_KEYS)
    row["vertebra"] = _pick(vert, ("auroc", "bmd_r", "bmd_mae"))
    f1, sen = pat.get("f1"), pat.get("sen")
    row["targets"] = {"sen": _verdict(sen, sen is not None and sen >= targets.min_sensitivity)}
    if run is not ref:
        paired = (paired_vs_reference(run.predictions, ref.predictions, threshold, ecfg)
                  if len(run.predictions) and len(ref.predictions) else {"n_patients_common": 0})
        row["vs_reference"] = E.clean_json(paired)
        d = (paired.get("f1") or {}).get("diff")
        d = None if d is None or d != d else d
        row["targets"]["f1"] = _verdict(d, d is not None and d >= -targets.max_f1_drop)
    row["passed"] = all(v is True for v in row["targets"].values())
    return E.clean_json(row)


def build_record(runs: Sequence, inputs, model, seconds: float) -> dict[str, Any]:
    """The whole run as one JSON-able record: setup, training ranges, one row per site, overall verdict."""
    rcfg = inputs.robustness
    ecfg = replace(inputs.evaluate, sites=(rcfg.base_site,), external_sites=(rcfg.base_site,), subgroups=())
    ranges = training_ranges(inputs.cohort)
    ref = runs[0]
    rows = [site_row(r, ref, ecfg, model.threshold, ranges, rcfg.targets, rcfg.base_site) for r in runs]
    shifts = [r for r in rows if r["site"] != REFERENCE]
    return {"profile": inputs.profile, "base_site": rcfg.base_site, "n_patients_simulated": rcfg.n_patients,
            "model": {"uri": model.uri, "version": model.version, "threshold": model.threshold},
            "comparison": f"reference = site {rcfg.base_site} re-simulated unshifted through the same path; "
                          "differences paired on the same patients",
            "targets": {"max_f1_drop": rcfg.targets.max_f1_drop, "min_sensitivity": rcfg.targets.min_sensitivity},
            "training_ranges": {k: list(v) for k, v in ranges.items()},
            "n_boot": ecfg.n_boot, "n_perm": ecfg.n_perm, "ci_level": ecfg.ci_level,
            "sites": rows, "all_shifts_passed": bool(shifts) and all(r["passed"] for r in shifts),
            "seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- rendering


def _cell(block: Mapping[str, Any], key: str, percent: bool = True) -> str:
    from osteo_model.evaluate import fmt
    return fmt(block.get(key), block.get(f"{key}_lo"), block.get(f"{key}_hi"), percent=percent)


def _diff(row: Mapping[str, Any], key: str) -> str:
    d = (row.get("vs_reference") or {}).get(key) or {}
    if d.get("diff") is None:
        return "n/a" if "vs_reference" in row else "—"
    digits = 3 if key == "auroc" else 1
    ci = "" if d.get("lo") is None or d.get("hi") is None else f" [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"
    return f"{d['diff']:+.{digits}f}{ci}"


def _shift_cell(row: Mapping[str, Any], ranges: Mapping[str, Sequence[float]]) -> str:
    if not row["overlay"]:
        return row["shift"]
    parts = []
    for k, v in row["overlay"].items():
        lo, hi = ranges[k]
        value = "/".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"{v:g}"
        parts.append(f"{k} {value}{UNITS[k]} (train {lo:g}–{hi:g})")
    return "; ".join(parts)


def _target(v: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "n/a (no evidence)"}[v]


def markdown_table(record: Mapping[str, Any]) -> str:
    """One row per site: overlay, patients, quarantine, V-AUROC, P-SEN/SPE/F1 [CI], BMD r, Δ vs reference, targets."""
    head = ["site", "shift (training range)", "patients osteo / other", "studies quarantined (reason)", "V-AUROC",
            "P-SEN", "P-SPE", "P-F1", "BMD r", "Δ P-F1 vs ref [95% CI]", "Δ P-SEN vs ref [95% CI]",
            "same patients", f"F1 drop ≤ {record['targets']['max_f1_drop']:g}",
            f"SEN ≥ {record['targets']['min_sensitivity']:g}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["sites"]:
        q = f"{r['studies_quarantined']} / {r['studies']}"
        if r["quarantined_by_reason"]:
            q += " (" + ", ".join(f"{k} {v}" for k, v in r["quarantined_by_reason"].items()) + ")"
        common = (r.get("vs_reference") or {}).get("n_patients_common")
        cells = [f"`{r['site']}`", _shift_cell(r, record["training_ranges"]), f"{r['n_pos']} / {r['n_neg']}", q,
                 _cell(r["vertebra"], "auroc", percent=False), _cell(r["patient"], "sen"), _cell(r["patient"], "spe"),
                 _cell(r["patient"], "f1"), _cell(r["vertebra"], "bmd_r", percent=False), _diff(r, "f1"),
                 _diff(r, "sen"), "—" if common is None else str(common),
                 "—" if "f1" not in r["targets"] else _target(r["targets"]["f1"]), _target(r["targets"]["sen"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_header(record: Mapping[str, Any]) -> str:
    m, t = record["model"], record["targets"]
    shifts = [r for r in record["sites"] if r["site"] != REFERENCE]
    verdict = ("every shift meets both targets" if record["all_shifts_passed"] else
               f"{sum(not r['passed'] for r in shifts)} of {len(shifts)} shifts miss a target")
    return (f"Profile `{record['profile']}`; model `{m['uri']}` (version {m['version']}) at its stored threshold "
            f"{m['threshold']:.4f}; {record['n_patients_simulated']} patients of site {record['base_site']} simulated "
            f"per row (the SAME patients and DXA labels in every row: the shifted sites keep site "
            f"{record['base_site']}'s key), injected faults off. Reference = site {record['base_site']} re-simulated "
            "unshifted through this same path (ingestion with calibration, texture, the training table's pairing, "
            "the champion's pyfunc with each vertebra's DXA vendor), not the evaluate stage's numbers (other "
            "faults, other run). Δ = shift − reference on the patients both screened; 95 % paired patient-bootstrap "
            f"CI ({record['n_boot']} replicates). Targets (issue 11; point estimates, measured, not tuned): patient "
            f"F1 at most {t['max_f1_drop']:g} points below the reference, patient sensitivity ≥ "
            f"{t['min_sensitivity']:g} %. Metrics in %, AUROC / r unitless. **{verdict}**; wall time "
            f"{record['seconds'] / 60:.1f} min.")


def format_table(record: Mapping[str, Any]) -> str:
    """Text summary for the CLI: one line per site."""
    lines = [f"model {record['model']['uri']} (v{record['model']['version']}), threshold "
             f"{record['model']['threshold']:.4f}; {record['n_patients_simulated']} patients of site "
             f"{record['base_site']} per site, paired vs `reference`"]
    for r in record["sites"]:
        p = r["patient"]
        f = lambda k: "n/a" if p.get(k) is None else f"{p[k]:.1f}"  # noqa: E731
        tgt = ", ".join(f"{k.upper()} {_target(v).strip('*')}" for k, v in r["targets"].items())
        lines.append(f"  {r['site']:<18} pat {r['n_pos']:>3}/{r['n_neg']:<3} quarantined {r['studies_quarantined']:>3}"
                     f"/{r['studies']:<3} SEN {f('sen'):>5} SPE {f('spe'):>5} F1 {f('f1'):>5}  ΔF1 {_diff(r, 'f1'):<22}"
                     f" {tgt}")
    lines.append("all shifts pass" if record["all_shifts_passed"] else "NOT every shift passes")
    return "\n".join(lines)


def write_outputs(record: Mapping[str, Any], out_json: Path, out_md: Path | None) -> None:
    """``out_json`` (the record) and, when given, the markdown block of ``out_md``."""
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    if out_md is not None:
        from osteo_model.ablation import write_table
        write_table(Path(out_md), markdown_table(record), markdown_header(record), markers=MARKERS)


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``<site>.patient.f1``, ``<site>.f1_diff``, ``<site>.studies_quarantined``, ...: the MLflow metrics."""
    out: dict[str, float] = {"seconds": record["seconds"], "all_shifts_passed": float(record["all_shifts_passed"])}
    for r in record["sites"]:
        s = r["site"]
        out.update({f"{s}.patient.{k}": r["patient"].get(k) for k in PATIENT_KEYS})
        out.update({f"{s}.vertebra.{k}": r["vertebra"].get(k) for k in ("auroc", "bmd_r")})
        out.update({f"{s}.n_patients": r["n_patients"], f"{s}.n_pos": r["n_pos"], f"{s}.passed": float(r["passed"]),
                    f"{s}.studies_quarantined": r["studies_quarantined"], f"{s}.studies": r["studies"]})
        for k in PAIRED_KEYS:
            out[f"{s}.{k}_diff"] = ((r.get("vs_reference") or {}).get(k) or {}).get("diff")
    return {k: float(v) for k, v in out.items() if v is not None}


def log_run(record: Mapping[str, Any], tcfg: TrackingConfig, out_json: Path, enabled: bool = True) -> str | None:
    """One MLflow run ``robustness`` (experiment ``tracking.experiment``): metrics per site, the JSON; no identifier."""
    from osteo_model.tracking import Tracker

    tracker = Tracker(tcfg, enabled=enabled)
    params = {"base_site": record["base_site"], "n_patients": str(record["n_patients_simulated"]),
              "model_uri": record["model"]["uri"], "model_version": str(record["model"]["version"]),
              **{f"shift.{r['site']}": r["shift"] for r in record["sites"]}}
    with tracker.parent("robustness", {"method": "robustness", "profile": str(record["profile"])}, params) as run_id:
        tracker.log_metrics(scalar_metrics(record))
        tracker.log_artifact(Path(out_json), "robustness")
    return run_id
