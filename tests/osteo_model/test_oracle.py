"""The oracle-ceiling row: AUROC of the true areal BMD and its Pearson r with the DXA, parity with scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from osteo_model.oracle import ORACLE_ARM, OracleError, oracle_scores, oracle_tidy


def _cohort(seed: int = 0, n: int = 60):
    """Truth (patient x T12..L4) and test vertebrae (L1-L4) whose DXA BMD is the truth plus device noise."""
    rng = np.random.default_rng(seed)
    truth, test = [], []
    for i in range(n):
        pid, site = f"p{i:03d}", "ABD"[i % 3]
        latent = rng.normal(0.85, 0.15)
        for level in range(12, 17):
            area = rng.uniform(12, 18)
            abmd = latent + rng.normal(0, 0.03)
            truth.append({"patient_id": pid, "level": level, "true_bmc_g": abmd * area, "true_area_cm2": area})
            if level >= 13:
                dxa = abmd + rng.normal(0, 0.05)
                test.append({"patient_id": pid, "site": site, "level": level, "bmd_true": dxa,
                             "y_true": int(dxa < 0.72)})
    return pd.DataFrame(truth), pd.DataFrame(test)


def test_oracle_auroc_and_r_equal_sklearn_and_numpy_per_site():
    truth, test = _cohort()
    tidy = oracle_tidy(truth, test, ("site_A", "site_B", "site_D", "pooled"))
    assert set(tidy["arm"]) == {ORACLE_ARM} and tidy["lo"].isna().all()
    got = tidy.set_index(["scope", "level", "metric"])["value"]
    t = truth.assign(abmd=truth["true_bmc_g"] / truth["true_area_cm2"])
    v = test.merge(t, on=["patient_id", "level"])
    spine = t[t["level"] >= 13].groupby("patient_id")[["true_bmc_g", "true_area_cm2"]].sum()
    l1l4 = spine["true_bmc_g"] / spine["true_area_cm2"]
    for scope, sites in (("site_A", "A"), ("site_D", "D"), ("pooled", "ABD")):
        sv = v[v["site"].isin(list(sites))]
        assert got[(scope, "vertebra", "auroc")] == pytest.approx(roc_auc_score(sv["y_true"], -sv["abmd"]), abs=1e-12)
        assert got[(scope, "vertebra", "bmd_r")] == pytest.approx(np.corrcoef(sv["abmd"], sv["bmd_true"])[0, 1])
        sp = sv.groupby("patient_id")["y_true"].max()
        assert got[(scope, "patient", "auroc")] == pytest.approx(roc_auc_score(sp, -l1l4[sp.index]), abs=1e-12)
        assert got[(scope, "patient", "n")] == sp.size
    assert got[("pooled", "vertebra", "auroc")] > 0.8                             # the ceiling is high, not 1:
    assert got[("pooled", "vertebra", "bmd_r")] < 0.999                           # the DXA label is noisy
    _, patients = oracle_scores(truth, test)
    assert patients["true_abmd_l1l4"].notna().all() and len(patients) == 60       # T12 left out of L1-L4


def test_oracle_refuses_a_truth_of_another_cohort():
    truth, test = _cohort()
    with pytest.raises(OracleError, match="another cohort run"):
        oracle_tidy(truth[truth["patient_id"] != "p000"], test, ("pooled",))
    with pytest.raises(OracleError, match="lacks columns"):
        oracle_tidy(truth.drop(columns="true_area_cm2"), test, ("pooled",))
