"""The physical ceiling of the comparison: what the simulator's own truth scores on the same test patients.

The cohort simulator (:mod:`cohort.simulate`) writes the true bone of every patient and level to
``<paths.truth>/truth.parquet`` (``true_bmc_g``, ``true_area_cm2``: the areal BMD a perfect DXA would
read). No model can beat a score that *is* the true areal BMD, so every arm of the ablation reads
against this row:

* AUROC of ``-true aBMD`` for the osteoporosis label (vertebra level: that vertebra's true aBMD;
  patient level: the true L1-L4 aBMD, total BMC / total area as DXA reports it), and
* Pearson r of the true aBMD against the DXA BMD the labels come from (the DXA's own noise and
  vendor calibration: the ceiling of any BMD regression).

Used by the ablation report only (:mod:`osteo_model.ablation`): training and evaluation never see the
truth (``tests/test_architecture.py`` enforces it). The truth is keyed by pseudonymous ``patient_id``
at the configuration edge (the CLI pseudonymises the simulator's MRNs with the ingestion key), so
no MRN enters this module. Pure pandas / numpy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from osteo_model import metrics as M
from osteo_model.errors import ModelError

ORACLE_ARM = "oracle (simulator truth)"
TRUTH_COLUMNS = ("patient_id", "level", "true_bmc_g", "true_area_cm2")
TEST_COLUMNS = ("patient_id", "site", "level", "y_true", "bmd_true")
L1, L4 = 13, 16                                   # level codes of L1 and L4 (features: T12 = 12)


class OracleError(ModelError):
    """The truth table cannot produce the oracle row for these test patients."""


def _check(frame: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise OracleError(f"{what} lacks columns {missing}: {fix}")


def oracle_scores(truth: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The oracle's vertebra and patient tables on the test rows.

    Args:
        truth: simulator truth keyed by pseudonymous id: ``patient_id``, ``level``, ``true_bmc_g``,
            ``true_area_cm2`` (one row per patient and level).
        test: the test vertebrae of the comparison: ``patient_id``, ``site``, ``level``, ``y_true`` (0/1),
            ``bmd_true`` (the DXA BMD, g/cm2).

    Returns:
        ``(vertebrae, patients)``: vertebrae with ``true_abmd`` beside the test columns; patients with
        ``site``, ``y_true`` (any vertebra), ``true_abmd_l1l4`` (g/cm2).

    Raises:
        OracleError: missing columns, or test patients / levels the truth does not hold (a truth file of
            another cohort run: regenerate the cohort or point ``paths.truth`` at this cohort's truth).
    """
    _check(truth, TRUTH_COLUMNS, "truth", "pass <paths.truth>/truth.parquet keyed by patient_id")
    _check(test, TEST_COLUMNS, "test rows", "pass the comparison's test predictions")
    t = truth[list(TRUTH_COLUMNS)].copy()
    t["true_abmd"] = t["true_bmc_g"] / t["true_area_cm2"]                   # g / cm2 = g/cm2
    v = test[list(TEST_COLUMNS)].drop_duplicates(["patient_id", "level"]).merge(
        t, on=["patient_id", "level"], how="left")
    absent = v.loc[v["true_abmd"].isna(), "patient_id"].unique()
    if absent.size:
        raise OracleError(f"the truth holds no true aBMD for {absent.size} of {v['patient_id'].nunique()} test "
                          "patients: the truth file belongs to another cohort run; regenerate the cohort "
                          "(`osteo cohort generate`) or point paths.truth at this cohort's truth")
    spine = t[t["level"].between(L1, L4)].groupby("patient_id")[["true_bmc_g", "true_area_cm2"]].sum()
    spine["true_abmd_l1l4"] = spine["true_bmc_g"] / spine["true_area_cm2"]   # DXA's L1-L4: sum BMC / sum area
    p = v.groupby("patient_id", sort=True).agg(site=("site", "first"), y_true=("y_true", "max")).reset_index()
    p = p.merge(spine[["true_abmd_l1l4"]], left_on="patient_id", right_index=True, how="left")
    return v, p


def oracle_tidy(truth: pd.DataFrame, test: pd.DataFrame, scopes: Sequence[str]) -> pd.DataFrame:
    """The oracle row in the ablation's tidy layout (``arm``, ``scope``, ``level``, ``metric``, ``value``, ...).

    Per scope (``site_<X>`` or ``pooled``): vertebra ``auroc`` (per-vertebra true aBMD), ``bmd_r`` (true aBMD
    vs DXA BMD), ``n``; patient ``auroc`` (true L1-L4 aBMD), ``n``. Lower true BMD = higher risk, so the
    score is ``-aBMD``. No CI: the oracle is a reference line, not an estimate to compare.
    """
    v, p = oracle_scores(truth, test)
    rows = []
    for scope in scopes:
        sel_v = v if scope == "pooled" else v[v["site"].astype(str) == scope.removeprefix("site_")]
        sel_p = p if scope == "pooled" else p[p["site"].astype(str) == scope.removeprefix("site_")]
        if sel_v.empty:
            continue
        ok = np.isfinite(sel_v["bmd_true"].to_numpy(dtype=np.float64))
        values = {("vertebra", "n"): int(len(sel_v)), ("patient", "n"): int(len(sel_p)),
                  ("vertebra", "auroc"): M.auroc(sel_v["y_true"], -sel_v["true_abmd"]),
                  ("vertebra", "bmd_r"): M.pearson_r(sel_v["true_abmd"].to_numpy()[ok],
                                                     sel_v["bmd_true"].to_numpy(dtype=np.float64)[ok]),
                  ("patient", "auroc"): M.auroc(sel_p["y_true"], -sel_p["true_abmd_l1l4"])}
        rows += [{"arm": ORACLE_ARM, "scope": scope, "level": lv, "metric": k, "value": val, "lo": np.nan, "hi": np.nan}
                 for (lv, k), val in values.items()]
    return pd.DataFrame(rows)
