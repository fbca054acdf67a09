"""Calibration report: does the simulated cohort behave like the literature?

Reads the raw export (dxa.csv, ct_studies.csv, patients.csv) and the truth
(truth.parquet: the simulator's measured L1 core HU per study) and writes PNG
plots and a markdown table with:

* Pearson r of L1 trabecular HU vs the DXA L1-L4 (and L1) T-score;
* the L1-HU <= 160 / <= 110 rule sensitivity / specificity for DXA
  osteoporosis (lowest T-score of L1..L4 and L1-L4 <= -2.5, as in Pickhardt 2013);
* per-site vertebra-level osteoporosis prevalence vs the paper-implied targets;
* vendor shift: a sample of patients re-measured with every vendor's physics.

Only first CTs, fault-free studies and CT/DXA pairs inside the window are used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.config import CohortConfig
from cohort.dxa import device_reading, t_score, who_class

PREVALENCE_TARGETS = {"A": 0.39, "B": 0.17, "C": 0.16, "D": 0.44}
LITERATURE = {"r": (0.5, 0.7), "sens_160": 0.9, "spec_110": 0.9}


def calibration_table(raw_dir: Path, truth_dir: Path, cfg: CohortConfig) -> dict:
    """Compute the calibration figures (pure pandas; no plotting)."""
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    dxa = pd.read_csv(raw_dir / "dxa.csv", dtype={"mrn": str}).drop_duplicates()
    first_exam = dxa.groupby("mrn")["accession_number"].transform("min")
    dxa = dxa[dxa["accession_number"] == first_exam]
    truth = pd.read_parquet(truth_dir / "truth.parquet")
    truth["mrn"] = truth["mrn"].astype(str)
    levels = dxa[dxa.region.isin(["L1", "L2", "L3", "L4"])]
    prev = levels.groupby("site")["t_score"].apply(lambda t: float((t <= -2.5).mean())).to_dict()
    wide = dxa.pivot_table(index="mrn", columns="region", values="t_score", aggfunc="first")
    l1 = truth[(truth.level == 13) & truth.ct_hu_core.notna() & (truth.ct_fault == "")]
    l1 = l1[l1.dxa_in_window].set_index("mrn")
    df = l1[["site", "ct_hu_core"]].join(wide, how="inner")
    df["t_min"] = df[["L1", "L2", "L3", "L4", "L1-L4"]].min(axis=1)
    op = df["t_min"] <= -2.5
    hu = df["ct_hu_core"]

    def rate(mask, cond):
        return float(cond[mask].mean()) if mask.any() else float("nan")

    out = {
        "n_pairs": int(len(df)), "n_osteoporosis": int(op.sum()),
        "r_hu_t_l1l4": float(np.corrcoef(hu, df["L1-L4"])[0, 1]) if len(df) > 2 else float("nan"),
        "r_hu_t_l1": float(np.corrcoef(hu, df["L1"])[0, 1]) if len(df) > 2 else float("nan"),
        "sens_160": rate(op, hu <= 160), "spec_160": rate(~op, hu > 160),
        "sens_110": rate(op, hu <= 110), "spec_110": rate(~op, hu > 110),
        "prevalence": {s: round(v, 3) for s, v in sorted(prev.items())},
        "prevalence_target": {s: PREVALENCE_TARGETS.get(s) for s in sorted(prev)},
        "l1_hu_mean_by_site": {s: round(float(g.mean()), 1) for s, g in df.groupby("site")["ct_hu_core"]},
    }
    out["vendor_shift"] = vendor_shift(truth, cfg)
    out["_pairs"] = df
    return out


def vendor_shift(truth: pd.DataFrame, cfg: CohortConfig, n: int = 200, seed: int = 0) -> dict:
    """Re-measure a sample of patients' true L1-L4 with every vendor's physics.

    Returns the WHO class distribution per vendor and the share of patients
    whose class differs between at least two vendors.
    """
    t = truth[truth.level.between(13, 16)].groupby("mrn")[["true_bmc_g", "true_area_cm2"]].sum()
    t = t.sample(min(n, len(t)), random_state=seed)
    rng = np.random.default_rng(seed)
    true = (t.true_bmc_g / t.true_area_cm2).to_numpy()
    classes = {}
    for key, dev in cfg.dxa_devices.items():
        bmd = device_reading(true, dev) * (1 + dev.precision_cv * rng.standard_normal(len(true)))
        classes[dev.vendor] = np.array([who_class(t_score(b, "L1-L4", dev)) for b in bmd])
    mat = np.stack(list(classes.values()))
    return {
        "n": int(len(true)),
        "osteoporosis_share": {v: round(float((c == 2).mean()), 3) for v, c in classes.items()},
        "class_disagreement": round(float((mat.min(0) != mat.max(0)).mean()), 3),
    }


def write_report(raw_dir: Path, truth_dir: Path, out_dir: Path, cfg: CohortConfig) -> dict:
    """Write ``calibration.md``, ``calibration.json`` and ``cohort_*.png`` into ``out_dir``.

    Returns:
        The calibration figures (JSON-serialisable).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = calibration_table(raw_dir, truth_dir, cfg)
    df = res.pop("_pairs")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for site, g in df.groupby("site"):
        ax.scatter(g["L1-L4"], g["ct_hu_core"], s=10, label=f"site {site}", alpha=0.7)
    ax.axhline(160, ls="--", c="k", lw=0.8)
    ax.axhline(110, ls=":", c="k", lw=0.8)
    ax.axvline(-2.5, ls="-", c="r", lw=0.8)
    ax.set_xlabel("DXA L1-L4 T-score (vendor reference)")
    ax.set_ylabel("L1 trabecular HU (simulated CT)")
    ax.set_title(f"r = {res['r_hu_t_l1l4']:.2f}, n = {res['n_pairs']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "cohort_hu_vs_tscore.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sites = sorted(res["prevalence"])
    x = np.arange(len(sites))
    ax.bar(x - 0.2, [res["prevalence"][s] for s in sites], 0.4, label="simulated")
    ax.bar(x + 0.2, [res["prevalence_target"][s] or 0 for s in sites], 0.4, label="target (paper)")
    ax.set_xticks(x, sites)
    ax.set_ylabel("vertebra-level osteoporosis")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "cohort_prevalence.png", dpi=110)
    plt.close(fig)
    (out_dir / "calibration.md").write_text(markdown_table(res))
    (out_dir / "calibration.json").write_text(json.dumps(res, indent=2))
    return res


def markdown_table(res: dict) -> str:
    """The calibration figures as a markdown table (measured vs literature/targets)."""
    f = lambda v: "n/a" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    lines = ["| figure | simulated | target |", "|---|---|---|",
             f"| CT/DXA pairs (first CT, in window, no fault) | {res['n_pairs']} | |",
             f"| r(L1 HU, L1-L4 T-score) | {f(res['r_hu_t_l1l4'])} | 0.5-0.7 |",
             f"| r(L1 HU, L1 T-score) | {f(res['r_hu_t_l1'])} | 0.5-0.7 |",
             f"| L1 HU <= 160: sensitivity | {f(res['sens_160'])} | ~0.9 |",
             f"| L1 HU <= 160: specificity | {f(res['spec_160'])} | |",
             f"| L1 HU <= 110: sensitivity | {f(res['sens_110'])} | |",
             f"| L1 HU <= 110: specificity | {f(res['spec_110'])} | ~0.9 |"]
    for s, v in res["prevalence"].items():
        lines.append(f"| site {s} vertebra-level osteoporosis | {f(v)} | {f(res['prevalence_target'][s])} |")
    vs = res["vendor_shift"]
    for v, share in vs["osteoporosis_share"].items():
        lines.append(f"| same {vs['n']} spines measured on {v}: osteoporosis share | {f(share)} | |")
    lines.append(f"| WHO class differs between vendors (same spine) | {f(vs['class_disagreement'])} | > 0 |")
    return "\n".join(lines) + "\n"
