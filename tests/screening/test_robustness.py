"""`osteo experiments robustness`: the cohort overlay, the shift magnitudes, the table, and one tiny end-to-end run.

Fast tests check the configuration (a shift changes only what it names, keeps the same patients, lies beyond
the training scanners) and the table (a quarantined site shows its reasons and cannot pass). The slow test
simulates a tiny site D three times (reference, a noise shift, a calibration-breaking slope), screens each
with a tiny registered champion through ingestion, texture, the training-table pairing and the pyfunc, and
reads the JSON, the markdown block and the MLflow run.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohort.plan import plan_patient
from osteo_config import Config, load_config
from osteo_config.robustness import (REFERENCE, RobustnessConfig, RobustnessConfigError, ShiftConfig,
                                     outside_training, shift_cohort, shifted_scanner_id, training_ranges)
from osteo_config.evaluate import EvaluateConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo() -> Config:
    return load_config(REPO / "params.yaml", "demo")


def test_overlay_adds_shifted_scanners_and_changes_nothing_else(demo):
    """A shift adds `<scanner>~<shift>` copies carrying its values; every other value of the cohort is unchanged."""
    base = demo.cohort
    shift = ShiftConfig.parse("s", {"noise_hu": 35, "slice_mm": [4.0, 5.0], "contrast_share": 0.8})
    out = shift_cohort(base, "D", 7, shift)
    site = out.sites["D"]
    assert [w for _, w in site.scanners] == [w for _, w in base.sites["D"].scanners]           # same draw weights
    for (old, _), (new, _) in zip(base.sites["D"].scanners, site.scanners):
        assert new == shifted_scanner_id(old, shift) and new not in base.scanners
        got, was = out.scanners[new], base.scanners[old]
        assert got.noise_hu == 35.0 and got.slice_mm == (4.0, 5.0)                              # the requested values
        assert dataclasses.replace(got, noise_hu=was.noise_hu, slice_mm=was.slice_mm) == was    # nothing else
    assert {k: v for k, v in out.scanners.items() if k in base.scanners} == base.scanners       # originals untouched
    assert site.contrast_share == 0.8 and site.external and out.n_patients("D") == 7
    assert dataclasses.replace(site, scanners=base.sites["D"].scanners, contrast_share=base.sites["D"].contrast_share,
                               patients=base.sites["D"].patients, external=base.sites["D"].external) == base.sites["D"]
    assert {k: v for k, v in out.sites.items() if k != "D"} == {k: v for k, v in base.sites.items() if k != "D"}
    assert out.faults == {}                                                 # a quarantine is the shift's doing
    same = ("bone", "ct", "timing", "dxa_devices", "seed", "fov_mm", "fine_voxel_mm", "orientations")
    assert all(getattr(out, f) == getattr(base, f) for f in same)
    assert shift_cohort(base, "D", 7).sites["D"].scanners == base.sites["D"].scanners          # the reference


def test_every_demo_shift_keeps_the_reference_patients_and_dxa(demo):
    """Paired by construction: a shift site's plans draw the same bone, DXA rows, dates and levels as the reference."""
    rcfg = demo.robustness
    ref = shift_cohort(demo.cohort, rcfg.base_site, rcfg.n_patients)
    assert rcfg.shifts
    for shift in rcfg.shifts:
        cfg = shift_cohort(demo.cohort, rcfg.base_site, rcfg.n_patients, shift)
        for i in range(6):
            a, b = plan_patient(ref, ref.sites[rcfg.base_site], i), plan_patient(cfg, cfg.sites[rcfg.base_site], i)
            assert (a.mrn, a.sex, a.age, a.bone.vbmd, a.dxa_rows) == (b.mrn, b.sex, b.age, b.bone.vbmd, b.dxa_rows)
            assert [s.protocol.levels for s in a.studies] == [s.protocol.levels for s in b.studies], shift.name
            assert all(s.scanner.endswith(f"~{shift.name}") for s in b.studies if shift.scanner)


def test_demo_shift_magnitudes_lie_beyond_the_training_scanners(demo):
    """Every value a demo shift sets lies outside the range of sites A-C (their scanners and contrast shares)."""
    params = demo.as_dict()["cohort"]
    training = [s for s in params["sites"].values() if not s["external"]]
    used = {sc for s in training for sc in s["scanners"]}
    ranges = training_ranges(demo.cohort)
    for key in ("hu_slope", "hu_offset", "noise_hu", "psf_fwhm_mm"):
        vals = [params["scanners"][sc][key] for sc in used]
        assert ranges[key] == (min(vals), max(vals))
    assert ranges["slice_mm"] == (min(min(params["scanners"][sc]["slice_mm"]) for sc in used),
                                  max(max(params["scanners"][sc]["slice_mm"]) for sc in used))
    assert ranges["contrast_share"] == (min(s["contrast_share"] for s in training),
                                        max(s["contrast_share"] for s in training))
    keys = set()
    for shift in demo.robustness.shifts:
        out = outside_training(shift, ranges)
        assert out and all(out.values()), f"{shift.name}: {out} inside the training range {ranges}"
        keys |= set(out)
    assert keys == {"hu_slope", "hu_offset", "noise_hu", "psf_fwhm_mm", "slice_mm", "contrast_share"}  # all covered
    assert "combined" in {s.name for s in demo.robustness.shifts}
    assert len(demo.robustness.shift("combined").values()) == 6


@pytest.mark.parametrize("section, message", [
    ({"shifts": {"x": {"kvp": 80}}}, "a shift sets one or more of"),
    ({"shifts": {"x": {}}}, "a shift sets one or more of"),
    ({"shifts": {"x": {"noise_hu": -1}}}, "must be finite and > 0"),
    ({"shifts": {"x": {"contrast_share": 1.5}}}, "a fraction in [0, 1]"),
    ({"shifts": {"bad name+": {"noise_hu": 30}}}, "name it with letters"),
    ({"shifts": {REFERENCE: {"noise_hu": 30}}}, "name it with letters"),
    ({"base_site": "Z"}, "is not in cohort.sites"),
    ({"n_patients": 1}, ">= 2 patients"),
    ({"colour": 1}, "unknown keys"),
])
def test_an_invalid_section_is_refused_with_the_key(demo, section, message):
    params = demo.as_dict()
    params["robustness"] = section
    with pytest.raises(RobustnessConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        RobustnessConfig.from_params(params)


def test_a_slice_overlay_that_would_unpair_the_patients_is_refused(demo):
    one = ShiftConfig.parse("one_slice", {"slice_mm": [5.0]})          # canon_aquilion offers 3 choices
    with pytest.raises(RobustnessConfigError, match="no longer holds the same patients"):
        shift_cohort(demo.cohort, "D", 5, one)


# ---------------------------------------------------------------------------- the table

def _pred(n_patients: int, seed: int = 0, flip: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = int(p % 3 != 0)
        for lv in (13, 14, 15, 16):
            s = float(np.clip(0.5 + (0.3 if y else -0.3) + rng.normal(0, 0.1), 0, 1))
            rows.append({"vertebra_id": f"p{p}:s{p}:{lv}", "patient_id": f"p{p}", "site": "D", "level": lv,
                         "y_true": y, "score": 1 - s if p < flip else s, "bmd_true": 0.8, "bmd_pred": 0.8})
    return pd.DataFrame(rows)


def _site(name, pred, quarantine=(), studies=30, shift=None):
    from features.quarantine import COLUMNS
    from screening.robustness import SiteRun
    q = pd.DataFrame([dict(zip(COLUMNS, r)) for r in quarantine], columns=list(COLUMNS))
    return SiteRun(name, shift, pred, q, {"studies": studies, "studies_ingested": studies - len(q)})


def test_paired_difference_is_zero_on_identical_outputs_and_counts_common_patients():
    from screening.robustness_report import paired_vs_reference
    cfg = dataclasses.replace(EvaluateConfig(), sites=("D",), external_sites=("D",), n_boot=50, n_perm=50)
    ref = _pred(30)
    same = paired_vs_reference(ref, ref, 0.5, cfg)
    assert same["n_patients_common"] == 30 and same["n_label_mismatch"] == 0
    assert all(same[k]["diff"] == 0.0 for k in ("sen", "spe", "f1", "auroc"))
    worse = paired_vs_reference(_pred(30, flip=6)[lambda d: d["patient_id"] != "p29"], ref, 0.5, cfg)
    assert worse["n_patients_common"] == 29 and worse["f1"]["diff"] < 0 and worse["auroc"]["diff"] < 0


def test_a_quarantined_site_is_reported_with_its_reasons_and_does_not_pass(demo):
    """Calibration failing under a shift is a finding: the row counts the reasons and no target passes on it."""
    from screening import robustness_report as R
    from screening.model import ServingModel
    from screening.robustness import RobustnessInputs

    shift = ShiftConfig.parse("broken", {"hu_slope": 0.6})
    reasons = [("s1", "study", "CalibrationFitError", "calibration slope 1.667 outside [0.8, 1.25]", "calibration"),
               ("s2", "study", "CalibrationFitError", "calibration slope 1.667 outside [0.8, 1.25]", "calibration"),
               ("s3", "study", "CalibrationReferenceError", "air saturated", "calibration")]
    runs = [_site(REFERENCE, _pred(30)), _site("broken", pd.DataFrame(), reasons, studies=3, shift=shift),
            _site("noise", _pred(30, seed=1), shift=ShiftConfig.parse("noise", {"noise_hu": 35}))]
    inputs = RobustnessInputs(robustness=dataclasses.replace(demo.robustness, n_patients=30), cohort=demo.cohort,
                              ingest=demo.ingest, texture=demo.texture, store=demo.store,
                              evaluate=dataclasses.replace(demo.evaluate, n_boot=50, n_perm=50),
                              tracking=demo.tracking, geometry=demo.io_geometry(), model_name="osteo-screening",
                              profile="demo")
    model = ServingModel(uri="models:/osteo-screening@champion", name="osteo-screening", version="3", pyfunc=None,
                         contract={}, threshold=0.5, interval=None, drift=None)
    record = R.build_record(runs, inputs, model, 12.0)
    ref, broken, noise = record["sites"]
    assert broken["studies_quarantined"] == 3
    assert broken["quarantined_by_reason"] == {"CalibrationFitError": 2, "CalibrationReferenceError": 1}
    assert broken["n_patients"] == 0 and broken["targets"] == {"sen": None, "f1": None} and not broken["passed"]
    assert noise["vs_reference"]["n_patients_common"] == 30 and "f1" in noise["targets"]
    assert "f1" not in ref["targets"] and not record["all_shifts_passed"]
    table = R.markdown_table(record)
    line = next(x for x in table.splitlines() if x.startswith("| `broken`"))
    assert "3 / 3 (CalibrationFitError 2, CalibrationReferenceError 1)" in line and "n/a (no evidence)" in line
    assert "hu_slope 0.6 (train 0.97–1.02)" in line
    json.dumps(record, allow_nan=False)                                     # strict JSON
    metrics = R.scalar_metrics(record)
    assert metrics["broken.studies_quarantined"] == 3 and metrics["broken.passed"] == 0.0
    ids = set(_pred(30)["patient_id"]) | set(_pred(30)["vertebra_id"])
    assert not [k for k in metrics if set(k.split(".")) & ids]              # aggregates only, no identifier


def test_the_markdown_block_replaces_only_its_own_markers(tmp_path):
    from osteo_model.ablation import BEGIN, END, write_table
    from screening.robustness_report import MARKERS
    md = tmp_path / "results.md"
    md.write_text(f"# Results\n\n{BEGIN}\nablation\n{END}\n")
    for body in ("first", "second"):
        write_table(md, body, "head", markers=MARKERS)
    text = md.read_text()
    assert f"{BEGIN}\nablation\n{END}" in text and text.count(MARKERS[0]) == 1
    assert "second" in text and "first" not in text


# ---------------------------------------------------------------------------- end to end (tiny)

def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_champion(tmp_path_factory):
    """(params, tracking URI): a tiny model trained on contract-shaped pools with the tiny profile's ingest and
    texture settings and calibration version, registered as champion."""
    from mlflow import MlflowClient

    from features.calibration import CALIBRATION_VERSION
    from osteo_model.stages import run_finetune_stage, run_pretrain_stage
    from registry.registry import _source

    train = _load("_train_fixture_robustness", "tests/osteo_model/test_experiment.py")
    root = tmp_path_factory.mktemp("robust-champion")
    params = train.write_inputs(root)
    vpath = root / "interim" / "ingest" / "vertebrae.parquet"
    pd.read_parquet(vpath).assign(cal_version=CALIBRATION_VERSION).to_parquet(vpath)   # calibrated, as ingested
    spec = Config.from_params(params).experiment()
    run_pretrain_stage(spec, "tp_swav", root / "models")
    rec = run_finetune_stage(spec, "tp_swav", root / "models", root / "metrics" / "train.json")
    uri = params["tracking"]["uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = params["registry"]["model_name"]
    client.create_registered_model(name)
    source, run_id, model_id = _source(client, rec["model_uri"])
    mv = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    return params, uri


@pytest.mark.slow          # one tiny training (~20 s), then 3 sites x (simulate + ingest + texture + Feast + score)
def test_robustness_end_to_end_on_the_tiny_profile(tiny_champion, tmp_path):
    from mlflow import MlflowClient

    from osteo import steps

    params, uri = tiny_champion
    params = copy.deepcopy(params)
    params["paths"].update(metrics=str(tmp_path / "metrics"), data=str(tmp_path / "data"))
    params["robustness"] = {"base_site": "D", "n_patients": 3,
                            "shifts": {"noise_35": {"noise_hu": 35.0},
                                       "broken": {"hu_slope": 0.6}}}   # calibration slope 1/0.6 > 1.25: refused
    cfg = Config.from_params(params)
    md = tmp_path / "results.md"
    record = steps.robustness(cfg, out_md=md, progress=False)

    ref, noise, broken = record["sites"]
    assert [r["site"] for r in record["sites"]] == [REFERENCE, "noise_35", "broken"]
    # the reference and the noise shift are screened on the same patients (paired by construction)
    assert ref["n_patients"] > 0 and ref["studies_quarantined"] == 0
    assert noise["vs_reference"]["n_patients_common"] == min(ref["n_patients"], noise["n_patients"]) > 0
    assert noise["vs_reference"]["n_label_mismatch"] == 0 and noise["outside_training"] == {"noise_hu": True}
    # the calibration-breaking shift: every study quarantined with its reason, no evidence, no pass
    assert broken["studies_quarantined"] == broken["studies"] > 0
    assert sum(broken["quarantined_by_reason"].values()) == broken["studies"]
    assert broken["n_patients"] == 0 and not broken["passed"] and not record["all_shifts_passed"]
    # outputs: JSON (metrics/), the markdown block, one MLflow run with metrics per site and no identifier
    assert json.loads((tmp_path / "metrics" / "robustness.json").read_text())["sites"][2]["site"] == "broken"
    text = md.read_text()
    assert "<!-- robustness-table:begin -->" in text and "| `broken`" in text
    assert next(iter(broken["quarantined_by_reason"])) in text
    run = MlflowClient(tracking_uri=uri).get_run(record["run_id"])
    assert run.info.run_name == "robustness" and run.data.metrics["broken.studies_quarantined"] == broken["studies"]
    assert run.data.metrics["reference.n_patients"] == ref["n_patients"]
    pred = pd.read_parquet(tmp_path / "data" / "robustness" / REFERENCE / "predictions.parquet")
    logged = json.dumps({"p": run.data.params, "m": run.data.metrics, "t": run.data.tags})
    assert not [p for p in pred["patient_id"].unique() if p in logged]
    # without keep_work only the tables stay (no export, ROI or pool)
    for site in (REFERENCE, "noise_35", "broken"):
        left = {p.name for p in (tmp_path / "data" / "robustness" / site).iterdir()}
        assert left <= {"predictions.parquet", "quarantine.parquet", "site.json", ".robustness-site"}
