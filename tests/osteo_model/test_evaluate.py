"""evaluate_predictions / write_evaluation: structure, patient rule per site, stored threshold, files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_config.params import load_params
from osteo_model import metrics as M
from osteo_model.evaluate import EvaluateConfig, EvaluationError, evaluate_predictions
from osteo_model.report import write_evaluation

REPO = Path(__file__).resolve().parents[2]
CFG = EvaluateConfig(n_boot=60, seed=3)


def make_pred(seed: int = 0, sites=(("A", 40), ("B", 25), ("C", 15), ("D", 20)), noise: float = 1.0) -> pd.DataFrame:
    """Vertebra predictions whose score tracks a latent BMD; 2-4 labelled vertebrae per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, n in sites:
        for p in range(n):
            latent, sex, age = rng.normal(), rng.choice(["F", "M"]), rng.uniform(45, 90)
            scanner = rng.choice(["s1", "s2"])
            for level in range(13, 13 + int(rng.integers(2, 5))):
                bmd = 0.9 + 0.15 * latent + 0.03 * rng.normal()
                score = 1 / (1 + np.exp((bmd - 0.78) / 0.05 + noise * rng.normal()))
                rows.append({"patient_id": f"{site}{p:03d}", "site": site, "level": level, "sex": sex,
                             "age_at_ct": age, "scanner": scanner, "y_true": int(bmd < 0.75), "score": score,
                             "bmd_true": bmd, "bmd_pred": bmd + 0.04 * rng.normal()})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pred() -> pd.DataFrame:
    return make_pred()


@pytest.fixture(scope="module")
def result(pred) -> dict:
    return evaluate_predictions(pred, CFG, threshold=0.4)


def test_every_scope_and_level_with_cis_containing_the_point(result):
    for scope in ["site_A", "site_B", "site_C", "site_D", "internal", "external", "pooled"]:
        for level in ("vertebra", "patient"):
            m = result[scope][level]
            for k in ("acc", "sen", "spe", "f1", "auroc", "auprc"):
                if m[k] is None:
                    continue
                if m[f"{k}_lo"] is None:                                # withheld: too few defined replicates
                    assert m[f"{k}_n_undefined"] > (1 - CFG.min_defined_share) * CFG.n_boot
                    assert "replicates" in m["ci_withheld"][k]
                    continue
                assert m[f"{k}_lo"] <= m[k] + 1e-9 and m[k] <= m[f"{k}_hi"] + 1e-9, (scope, level, k)
    assert result["pooled"]["vertebra"]["bmd_r"] > 0.9 and "bmd_r" not in result["pooled"]["patient"]
    assert result["pooled"]["vertebra"]["bmd_r_lo"] <= result["pooled"]["vertebra"]["bmd_r"]
    json.dumps(result, allow_nan=False)                                # strict JSON, NaN -> null


def test_patient_level_uses_any_vertebra_rule_and_the_stored_threshold(pred, result):
    for site in "ABCD":
        pts = M.patient_table(pred[pred["site"] == site], 0.4)
        truth = pred[pred["site"] == site].groupby("patient_id")["y_true"].max()
        flagged = (pred[pred["site"] == site].assign(f=lambda d: d["score"] >= 0.4)
                   .groupby("patient_id")["f"].any())
        c = M.confusion(truth.to_numpy(), flagged.to_numpy())
        m = result[f"site_{site}"]["patient"]
        assert m["n"] == len(pts) == m["n_patients"]
        assert m["sen"] == pytest.approx(100 * c.tp / (c.tp + c.fn))
        assert m["spe"] == pytest.approx(100 * c.tn / (c.tn + c.fp))
    other = evaluate_predictions(pred, EvaluateConfig(n_boot=5, ci_metrics=("f1",)), threshold=0.9)
    assert "bmd_mae" in other["pooled"]["vertebra"] and "bmd_mae_lo" not in other["pooled"]["vertebra"]
    assert other["threshold"] == 0.9 and other["pooled"]["patient"]["sen"] < result["pooled"]["patient"]["sen"]
    assert result["external"]["patient"]["n"] == result["site_D"]["patient"]["n"]
    assert result["pooled"]["patient"]["n"] == pred["patient_id"].nunique()


def test_subgroups_cover_every_patient(pred, result):
    n = pred["patient_id"].nunique()
    for attr in ("sex", "age_band", "scanner"):
        assert sum(v["n"] for v in result["subgroups"][attr].values()) == n


def test_missing_site_is_reported_not_invented(pred):
    res = evaluate_predictions(pred[pred["site"] != "D"], EvaluateConfig(n_boot=5), threshold=0.4)
    assert res["missing_sites"] == ["D"]
    assert res["site_D"]["patient"]["n"] == 0 and res["site_D"]["patient"]["f1"] is None


def test_champion_comparison_identical_and_worse(pred):
    same = evaluate_predictions(pred, CFG, 0.4, champion_pred=pred, champion_threshold=0.4)
    for k, v in same["vs_champion"]["pooled"]["patient"].items():
        if k == "mcnemar":
            assert v == {"b": 0, "c": 0, "p": 1.0}
        else:
            assert v["diff"] == 0.0 and v["p_perm"] == 1.0 and v["lo"] == v["hi"] == 0.0
    worse = make_pred(noise=6.0)                                      # same truth, much noisier scores
    res = evaluate_predictions(pred, CFG, 0.4, champion_pred=worse, champion_threshold=0.4)
    cmp = res["vs_champion"]["pooled"]["patient"]
    assert cmp["auroc"]["diff"] > 0 and cmp["auroc"]["p_perm"] < 0.05 and cmp["auroc"]["lo"] > 0
    assert res["vs_champion"]["n_perm"] == CFG.n_perm and "p" not in cmp["auroc"]
    # a champion on another scale (scores squared: same ranking, other threshold) is compared on ranks and
    # decisions: same AUROC -> difference 0 and p_perm 1
    squared = pred.assign(score=pred["score"] ** 2)
    res = evaluate_predictions(pred, CFG, 0.4, champion_pred=squared, champion_threshold=0.16)
    cmp = res["vs_champion"]["pooled"]["patient"]
    assert cmp["auroc"]["diff"] == pytest.approx(0.0, abs=1e-12) and cmp["auroc"]["p_perm"] == 1.0
    assert cmp["f1"]["diff"] == 0.0
    with pytest.raises(EvaluationError, match="champion_threshold"):
        evaluate_predictions(pred, CFG, 0.4, champion_pred=pred)


def test_ci_reports_undefined_replicates_and_withholds_thin_intervals():
    # site C: 6 patients with one osteoporotic -> many resamples lack a positive (SEN/AUROC undefined there)
    p = make_pred(sites=(("A", 40), ("C", 6)))
    c_pid = p[p["site"] == "C"]["patient_id"].unique()
    p.loc[p["site"] == "C", "y_true"] = 0
    p.loc[p["patient_id"] == c_pid[0], "y_true"] = 1
    lenient = evaluate_predictions(p, EvaluateConfig(n_boot=200, seed=1, min_defined_share=0.0), 0.4)
    c = lenient["site_C"]["patient"]
    assert c["auroc_n_undefined"] > 20 and c["acc_n_undefined"] == 0
    assert c["auroc_lo"] is not None and "ci_withheld" not in c
    strict = evaluate_predictions(p, EvaluateConfig(n_boot=200, seed=1, min_defined_share=0.9), 0.4)
    c = strict["site_C"]["patient"]
    assert c["auroc_lo"] is None and c["auroc_hi"] is None and "of 200 replicates" in c["ci_withheld"]["auroc"]
    assert c["acc_lo"] is not None and "acc" not in c["ci_withheld"]
    assert strict["site_A"]["patient"]["auroc_lo"] is not None               # a site with evidence keeps its CI
    with pytest.raises(EvaluationError, match="min_defined_share"):
        EvaluateConfig(min_defined_share=1.5)


def test_input_errors_are_typed(pred):
    with pytest.raises(EvaluationError, match="lacks columns"):
        evaluate_predictions(pred.drop(columns="score"), CFG, 0.4)
    with pytest.raises(EvaluationError, match="within"):
        evaluate_predictions(pred.assign(score=pred["score"] + 1), CFG, 0.4)
    with pytest.raises(EvaluationError, match="external_sites"):
        EvaluateConfig(sites=("A",), external_sites=("D",))


def test_config_from_repo_params():
    for profile in ("demo", "tiny", "paper"):
        cfg = EvaluateConfig.from_params(load_params(REPO / "params.yaml", profile))
        assert "D" in cfg.external_sites and cfg.n_boot >= 1
    with pytest.raises(EvaluationError, match="unknown keys"):
        EvaluateConfig.from_params({"evaluate": {"n_bot": 3}})


def test_write_evaluation_files(tmp_path, pred):
    res = evaluate_predictions(pred, CFG, 0.4, baselines={"noisy": (make_pred(noise=6.0), 0.5)})
    paths = write_evaluation(res, pred, tmp_path, reliability_bins=CFG.reliability_bins)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {"metrics.json", "report.html", "roc.png", "reliability.png", "confusion.png",
            "plots/roc_patient_site_A.csv", "plots/roc_patient_pooled.csv", "plots/confusion_patient.csv",
            "plots/reliability_vertebra_pooled.csv"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(res))
    roc = pd.read_csv(tmp_path / "plots/roc_patient_site_A.csv")
    assert roc["fpr"].is_monotonic_increasing and roc[["fpr", "tpr"]].iloc[-1].tolist() == [1.0, 1.0]
    conf = pd.read_csv(tmp_path / "plots/confusion_patient.csv")
    assert len(conf) == pred["patient_id"].nunique() and set(conf.columns) == {"site", "actual", "predicted"}
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Baseline: noisy" in html and "site_D" in html
    assert "http" not in html.replace("http-equiv", "")                # self-contained
    assert not math.isnan(res["pooled"]["patient"]["f1"])
