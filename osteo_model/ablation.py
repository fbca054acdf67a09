"""The paper's comparison on the synthetic cohort: one table, same test patients, same evaluation code.

Arms (``ARMS``; name -> method of :mod:`osteo_model.experiment` + params overlay):

* representation: ``scratch`` < ``swav`` < ``tp_swav`` (paper 001 Table 2: F1 claimed to rise in this order);
* loss: ``tp_swav_class_only`` vs ``tp_swav`` (unified Eq. 4);
* gating: ``tp_swav_no_moe`` vs ``tp_swav`` (device-gated MoE);
* companions: ``selftrain`` (paper 002: pseudo-BMD self-training + adaptive triplet) and ``screening``
  (paper 003 heads, sensitivity-constrained threshold), both on the TP-SwAV encoder;
* baselines: ``l1_hu_110`` / ``l1_hu_160`` (fixed HU rules) and ``radiomics_lr``.

Every arm that starts from TP-SwAV reuses the encoder the first such arm pretrained
(pretraining does not depend on the fine-tuning overlays), which keeps the
comparison about the fine-tuning choice and saves CPU time. Each arm is one
MLflow run nested under an ``ablation`` parent run. The table (vertebra and
patient ACC/SEN/SPE/F1, AUROC, BMD Pearson r / MAE, with patient-bootstrap CIs,
per site A-D and pooled) replaces the block between the markers in ``out_md``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from osteo_config.experiment import ExperimentSpec
from osteo_model.experiment import run_training
from osteo_model.tracking import Tracker

ARMS: dict[str, tuple[str, dict[str, Any], str]] = {
    "scratch": ("scratch", {}, "no pretraining; MoE + unified loss"),
    "swav": ("swav", {}, "SwAV (crops of HU) pretraining; MoE + unified loss"),
    "tp_swav": ("tp_swav", {}, "TP-SwAV pretraining; MoE + unified loss (full model)"),
    "tp_swav_class_only": ("tp_swav", {"model": {"moe": {"class_only": True}}}, "TP-SwAV; MoE; class-only loss"),
    "tp_swav_no_moe": ("tp_swav", {"model": {"moe": {"use_moe": False}}}, "TP-SwAV; one expert, no device; unified"),
    "selftrain": ("selftrain", {}, "paper 002 on the TP-SwAV encoder: pseudo-BMD rounds + adaptive triplet"),
    "screening": ("screening", {}, "paper 003 on the TP-SwAV encoder: screening/severity/T-score heads"),
    "l1_hu_110": ("l1_hu", {"model": {"baselines": {"l1_hu_thresholds": [110]}}}, "L1 HU <= 110 (specific rule)"),
    "l1_hu_160": ("l1_hu", {"model": {"baselines": {"l1_hu_thresholds": [160]}}}, "L1 HU <= 160 (sensitive rule)"),
    "radiomics_lr": ("radiomics_lr", {}, "radiomics + logistic regression"),
}
TP_ENCODER_METHODS = ("tp_swav", "selftrain", "screening")
BEGIN, END = "<!-- ablation-table:begin -->", "<!-- ablation-table:end -->"
LEVEL_METRICS = ("acc", "sen", "spe", "f1")
SCOPES = ("site_A", "site_B", "site_C", "site_D", "pooled")


def tidy_metrics(arm: str, metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (arm, scope, level, metric) with value and CI bounds from an evaluate dict."""
    rows = []
    for scope in SCOPES:
        for level in ("vertebra", "patient"):
            m = (metrics.get(scope) or {}).get(level) or {}
            for k in (*LEVEL_METRICS, "auroc", "auprc", "bmd_r", "bmd_mae", "n", "n_patients"):
                if k in m:
                    rows.append({"arm": arm, "scope": scope, "level": level, "metric": k, "value": m.get(k),
                                 "lo": m.get(f"{k}_lo"), "hi": m.get(f"{k}_hi")})
    return pd.DataFrame(rows)


def _cell(t: pd.DataFrame, level: str, metric: str, digits: int) -> str:
    row = t[(t["level"] == level) & (t["metric"] == metric)]
    if row.empty or pd.isna(row["value"].iloc[0]):
        return "n/a"
    v, lo, hi = row[["value", "lo", "hi"]].iloc[0]
    text = f"{v:.{digits}f}"
    return text if pd.isna(lo) or pd.isna(hi) else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown_table(tidy: pd.DataFrame, arms: Sequence[str]) -> str:
    """Rows arm x scope; columns vertebra and patient ACC/SEN/SPE/F1 (%), AUROC, BMD r, BMD MAE; value [95% CI]."""
    head = (["arm", "scope", "n vert / pat"] + [f"V-{m.upper()}" for m in LEVEL_METRICS]
            + [f"P-{m.upper()}" for m in LEVEL_METRICS] + ["V-AUROC", "BMD r", "BMD MAE"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for scope in SCOPES:
            t = tidy[(tidy["arm"] == arm) & (tidy["scope"] == scope)]
            if t.empty:
                continue
            n = t[(t["metric"] == "n")]
            nv = n[n["level"] == "vertebra"]["value"]
            npat = n[n["level"] == "patient"]["value"]
            sizes = f"{int(nv.iloc[0]) if len(nv) else 0} / {int(npat.iloc[0]) if len(npat) else 0}"
            cells = ([arm, scope.replace("site_", ""), sizes]
                     + [_cell(t, "vertebra", m, 1) for m in LEVEL_METRICS]
                     + [_cell(t, "patient", m, 1) for m in LEVEL_METRICS]
                     + [_cell(t, "vertebra", "auroc", 3), _cell(t, "vertebra", "bmd_r", 2),
                        _cell(t, "vertebra", "bmd_mae", 3)])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(out_md: Path, table_md: str, header: str) -> None:
    """Replace the block between the markers of ``out_md`` (created with a title when missing)."""
    out_md = Path(out_md)
    text = out_md.read_text() if out_md.is_file() else "# Results\n\n"
    block = f"{BEGIN}\n{header}\n\n{table_md}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)


def run_ablation(base: ExperimentSpec, arm_specs: Mapping[str, ExperimentSpec], out_md: Path,
                 out_dir: Path = Path("models/ablation"), tracking: bool = True) -> pd.DataFrame:
    """Run the arms, evaluate them on the same test patients and write one table to ``out_md``.

    Args:
        base: the configuration every arm starts from (its params are logged on the ``ablation`` parent).
        arm_specs: arm name of :data:`ARMS` -> that arm's configuration (the base with the arm's
            overlay applied at the configuration edge, :meth:`osteo_config.Config.override`), in table order.
        out_md: markdown file whose ablation block is replaced (e.g. ``docs/results.md``).
        out_dir: per-arm outputs (``<out_dir>/<arm>/``).
        tracking: log one MLflow run per arm under an ``ablation`` parent.

    Returns:
        The tidy metrics frame (arm, scope, level, metric, value, lo, hi) plus a ``seconds`` row per arm.
    """
    arms = list(arm_specs)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown ablation arms {unknown}: choose from {list(ARMS)}")
    tracker = Tracker(base.tracking, enabled=tracking)
    frames, encoders, timing = [], {}, {}
    with tracker.parent("ablation", {"method": "ablation", "profile": base.profile}, base.run_params):
        for arm in arms:
            method = ARMS[arm][0]
            init = encoders.get("tp_swav") if method in TP_ENCODER_METHODS else None
            t0 = time.perf_counter()
            res = run_training(arm_specs[arm], method, tracking=tracking, out_dir=Path(out_dir) / arm,
                               init_encoder=init, run_name=arm)
            timing[arm] = time.perf_counter() - t0
            if method in TP_ENCODER_METHODS and init is None and res.encoder_path is not None:
                encoders["tp_swav"] = res.encoder_path
            frames.append(tidy_metrics(arm, res.metrics["test"]))
            tracker.log_metrics({f"{arm}.test.pooled.patient.f1": (res.metrics["test"].get("pooled") or {})
                                 .get("patient", {}).get("f1") or float("nan"), f"{arm}.seconds": timing[arm]})
    tidy = pd.concat(frames, ignore_index=True)
    tidy = pd.concat([tidy, pd.DataFrame([{"arm": a, "scope": "all", "level": "run", "metric": "seconds",
                                           "value": s} for a, s in timing.items()])], ignore_index=True)
    header = (f"Profile `{base.profile}`; test split (site D external); threshold chosen on validation "
              "(learned arms) or fixed (HU rules); metrics in %, AUROC/r unitless, MAE g/cm2; "
              "[95% patient-bootstrap CI]. Arms: " + "; ".join(f"`{a}` = {ARMS[a][2]}" for a in arms) + ".")
    write_table(out_md, markdown_table(tidy, arms), header)
    return tidy
