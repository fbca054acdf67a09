"""Every plot of the platform, in one place (matplotlib, Agg backend; no identifiers in any title).

Training: loss curves, per-site confusion matrices, per-site ROC, texture-pool montage.
Evaluation: ROC per site, reliability diagram, confusion (patient level), subgroup sensitivity.
Ablation: one ROC per arm on the same test patients (paper Fig. 3).
Each function returns a figure; the callers save or log it (:mod:`osteo_model.tracking`,
:mod:`osteo_model.report`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from osteo_model import metrics as M
from osteo_model.evaluate import fmt


def _figure(n_panels: int, width: float = 3.2, height: float = 3.0, rows: int = 1):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = max(1, -(-n_panels // rows))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, axes.ravel()


def loss_curves_figure(history: Mapping[str, Sequence[tuple[int, Mapping[str, float]]]]):
    """One panel per stage: every ``loss*`` metric against the optimizer step."""
    fig, axes = _figure(max(1, len(history)), 4.0)
    for ax, (stage, rows) in zip(axes, history.items()):
        keys = sorted({k for _, m in rows for k in m if k.startswith("loss")})
        for k in keys:
            steps = [s for s, m in rows if k in m]
            ax.plot(steps, [m[k] for s, m in rows if k in m], label=k, lw=1)
        ax.set(title=stage, xlabel="step", ylabel="loss")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def confusion_figure(pred: pd.DataFrame, threshold: float, title: str):
    """Vertebra-level confusion matrix per site at ``threshold`` (positive = osteoporosis)."""
    from osteo_model import metrics as M
    sites = sorted(pred["site"].astype(str).unique())
    fig, axes = _figure(len(sites), 2.8, 2.8)
    for ax, site in zip(axes, sites):
        part = pred[pred["site"].astype(str) == site]
        c = M.confusion(part["y_true"].to_numpy(), part["score"].to_numpy() >= threshold)
        mat = np.array([[c.tn, c.fp], [c.fn, c.tp]])
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set(title=f"{title} site {site}", xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual")
    return fig


def roc_figure(pred: pd.DataFrame, title: str):
    """Vertebra-level ROC curve per site (sites with one class are skipped)."""
    from osteo_model import metrics as M
    fig, axes = _figure(1, 4.0, 4.0)
    ax = axes[0]
    for site in sorted(pred["site"].astype(str).unique()):
        part = pred[pred["site"].astype(str) == site]
        if part["y_true"].nunique() < 2:
            continue
        roc = M.roc_points(part["y_true"].to_numpy(), part["score"].to_numpy())
        ax.plot(roc["fpr"], roc["tpr"], label=f"site {site} AUROC {M.auroc(part['y_true'], part['score']):.2f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(title=title, xlabel="1 - specificity", ylabel="sensitivity")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def arms_roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "Patient-level ROC, test"):
    """Paper Fig. 3: one axes, one ROC curve per arm on the same test patients, AUROC in the legend.

    Args:
        curves: arm name -> (y_true 0/1, score) of the same patients (arm order = legend order);
            an arm whose labels hold one class is left out (no curve is defined).
    """
    from matplotlib.figure import Figure  # Figure without pyplot: no global backend state

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for arm, (y, score) in curves.items():
        y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
        if np.unique(y).size < 2:
            continue
        roc = M.roc_points(y, score)
        oracle = arm.startswith("oracle")
        ax.plot(roc["fpr"], roc["tpr"], lw=1.2, ls="--" if oracle else "-", color="black" if oracle else None,
                label=f"{arm} (AUROC {M.auroc(y, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)                 # chance (no label: not an arm)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    return fig


def pool_montage_figure(pools: Sequence[np.ndarray], channels: Sequence[str]):
    """Central axial slice of every pool member for a few vertebrae (titles carry no identifiers)."""
    fig, axes = _figure(len(pools) * len(channels), 1.8, 1.8, rows=len(pools))
    for r, pool in enumerate(pools):
        z = pool.shape[-1] // 2
        for c, name in enumerate(channels):
            ax = axes[r * len(channels) + c]
            ax.imshow(np.nan_to_num(pool[c, :, :, z]).T, cmap="gray", origin="lower")
            ax.set_title(f"vertebra {r + 1}: {name}", fontsize=6)
            ax.axis("off")
    return fig


def save_png(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def evaluation_plots(pred: pd.DataFrame, patients: pd.DataFrame, metrics: Mapping[str, Any], out: Path,
           n_bins: int) -> list[Path]:
    from matplotlib.figure import Figure  # Figure without pyplot: no global backend state

    sites, t = list(metrics["sites"]), float(metrics["threshold"])
    written = []
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for scope, frame in [(f"site_{s}", patients[patients["site"] == s]) for s in sites] + [("pooled", patients)]:
        if frame["y_true"].nunique() < 2:
            continue
        roc = M.roc_points(frame["y_true"], frame["score"])
        auc = (metrics.get(scope) or {}).get("patient", {}).get("auroc")
        ax.plot(roc["fpr"], roc["tpr"], lw=2 if scope == "pooled" else 1.2, label=f"{scope} (AUROC {fmt(auc)})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"Patient-level ROC (threshold {t:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, out / "roc.png")
    written.append(out / "roc.png")

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for scope, frame in [(f"site_{s}", pred[pred["site"] == s]) for s in sites] + [("pooled", pred)]:
        if frame.empty:
            continue
        b = M.reliability_bins(frame["y_true"], frame["score"], n_bins)
        b = b[b["n"] > 0]
        ax.plot(b["mean_score"], b["frac_pos"], marker="o", ms=3, lw=2 if scope == "pooled" else 1, label=scope)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="mean predicted score", ylabel="observed osteoporosis fraction", xlim=(0, 1), ylim=(0, 1),
           title="Reliability (vertebra level)")
    ax.legend(fontsize=8)
    save_png(fig, out / "reliability.png")
    written.append(out / "reliability.png")

    scopes_ = [(f"site_{s}", patients[patients["site"] == s]) for s in sites] + [("pooled", patients)]
    fig = Figure(figsize=(2.6 * len(scopes_), 2.8))
    for ax, (scope, frame) in zip(np.atleast_1d(fig.subplots(1, len(scopes_))), scopes_):
        c = M.confusion(frame["y_true"], frame["y_pred"])
        mat = np.array([[c.tn, c.fp], [c.fn, c.tp]])
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > mat.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["pred -", "pred +"], yticklabels=["true -", "true +"],
               title=scope)
    save_png(fig, out / "confusion.png")
    written.append(out / "confusion.png")
    return written
