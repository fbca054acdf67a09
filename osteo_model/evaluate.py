"""Evaluation of one model's test predictions: per site, pooled, vertebra and patient level (METHOD.md §6).

Entry points:

* :func:`evaluate_predictions` (pure): predictions -> JSON-able metrics dict.
* :func:`site_table` / :func:`format_site_table` / :func:`headline_metrics` (pure): the
  per-site patient-level headline, as rows, as text, and as the DVC metrics file.
* rendering (text, HTML, files) is :mod:`osteo_model.report`; plots are :mod:`osteo_model.figures`.

The threshold is the one stored with the model version (chosen on validation
data); it is never re-tuned here. Layout of the metrics dict::

    {"threshold": t, "sites": [...], "external_sites": [...], "n_boot": B, "ci_level": 0.95,
     "site_A": {"vertebra": {"acc": .., "acc_lo": .., "acc_hi": .., "acc_n_undefined": .., ..., "bmd_r": ..,
                             "cal_slope": .., "ci_withheld": {"auroc": "<reason>"}},
                "patient": {...}},
     ..., "internal": {...}, "external": {...}, "pooled": {...},
     "subgroups": {"sex": {"F": {"n": .., "sen": ..}, ...}, "age_band": {...}, "scanner": {...}},
     "vs_champion": {"n_perm": P, "site_A": {"patient": {"f1": {"diff", "lo", "hi", "n_undefined", "p_perm"}, ...,
                                                            "mcnemar": {"b", "c", "p"}}}},
     "baselines": {"<name>": {"site_A": {"vertebra": {...}, "patient": {...}}, ...}}}

CIs: ``<k>_n_undefined`` counts the bootstrap replicates where metric ``k`` was undefined (NaN, e.g. a
resample without a positive patient for SEN or AUROC); the interval is taken over the defined ones, and
withheld (``<k>_lo`` / ``<k>_hi`` null, the reason in ``ci_withheld[k]``) when fewer than
``evaluate.min_defined_share`` of the replicates define it. Paired comparisons: ``diff`` with its
paired-bootstrap CI (``lo``, ``hi``) and ``p_perm``, the two-sided paired permutation p-value (the two
models' decisions and score ranks swapped within patients, ``evaluate.n_perm`` replicates).

Undefined numbers (NaN, see :mod:`osteo_model.metrics`) become ``null`` so the
file is strict JSON and a gate sees them as missing. No torch here.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from osteo_config.evaluate import EvaluateConfig, EvaluationError  # noqa: F401  (re-exported)
from osteo_model import metrics as M

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "site", "level", "y_true", "score")
LEVELS: tuple[str, ...] = ("vertebra", "patient")


def clean_json(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def check_frame(pred: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in pred.columns]
    if missing:
        raise EvaluationError(f"{what} lacks columns {missing}; predictions need {list(REQUIRED_COLUMNS)}")
    if not pred["y_true"].isin([0, 1]).all():
        raise EvaluationError(f"{what}.y_true must be 0/1 (1 = osteoporosis, WHO T <= -2.5)")
    s = pred["score"].to_numpy(dtype=np.float64)
    if not (np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()):
        raise EvaluationError(f"{what}.score must be finite and within [0, 1]")
    out = pred.copy()
    out["site"] = out["site"].astype(str)
    return out


class _Rows:
    """Arrays of one scope/level, and the statistic the bootstrap evaluates on row subsets."""

    def __init__(self, frame: pd.DataFrame, threshold: float, keys: tuple[str, ...]) -> None:
        self.pid = frame["patient_id"].to_numpy()
        self.site = frame["site"].to_numpy()
        self.y = frame["y_true"].to_numpy(dtype=np.int64)
        self.s = frame["score"].to_numpy(dtype=np.float64)
        self.t, self.keys = threshold, keys
        self.bmd: tuple[np.ndarray, np.ndarray] | None = None       # (true, predicted) g/cm2 when both given
        if {"bmd_true", "bmd_pred"} <= set(frame.columns):
            self.bmd = (frame["bmd_true"].to_numpy(dtype=np.float64), frame["bmd_pred"].to_numpy(dtype=np.float64))

    def _bmd(self, idx: np.ndarray) -> dict[str, float]:
        if self.bmd is None:
            return {}
        bt, bp = self.bmd[0][idx], self.bmd[1][idx]
        ok = np.isfinite(bt) & np.isfinite(bp)                        # unlabelled vertebrae carry NaN BMD
        return {"bmd_r": M.pearson_r(bt[ok], bp[ok]), "bmd_mae": M.mae(bt[ok], bp[ok]), "n_bmd": int(ok.sum())}

    def stat(self, idx: np.ndarray) -> dict[str, float]:
        out = M.score_metrics(self.y[idx], self.s[idx], self.t)
        out.update(self._bmd(idx))
        return {k: out[k] for k in self.keys if k in out}

    def point(self, n_bins: int) -> dict[str, float]:
        everything = np.arange(self.y.size)
        out: dict[str, float] = {"n": int(self.y.size), "n_pos": int(self.y.sum()),
                                 "n_patients": int(pd.unique(self.pid).size)}
        out.update(M.score_metrics(self.y, self.s, self.t))
        slope, intercept = M.calibration_fit(self.y, self.s)
        out.update(cal_slope=slope, cal_intercept=intercept,
                   ece=M.expected_calibration_error(M.reliability_bins(self.y, self.s, n_bins)))
        out.update(self._bmd(everything))
        return out


def _level_metrics(frame: pd.DataFrame, threshold: float, cfg: EvaluateConfig) -> dict[str, float]:
    rows = _Rows(frame, threshold, cfg.ci_metrics)
    out = rows.point(cfg.reliability_bins)
    if rows.y.size == 0:
        return out
    ci = M.bootstrap_ci(rows.pid, rows.site, rows.stat, cfg.n_boot, cfg.seed, cfg.ci_level, cfg.min_defined_share)
    withheld = {}
    for k, iv in ci.items():
        out[f"{k}_lo"], out[f"{k}_hi"], out[f"{k}_n_undefined"] = iv.lo, iv.hi, iv.n_undefined
        if iv.reason:
            withheld[k] = iv.reason
    if withheld:
        out["ci_withheld"] = withheld
    return out


def scopes(cfg: EvaluateConfig) -> dict[str, tuple[str, ...]]:
    """Scope name -> the sites it pools: ``site_<X>`` each, ``internal``, ``external``, ``pooled``."""
    internal = tuple(s for s in cfg.sites if s not in cfg.external_sites)
    out: dict[str, tuple[str, ...]] = {f"site_{s}": (s,) for s in cfg.sites}
    out.update(internal=internal, external=tuple(cfg.external_sites), pooled=tuple(cfg.sites))
    return out


def _model_block(pred: pd.DataFrame, threshold: float, cfg: EvaluateConfig) -> dict[str, Any]:
    patients = M.patient_table(pred, threshold)
    block: dict[str, Any] = {}
    for scope, sites in scopes(cfg).items():
        v = pred[pred["site"].isin(sites)]
        p = patients[patients["site"].isin(sites)]
        block[scope] = {"vertebra": _level_metrics(v, threshold, cfg), "patient": _level_metrics(p, threshold, cfg)}
    return block


def _subgroups(patients: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    table = patients.copy()
    if "age_at_ct" in table.columns:
        table["age_band"] = M.age_band(table["age_at_ct"], cfg.age_bands)
    for attr in cfg.subgroups:
        if attr not in table.columns:
            continue                                 # absent here -> absent in metrics -> a subgroup gate fails
        sub = M.subgroup_table(table.dropna(subset=[attr]), attr)
        out[attr] = {r["value"]: {k: r[k] for k in ("n", "n_pos", "acc", "sen", "spe", "f1", "auroc")}
                     for r in sub.to_dict("records")}
    return out


def decision_outputs(frame: pd.DataFrame, threshold: float) -> np.ndarray:
    """``(n, 2)`` outputs a paired permutation swaps: score rank in (0, 1] (AUROC/AUPRC) and the 0/1 decision."""
    s = frame["score"].to_numpy(dtype=np.float64)
    return np.column_stack([M.rank01(s), (s >= threshold).astype(np.float64)])


def paired_comparison(pid: np.ndarray, site: np.ndarray, y: np.ndarray, out_a: np.ndarray, out_b: np.ndarray,
                      keys: tuple[str, ...], cfg: EvaluateConfig) -> dict[str, dict[str, Any]]:
    """Per metric of ``keys``: difference A - B, its paired patient-bootstrap CI and the permutation ``p_perm``.

    ``out_a`` / ``out_b``: :func:`decision_outputs` of the two models on the same rows (``y`` the labels).
    Only :data:`osteo_model.metrics.RANK_METRICS` can be compared (others are skipped).
    """
    keys = tuple(k for k in keys if k in M.RANK_METRICS)

    def stat(out: np.ndarray, idx: np.ndarray | None = None) -> dict[str, float]:
        o = out if idx is None else out[idx]
        m = M.decision_metrics(y if idx is None else y[idx], o[:, 0], o[:, 1])
        return {k: m[k] for k in keys}

    res = M.paired_bootstrap(pid, site, lambda i: stat(out_a, i), lambda i: stat(out_b, i), cfg.n_boot, cfg.seed,
                             cfg.ci_level, cfg.min_defined_share)
    perm = M.paired_permutation(pid, stat, out_a, out_b, cfg.n_perm, cfg.seed)
    for k in res:
        res[k]["p_perm"] = perm[k]["p_perm"]
    return res


def _compare(pred: pd.DataFrame, threshold: float, champion: pd.DataFrame, champion_threshold: float,
             cfg: EvaluateConfig) -> dict[str, Any]:
    """Paired bootstrap CI, permutation p and McNemar vs the champion on the patients both models scored."""
    a = M.patient_table(pred, threshold)
    b = M.patient_table(champion, champion_threshold)
    both = a.merge(b[["patient_id", "y_true", "score", "y_pred"]], on="patient_id", suffixes=("", "_ch"))
    if (both["y_true"] != both["y_true_ch"]).any():
        raise EvaluationError("candidate and champion predictions disagree on y_true for some patients: "
                              "score both models on the same test table")
    out: dict[str, Any] = {"n_patients_common": int(len(both)), "n_patients_candidate": int(len(a)),
                           "champion_threshold": champion_threshold, "n_perm": cfg.n_perm}
    for scope, sites in scopes(cfg).items():
        f = both[both["site"].isin(sites)].reset_index(drop=True)
        if f.empty:
            out[scope] = {"patient": {}}
            continue
        res: dict[str, Any] = paired_comparison(
            f["patient_id"].to_numpy(), f["site"].to_numpy(), f["y_true"].to_numpy(dtype=np.int64),
            decision_outputs(f, threshold), decision_outputs(f.assign(score=f["score_ch"]), champion_threshold),
            cfg.compare_metrics, cfg)
        res["mcnemar"] = M.mcnemar(f["y_pred"] == f["y_true"], f["y_pred_ch"] == f["y_true"])
        out[scope] = {"patient": res}
    return out


def evaluate_predictions(pred: pd.DataFrame, cfg: EvaluateConfig, threshold: float,
                         champion_pred: pd.DataFrame | None = None, champion_threshold: float | None = None,
                         baselines: Mapping[str, tuple[pd.DataFrame, float]] | None = None) -> dict[str, Any]:
    """Evaluate test predictions per site and pooled, at vertebra and patient level.

    Args:
        pred: one row per vertebra: ``patient_id``, ``site``, ``level``, ``y_true`` (0/1),
            ``score`` (0-1); optional ``sex``, ``age_at_ct``, ``scanner``, ``bmd_true``, ``bmd_pred``.
        cfg: the ``evaluate:`` section.
        threshold: the operating threshold stored with the model version (never tuned on test data).
        champion_pred: the current champion's predictions on the same test vertebrae (optional).
        champion_threshold: the champion's own stored threshold (required with ``champion_pred``).
        baselines: name -> (predictions, threshold) of the baselines shown beside the model
            (L1-HU rule, radiomics + logistic regression), evaluated the same way.

    Returns:
        The JSON-able metrics dict described in the module docstring.

    Raises:
        EvaluationError: missing columns, labels not 0/1, scores outside [0, 1], or a
            champion without its threshold.
    """
    pred = check_frame(pred, "pred")
    if not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"threshold {threshold} is outside [0, 1]: pass the threshold stored with the model")
    present = set(pred["site"])
    out: dict[str, Any] = {"threshold": float(threshold), "sites": list(cfg.sites),
                           "external_sites": list(cfg.external_sites), "n_boot": cfg.n_boot,
                           "ci_level": cfg.ci_level, "seed": cfg.seed,
                           "missing_sites": [s for s in cfg.sites if s not in present],
                           "unexpected_sites": sorted(present - set(cfg.sites))}
    out.update(_model_block(pred, threshold, cfg))
    out["subgroups"] = _subgroups(M.patient_table(pred, threshold), cfg)
    if champion_pred is not None:
        if champion_threshold is None:
            raise EvaluationError("champion_pred given without champion_threshold: "
                                  "pass the champion's stored threshold")
        out["vs_champion"] = _compare(pred, threshold, check_frame(champion_pred, "champion_pred"),
                                      float(champion_threshold), cfg)
    if baselines:
        out["baselines"] = {name: _model_block(check_frame(f, f"baseline {name}"), float(t), cfg)
                            for name, (f, t) in baselines.items()}
    return clean_json(out)

# --------------------------------------------------------------------------- summaries (pure)

SITE_TABLE_KEYS: tuple[str, ...] = ("acc", "sen", "spe", "f1", "auroc")
HEADLINE_KEYS: tuple[str, ...] = ("n_patients", "n_pos", "acc", "sen", "spe", "f1", "auroc")


def _scope_names(metrics: Mapping[str, Any]) -> list[str]:
    return [f"site_{s}" for s in metrics["sites"]] + ["internal", "external", "pooled"]


def site_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Patient-level headline per scope (sites, then internal / external / pooled), JSON-able.

    Each row: ``scope``, ``external`` (bool, sites only), ``n_patients``, ``n_pos``, each of
    :data:`SITE_TABLE_KEYS` with ``<k>_lo`` / ``<k>_hi``, and, when the metrics hold a
    champion comparison, ``f1_diff`` / ``f1_p_perm`` / ``auroc_diff`` / ``auroc_p_perm`` (candidate minus
    champion; ``p_perm`` the paired permutation p-value).
    """
    external = set(metrics.get("external_sites") or ())
    comp = metrics.get("vs_champion") or {}
    rows = []
    for scope in _scope_names(metrics):
        m = (metrics.get(scope) or {}).get("patient") or {}
        row: dict[str, Any] = {"scope": scope, "external": scope.startswith("site_") and scope[5:] in external,
                               "n_patients": m.get("n_patients", 0), "n_pos": m.get("n_pos", 0)}
        for k in SITE_TABLE_KEYS:
            row.update({k: m.get(k), f"{k}_lo": m.get(f"{k}_lo"), f"{k}_hi": m.get(f"{k}_hi")})
        paired = ((comp.get(scope) or {}).get("patient") or {}) if comp else {}
        for k in ("f1", "auroc"):
            if k in paired:
                row[f"{k}_diff"], row[f"{k}_p_perm"] = paired[k].get("diff"), paired[k].get("p_perm")
        rows.append(row)
    return rows


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``{scope: {<k>: value}}`` of the patient-level :data:`HEADLINE_KEYS` plus the vertebra-level AUROC and
    calibration slope, and the paired differences vs the champion: flat enough for ``dvc metrics show``."""
    out: dict[str, Any] = {"threshold": metrics.get("threshold")}
    for scope in _scope_names(metrics):
        pat = (metrics.get(scope) or {}).get("patient") or {}
        vert = (metrics.get(scope) or {}).get("vertebra") or {}
        out[scope] = {**{k: pat.get(k) for k in HEADLINE_KEYS},
                      "vertebra_auroc": vert.get("auroc"), "vertebra_cal_slope": vert.get("cal_slope")}
    comp = metrics.get("vs_champion")
    if comp:
        out["vs_champion"] = {"n_patients_common": comp.get("n_patients_common")}
        for scope in _scope_names(metrics):
            paired = (comp.get(scope) or {}).get("patient") or {}
            if paired:
                out["vs_champion"][scope] = {f"{k}_{part}": paired[k].get(part) for k in ("f1", "auroc")
                                             if k in paired for part in ("diff", "p_perm")}
    return clean_json(out)


def scalar_metrics(block: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{prefix}.{scope}.{level}.{metric}`` for every site and pooled scope (headline metrics only; MLflow)."""
    keys = ("acc", "sen", "spe", "f1", "auroc", "auprc", "bmd_r", "bmd_mae", "n")
    out = {}
    for scope, levels in block.items():
        if not (scope.startswith("site_") or scope in ("internal", "external", "pooled")) or not levels:
            continue
        for level, values in levels.items():
            if not (values or {}).get("n"):
                continue                                                       # empty scope: absent, not 0
            for k in keys:
                v = (values or {}).get(k)
                if v is not None:
                    out[f"{prefix}.{scope}.{level}.{k}"] = v
    return out


# --------------------------------------------------------------------------- I/O shell: files, plots, report


def fmt(v: Any, lo: Any = None, hi: Any = None, percent: bool = False) -> str:
    """``value [lo, hi]``: percentages with 1 decimal, other metrics with 3, counts as integers."""
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    f = ".1f" if percent else ".3f"
    text = format(v, f)
    if lo is not None and hi is not None:
        text += f" [{format(lo, f)}, {format(hi, f)}]"
    return text


