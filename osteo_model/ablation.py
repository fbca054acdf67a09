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
comparison about the fine-tuning choice and saves CPU time (one encoder per seed). Each arm
and seed is one MLflow run nested under an ``ablation`` parent run. The block between the
markers in ``out_md`` holds:

* the table (vertebra and patient ACC/SEN/SPE/F1, AUROC, BMD Pearson r / MAE per site A-D and
  pooled): with one seed each cell is ``value [95% patient-bootstrap CI]``, with several seeds
  ``mean ± SD over seeds`` (:func:`seed_summary`);
* the paired differences of every arm against a reference arm on the same test patients
  (:func:`paired_arm_differences`: patient-bootstrap 95 % CI and the permutation ``p_perm``);
* the multi-arm ROC figure (paper Fig. 3, :func:`osteo_model.figures.arms_roc_figure`);
* with the simulator truth, the ``oracle (simulator truth)`` row (:mod:`osteo_model.oracle`): the
  physical ceiling every number reads against.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from osteo_config.evaluate import EvaluateConfig
from osteo_config.experiment import ExperimentSpec
from osteo_model import figures
from osteo_model import metrics as M
from osteo_model.experiment import run_training
from osteo_model.oracle import ORACLE_ARM
from osteo_model.tracking import Tracker

ARMS: dict[str, tuple[str, dict[str, Any], str]] = {
    "scratch": ("scratch", {}, "no pretraining; MoE + unified loss"),
    "swav": ("swav", {}, "SwAV (crops of HU) pretraining; MoE + unified loss"),
    "tp_swav": ("tp_swav", {}, "TP-SwAV pretraining; MoE + unified loss (full model)"),
    "tp_swav_class_only": ("tp_swav", {"model": {"moe": {"class_only": True}}}, "TP-SwAV; MoE; class-only loss"),
    "tp_swav_no_moe": ("tp_swav", {"model": {"moe": {"use_moe": False}}}, "TP-SwAV; one expert, no device; unified"),
    "tp_swav_no_descriptors": ("tp_swav", {"model": {"moe": {"descriptors": [], "wide": False}}},
                               "TP-SwAV; MoE + unified; image only (no size / shell / AP-projection descriptors)"),
    "tp_swav_no_wide": ("tp_swav", {"model": {"moe": {"wide": False}}},
                        "TP-SwAV; MoE + unified + descriptors; no wide (closed-form linear) path"),
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
    """Rows arm x scope; columns vertebra and patient ACC/SEN/SPE/F1 (%), V/P-AUROC, BMD r, BMD MAE; value [95% CI]."""
    head = (["arm", "scope", "n vert / pat"] + [f"V-{m.upper()}" for m in LEVEL_METRICS]
            + [f"P-{m.upper()}" for m in LEVEL_METRICS] + ["V-AUROC", "P-AUROC", "BMD r", "BMD MAE"])
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
                     + [_cell(t, "vertebra", "auroc", 3), _cell(t, "patient", "auroc", 3), _cell(t, "vertebra", "bmd_r", 2),
                        _cell(t, "vertebra", "bmd_mae", 3)])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(out_md: Path, table_md: str, header: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace the block between ``markers`` (the ablation's by default) of ``out_md`` (created with a title
    when missing; the block is appended when the markers are not there yet)."""
    out_md = Path(out_md)
    begin, end = markers
    text = out_md.read_text() if out_md.is_file() else "# Results\n\n"
    block = f"{begin}\n{header}\n\n{table_md}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)


def _specs(arm_specs: Mapping[str, ExperimentSpec | Sequence[ExperimentSpec]]) -> dict[str, list[ExperimentSpec]]:
    out = {a: [v] if isinstance(v, ExperimentSpec) else list(v) for a, v in arm_specs.items()}
    counts = {len(v) for v in out.values()}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"every arm needs the same number (>= 1) of seed specs; got "
                         f"{ {a: len(v) for a, v in out.items()} }")
    return out


def seed_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over seeds per (arm, scope, level, metric): columns ``mean``, ``sd`` (ddof 1), ``n_seeds``.

    A metric undefined in some seed (NaN) is averaged over the seeds that define it; ``n_seeds`` says how many.
    """
    vals = tidy[tidy["metric"] != "seconds"].astype({"value": "float64"})
    g = vals.groupby(["arm", "scope", "level", "metric"], sort=False)["value"]
    return g.agg(mean="mean", sd="std", n_seeds="count").reset_index()


def _seed_cell(summary: pd.DataFrame, level: str, metric: str, digits: int) -> str:
    row = summary[(summary["level"] == level) & (summary["metric"] == metric)]
    if row.empty or pd.isna(row["mean"].iloc[0]):
        return "n/a"
    m, sd = row["mean"].iloc[0], row["sd"].iloc[0]
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if pd.notna(sd) else f"{m:.{digits}f}"


def seeds_table(summary: pd.DataFrame, arms: Sequence[str]) -> str:
    """:func:`markdown_table`'s layout with ``mean ± SD over seeds`` cells (the per-seed CIs are in MLflow)."""
    head = (["arm", "scope", "seeds", "n vert / pat"] + [f"V-{m.upper()}" for m in LEVEL_METRICS]
            + [f"P-{m.upper()}" for m in LEVEL_METRICS] + ["V-AUROC", "P-AUROC", "BMD r", "BMD MAE"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for scope in SCOPES:
            t = summary[(summary["arm"] == arm) & (summary["scope"] == scope)]
            if t.empty:
                continue
            n = t[t["metric"] == "n"].set_index("level")["mean"]
            sizes = f"{int(n.get('vertebra', 0))} / {int(n.get('patient', 0))}"
            seeds = int(t["n_seeds"].max())
            cells = ([arm, scope.replace("site_", ""), str(seeds), sizes]
                     + [_seed_cell(t, "vertebra", m, 1) for m in LEVEL_METRICS]
                     + [_seed_cell(t, "patient", m, 1) for m in LEVEL_METRICS]
                     + [_seed_cell(t, "vertebra", "auroc", 3), _seed_cell(t, "patient", "auroc", 3),
                        _seed_cell(t, "vertebra", "bmd_r", 2), _seed_cell(t, "vertebra", "bmd_mae", 3)])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _patients(pred: pd.DataFrame, threshold: float) -> pd.DataFrame:
    test = pred[pred["split"] == "test"] if "split" in pred.columns else pred
    return M.patient_table(test, threshold)[["patient_id", "site", "y_true", "score", "y_pred"]]


def _stacked(arm: Sequence[pd.DataFrame], ref: Sequence[pd.DataFrame], scope: str) -> pd.DataFrame:
    """(patient, seed) rows of both arms on the patients both scored, outputs ranked within (arm, seed, scope)."""
    parts = []
    for k, (a, b) in enumerate(zip(arm, ref)):
        f = a.merge(b[["patient_id", "y_true", "score", "y_pred"]], on="patient_id", suffixes=("", "_ref"))
        if (f["y_true"] != f["y_true_ref"]).any():
            raise ValueError("two arms disagree on y_true for some test patients: run them on the same test table")
        if scope != "pooled":
            f = f[f["site"].astype(str) == scope.removeprefix("site_")]
        parts.append(f.assign(seed_index=k, rank=M.rank01(f["score"]), rank_ref=M.rank01(f["score_ref"])))
    return pd.concat(parts, ignore_index=True)


def paired_arm_differences(patients: Mapping[str, Sequence[pd.DataFrame]], reference: str,
                           cfg: EvaluateConfig, metrics: Sequence[str] = ("f1", "auroc"),
                           scopes: Sequence[str] = SCOPES) -> pd.DataFrame:
    """Each arm minus ``reference`` on the same test patients: difference, 95 % paired-bootstrap CI, ``p_perm``.

    Pooling over seeds ("per seed, then averaged"): seed k of an arm is paired with seed k of the
    reference; a replicate's statistic is the mean over seeds of the per-seed patient-level metric
    (so the point difference is the difference of the seed means in the table). The bootstrap
    resamples patients within site, a patient bringing all of its seeds; the permutation test
    swaps the two arms' outputs (decisions at their own thresholds, score ranks) for a random half
    of the patients, all seeds together (:func:`osteo_model.evaluate.paired_comparison`).

    Args:
        patients: arm -> one patient table per seed (``patient_id``, ``site``, ``y_true``, ``score``, ``y_pred``).
        reference: the arm the others are compared with.
        cfg: ``evaluate:`` (``n_boot``, ``n_perm``, ``seed``, ``ci_level``, ``min_defined_share``).

    Returns:
        One row per (arm, scope, metric): ``diff``, ``lo``, ``hi``, ``n_undefined``, ``p_perm``, ``n_patients``.
    """
    keys = tuple(k for k in metrics if k in M.RANK_METRICS)
    rows = []
    for arm, tables in patients.items():
        if arm == reference:
            continue
        for scope in scopes:
            f = _stacked(tables, patients[reference], scope)
            if f.empty:
                continue
            y, seeds = f["y_true"].to_numpy(dtype=np.int64), f["seed_index"].to_numpy()
            out_a = f[["rank", "y_pred"]].to_numpy(dtype=np.float64)                 # (rows, 2)
            out_b = f[["rank_ref", "y_pred_ref"]].to_numpy(dtype=np.float64)

            def stat(out: np.ndarray, idx: np.ndarray | None = None) -> dict[str, float]:
                i = np.arange(len(y)) if idx is None else idx
                per_seed = [M.decision_metrics(y[i][seeds[i] == s], out[i][seeds[i] == s, 0],
                                               out[i][seeds[i] == s, 1]) for s in np.unique(seeds[i])]
                return {k: float(np.mean([m[k] for m in per_seed])) for k in keys}

            pid, site = f["patient_id"].to_numpy(), f["site"].astype(str).to_numpy()
            boot = M.paired_bootstrap(pid, site, lambda i: stat(out_a, i), lambda i: stat(out_b, i),
                                      cfg.n_boot, cfg.seed, cfg.ci_level, cfg.min_defined_share)
            perm = M.paired_permutation(pid, stat, out_a, out_b, cfg.n_perm, cfg.seed)
            for k in keys:
                rows.append({"arm": arm, "reference": reference, "scope": scope, "metric": k, **boot[k],
                             "p_perm": perm[k]["p_perm"], "n_patients": int(f["patient_id"].nunique())})
    return pd.DataFrame(rows)


def differences_table(diffs: pd.DataFrame) -> str:
    """Markdown: arm - reference per scope, patient-level F1 (points of %) and AUROC: diff [95% CI], p_perm."""
    metrics = list(dict.fromkeys(diffs["metric"])) if len(diffs) else []
    head = ["arm - reference", "scope", "patients"] + [f"Δ P-{m.upper()} [95% CI]" for m in metrics] \
        + [f"p_perm {m.upper()}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (arm, scope), g in diffs.groupby(["arm", "scope"], sort=False):
        d = g.set_index("metric")
        cells = [f"{arm} - {d['reference'].iloc[0]}", scope.replace("site_", ""), str(int(d["n_patients"].iloc[0]))]
        for m in metrics:
            digits = 1 if m in M.BINARY_KEYS else 3
            v, lo, hi = (d.loc[m, c] if m in d.index else np.nan for c in ("diff", "lo", "hi"))
            cells.append("n/a" if pd.isna(v) else f"{v:+.{digits}f}" + ("" if pd.isna(lo) or pd.isna(hi)
                                                                      else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"))
        cells += ["n/a" if m not in d.index or pd.isna(d.loc[m, "p_perm"]) else f"{d.loc[m, 'p_perm']:.3f}"
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(base: ExperimentSpec, arm_specs: Mapping[str, ExperimentSpec | Sequence[ExperimentSpec]],
                 out_md: Path, out_dir: Path = Path("models/ablation"), tracking: bool = True,
                 truth: pd.DataFrame | None = None, reference: str | None = None) -> pd.DataFrame:
    """Run the arms (each with one or more seeds), evaluate them on the same test patients, write one table block.

    Args:
        base: the configuration every arm starts from (its params are logged on the ``ablation`` parent;
            its ``evaluate`` section sets the bootstrap / permutation of the paired differences).
        arm_specs: arm name of :data:`ARMS` -> that arm's configuration (the base with the arm's overlay
            applied at the configuration edge, :meth:`osteo_config.Config.override`), or one configuration
            per seed (same count for every arm: seed offsets applied at the edge, ``train.seed``), in table order.
        out_md: markdown file whose ablation block is replaced (e.g. ``docs/results.md``); the ROC figure
            goes to ``<out_md folder>/figures/ablation_roc.png``.
        out_dir: per-arm outputs (``<out_dir>/<arm>/``, ``<out_dir>/<arm>/seed_<seed>/`` with several seeds).
        tracking: log one MLflow run per arm and seed under an ``ablation`` parent (the figure, the seed
            means / SDs and the paired differences on the parent).
        truth: the simulator truth keyed by pseudonymous ``patient_id`` (:mod:`osteo_model.oracle`): adds
            the ``oracle (simulator truth)`` row and ROC curve; None leaves them out.
        reference: the arm the paired differences are taken against (default ``tp_swav`` when it runs,
            else the first arm).

    Returns:
        The tidy per-seed metrics frame (arm, seed, scope, level, metric, value, lo, hi) plus a ``seconds``
        row per arm and seed and, with ``truth``, the oracle rows (seed NaN).
    """
    specs = _specs(arm_specs)
    arms = list(specs)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown ablation arms {unknown}: choose from {list(ARMS)}")
    reference = reference or ("tp_swav" if "tp_swav" in arms else arms[0])
    if reference not in arms:
        raise ValueError(f"reference arm {reference!r} is not among the arms run {arms}")
    n_seeds = len(next(iter(specs.values())))
    tracker = Tracker(base.tracking, enabled=tracking)
    frames, timing, rows_seconds = [], {}, []
    patients: dict[str, list[pd.DataFrame]] = {a: [] for a in arms}
    test_rows: pd.DataFrame | None = None
    with tracker.parent("ablation", {"method": "ablation", "profile": base.profile, "seeds": str(n_seeds)},
                        base.run_params):
        for k in range(n_seeds):
            encoder: Path | None = None                  # one TP-SwAV encoder per seed, shared by its arms
            for arm in arms:
                spec, method = specs[arm][k], ARMS[arm][0]
                init = encoder if method in TP_ENCODER_METHODS else None
                folder = Path(out_dir) / arm / (f"seed_{spec.seed}" if n_seeds > 1 else "")
                t0 = time.perf_counter()
                res = run_training(spec, method, tracking=tracking, out_dir=folder, init_encoder=init,
                                   run_name=arm if n_seeds == 1 else f"{arm} seed {spec.seed}")
                seconds = time.perf_counter() - t0
                if method in TP_ENCODER_METHODS and init is None and res.encoder_path is not None:
                    encoder = res.encoder_path
                frames.append(tidy_metrics(arm, res.metrics["test"]).assign(seed=spec.seed))
                rows_seconds.append({"arm": arm, "seed": spec.seed, "scope": "all", "level": "run",
                                     "metric": "seconds", "value": seconds})
                timing[arm] = timing.get(arm, 0.0) + seconds
                patients[arm].append(_patients(res.predictions, res.threshold))
                if test_rows is None:
                    test_rows = res.predictions[res.predictions["split"] == "test"]
        tidy = pd.concat(frames + [pd.DataFrame(rows_seconds)], ignore_index=True)
        diffs = paired_arm_differences(patients, reference, base.evaluate)
        curves = {a: _mean_curve(patients[a]) for a in arms}
        if truth is not None and test_rows is not None:
            from osteo_model.oracle import oracle_scores, oracle_tidy
            tidy = pd.concat([tidy, oracle_tidy(truth, test_rows, SCOPES)], ignore_index=True)
            _, op = oracle_scores(truth, test_rows)
            curves[ORACLE_ARM] = (op["y_true"].to_numpy(), -op["true_abmd_l1l4"].to_numpy())
        fig_path = Path(out_md).parent / "figures" / "ablation_roc.png"
        fig_path.parent.mkdir(parents=True, exist_ok=True)
        fig = figures.arms_roc_figure(curves, "Patient-level ROC, test (score: mean over seeds)"
                                      if n_seeds > 1 else "Patient-level ROC, test")
        figures.save_png(fig, fig_path)
        tracker.log_artifact(fig_path, "plots")
        summary = seed_summary(tidy)
        tracker.log_metrics(_summary_scalars(summary, diffs, timing))
    shown = arms + ([ORACLE_ARM] if truth is not None else [])
    header = (f"Profile `{base.profile}`; test split (site D external); {n_seeds} seed(s) per arm (`train.seed` "
              f"offsets); threshold chosen on validation (learned arms) or fixed (HU rules); metrics in %, "
              "AUROC/r unitless, MAE g/cm2; " + ("mean ± SD over seeds" if n_seeds > 1 else
                                                 "[95% patient-bootstrap CI]")
              + ". Arms: " + "; ".join(f"`{a}` = {ARMS[a][2]}" for a in arms) + ".")
    table = seeds_table(summary, shown) if n_seeds > 1 else markdown_table(tidy, shown)
    rel = fig_path.relative_to(Path(out_md).parent).as_posix()
    body = (f"{table}\n\nPaired differences vs `{reference}` on the same test patients (patient level; "
            f"{base.evaluate.n_boot} patient-bootstrap replicates within site, {base.evaluate.n_perm} "
            f"within-patient permutations; seeds paired by index, metric averaged over seeds):\n\n"
            f"{differences_table(diffs)}\n\n![ROC per arm, same test patients]({rel})")
    write_table(out_md, body, header)
    return tidy


def _mean_curve(tables: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, per-patient mean score over seeds) on the patients every seed scored."""
    merged = pd.concat(tables).groupby("patient_id").agg(y=("y_true", "max"), s=("score", "mean"),
                                                         n=("score", "size"))
    merged = merged[merged["n"] == len(tables)]
    return merged["y"].to_numpy(), merged["s"].to_numpy()


def _summary_scalars(summary: pd.DataFrame, diffs: pd.DataFrame, timing: Mapping[str, float]) -> dict[str, float]:
    """MLflow metrics of the ablation parent: per arm mean/SD of the headline metrics, paired differences."""
    out: dict[str, float] = {f"{a}.seconds": s for a, s in timing.items()}
    head = summary[summary["metric"].isin(("f1", "sen", "spe", "auroc"))]
    for r in head.itertuples():
        base = f"{r.arm.split(' ')[0]}.test.{r.scope}.{r.level}.{r.metric}"
        out[f"{base}.mean"] = r.mean
        if pd.notna(r.sd):
            out[f"{base}.sd"] = r.sd
    for r in diffs.itertuples():
        base = f"{r.arm}_minus_{r.reference}.test.{r.scope}.patient.{r.metric}"
        out.update({f"{base}.diff": r.diff, f"{base}.lo": r.lo, f"{base}.hi": r.hi, f"{base}.p_perm": r.p_perm})
    return {k: float(v) for k, v in out.items() if v is not None and pd.notna(v)}
