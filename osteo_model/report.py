"""Report rendering: the evaluation as text (one-screen site table), HTML and the files the DVC stage keeps.

Pure metrics live in :mod:`osteo_model.evaluate`; every plot in :mod:`osteo_model.figures`.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from osteo_model import metrics as M
from osteo_model.evaluate import LEVELS, SITE_TABLE_KEYS, check_frame, clean_json, fmt
from osteo_model.figures import evaluation_plots


def format_site_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text of :func:`site_table` rows (ACC/SEN/SPE/F1 in percent with CIs; AUROC 0-1)."""
    has_comp = any("f1_diff" in r for r in rows)
    head = f"{'scope':<10} {'patients':>8} {'pos':>4}  " + "  ".join(f"{k.upper():<20}" for k in SITE_TABLE_KEYS)
    lines = [head + ("  dF1 vs champion (p_perm)" if has_comp else "")]
    for r in rows:
        cells = [fmt(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"), k in M.BINARY_KEYS) for k in SITE_TABLE_KEYS]
        line = (f"{r['scope'] + ('*' if r.get('external') else ''):<10} {r.get('n_patients') or 0:>8} "
                f"{r.get('n_pos') or 0:>4}  " + "  ".join(f"{c:<20}" for c in cells))
        if has_comp:
            line += f"  {fmt(r.get('f1_diff'), percent=True)} ({fmt(r.get('f1_p_perm'))})" if "f1_diff" in r else "  -"
        lines.append(line.rstrip())
    lines.append("* external site (never trained on); n/a = undefined (e.g. no positive patient)")
    return "\n".join(lines)


_HEADLINE = ("n_patients", "n", "n_pos", "acc", "sen", "spe", "f1", "auroc", "auprc", "bmd_r", "bmd_mae",
             "cal_slope", "cal_intercept", "ece", "brier")


def metrics_table(metrics: Mapping[str, Any], level: str) -> pd.DataFrame:
    """Human-readable table (rows: scopes; cells: value [CI]) of one level of a metrics dict."""
    rows = []
    for scope in [f"site_{s}" for s in metrics["sites"]] + ["internal", "external", "pooled"]:
        m = (metrics.get(scope) or {}).get(level) or {}
        rows.append({"scope": scope, **{k: fmt(m.get(k), m.get(f"{k}_lo"), m.get(f"{k}_hi"), k in M.BINARY_KEYS)
                                        for k in _HEADLINE if k in m}})
    return pd.DataFrame(rows)


def _html(metrics: Mapping[str, Any], images: Mapping[str, Path]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>osteo evaluation</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}h2{margin-top:1.5em}",
             "</style></head><body><h1>Model evaluation</h1>",
             f"<p>Operating threshold {metrics['threshold']:.4f} (stored with the model, not tuned on test data); "
             f"{metrics['n_boot']} patient-level bootstrap replicates stratified by site, "
             f"{100 * metrics['ci_level']:.0f}% percentile intervals. ACC/SEN/SPE/F1 in percent. "
             "Patient positive if any vertebra is positive (truth and prediction).</p>"]
    if metrics.get("missing_sites"):
        parts.append(f"<p><b>Sites without predictions: {html.escape(str(metrics['missing_sites']))}</b></p>")
    for level in LEVELS:
        parts.append(f"<h2>{level.capitalize()} level</h2>" + metrics_table(metrics, level).to_html(index=False))
    for attr, groups in (metrics.get("subgroups") or {}).items():
        frame = pd.DataFrame([{"value": k, **{c: fmt(x, percent=c in M.BINARY_KEYS) for c, x in v.items()}}
                              for k, v in groups.items()])
        parts.append(f"<h2>Subgroups: {html.escape(attr)} (patient level, all sites)</h2>" + frame.to_html(index=False))
    comp = metrics.get("vs_champion")
    if comp:
        rows = []
        for scope, block in comp.items():
            if not isinstance(block, Mapping) or not block.get("patient"):
                continue
            for k, v in block["patient"].items():
                rows.append({"scope": scope, "metric": k, **{c: fmt(x) for c, x in v.items()}})
        parts.append(f"<h2>Paired comparison vs champion ({comp['n_patients_common']} common patients)</h2>"
                     + pd.DataFrame(rows).fillna("").to_html(index=False))
    for name, block in (metrics.get("baselines") or {}).items():
        parts.append(f"<h2>Baseline: {html.escape(name)} (patient level)</h2>"
                     + metrics_table({**block, "sites": metrics["sites"]}, "patient").to_html(index=False))
    for title, path in images.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Raw metrics</h2><pre>" + html.escape(json.dumps(metrics, indent=1)) + "</pre></body></html>")
    return "\n".join(parts)


def write_evaluation(metrics: Mapping[str, Any], pred: pd.DataFrame, out_dir: str | Path,
                     reliability_bins: int = 10, plots_dir: str | Path | None = None) -> list[Path]:
    """Write the evaluation files and return their paths.

    Files under ``out_dir``: ``metrics.json`` (the full metrics dict), ``plots/roc_patient_<scope>.csv``
    (fpr, tpr, threshold), ``plots/reliability_vertebra_pooled.csv``, ``plots/confusion_patient.csv``
    (site, actual, predicted; DVC confusion template), ``roc.png``, ``reliability.png``,
    ``confusion.png`` and ``report.html`` (self-contained, plots embedded as base64).

    Args:
        metrics: the dict returned by :func:`evaluate_predictions` for ``pred``.
        pred: the same predictions (vertebra rows).
        out_dir: output folder (created).
        reliability_bins: bins of the reliability files (use ``cfg.reliability_bins``).
        plots_dir: folder of the CSV plot data instead of ``out_dir/plots`` (the DVC stage keeps
            them under ``<paths.metrics>/plots``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = Path(plots_dir) if plots_dir is not None else out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pred = check_frame(pred, "pred")
    patients = M.patient_table(pred, float(metrics["threshold"]))
    written: list[Path] = []
    (out / "metrics.json").write_text(json.dumps(clean_json(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
    written.append(out / "metrics.json")
    for s in list(metrics["sites"]) + ["pooled"]:
        frame = patients if s == "pooled" else patients[patients["site"] == s]
        scope = "pooled" if s == "pooled" else f"site_{s}"
        if frame["y_true"].nunique() < 2:
            continue
        roc = M.roc_points(frame["y_true"], frame["score"])
        roc["threshold"] = roc["threshold"].clip(upper=1.0)          # inf start point -> 1.0 (CSV-friendly)
        roc[["fpr", "tpr", "threshold"]].to_csv(plots / f"roc_patient_{scope}.csv", index=False)
        written.append(plots / f"roc_patient_{scope}.csv")
    rel = M.reliability_bins(pred["y_true"], pred["score"], reliability_bins)
    rel[rel["n"] > 0].to_csv(plots / "reliability_vertebra_pooled.csv", index=False)
    written.append(plots / "reliability_vertebra_pooled.csv")
    conf = pd.DataFrame({"site": patients["site"], "actual": patients["y_true"], "predicted": patients["y_pred"]})
    conf.to_csv(plots / "confusion_patient.csv", index=False)
    written.append(plots / "confusion_patient.csv")
    images = evaluation_plots(pred, patients, metrics, out, reliability_bins)
    written.extend(images)
    titles = {"roc.png": "ROC per site (patient level)", "reliability.png": "Reliability diagram",
              "confusion.png": "Confusion matrices (patient level)"}
    (out / "report.html").write_text(_html(metrics, {titles[p.name]: p for p in images}))
    written.append(out / "report.html")
    return written
