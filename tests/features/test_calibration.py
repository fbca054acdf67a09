"""Phantomless internal calibration (features/calibration.py) on the simulator's anatomy.

Studies are rendered with ``cohort.ct.render_study`` (air behind the back,
subcutaneous fat, soft tissue, aorta, spine) under scanners whose HU transform
``HU_measured = s * HU_true + o`` is known, so the fitted correction can be
checked against its exact inverse ``(1/s, -o/s)``. The same render seed gives
the same anatomy and noise pattern under every scanner: only the calibration
differs, so calibrated HU of the same bone must agree.

Tolerances (stated once): the fitted line maps every HU in [-1000, 1000] to within
``TOL_HU`` = 2 HU of the truth (i.e. |d slope| * 1000 + |d intercept| <= 2 HU);
with saturated air (fat + blood only) within 4 HU over [-100, 400].
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cohort.config import CohortConfig
from cohort.ct import body_network, render_study
from cohort.plan import NETWORK_STREAM, RENDER_STREAM, patient_rng, plan_patient
from cohort.writers import save_nifti, write_mask
from features.calibration import (CALIBRATION_VERSION, CalibrationFitError, CalibrationReferenceError,
                                  calibrate_study, fit_line, robust_level)
from features.ingest import IngestConfig, roi_spec, study_checks
from features.io.volume import Volume
from features.roi import extract_rois
from features.study import StudyTask, process_study
from osteo_config.ingest import CalibrationConfig
from osteo_config.params import load_params

REPO = Path(__file__).resolve().parents[2]
TOL_HU = 2.0
CAL = CalibrationConfig()


@pytest.fixture(scope="module")
def cohort_cfg() -> CohortConfig:
    return CohortConfig.from_params(load_params(REPO / "params.yaml", "demo"))


def render(cfg: CohortConfig, index: int, slope: float, offset: float, contrast: bool = False, site: str = "A",
           phys=None):
    """(rendered study, protocol) of patient ``index``'s first study under a scanner with this HU transform."""
    plan = plan_patient(cfg, cfg.sites[site], index)
    st = plan.studies[0]
    proto = replace(st.protocol, contrast=contrast)
    nets = {lv: body_network(patient_rng(cfg.seed, site, index, NETWORK_STREAM, lv), plan.bone.vertebra(lv),
                             plan.bone.vbmd[lv], cfg.fine_voxel_mm, cfg.bone) for lv in proto.levels}
    scanner = replace(cfg.scanners["siemens_force"], hu_slope=slope, hu_offset=offset)
    rng = patient_rng(cfg.seed, site, index, RENDER_STREAM, st.index)
    r = render_study(rng, plan.bone, proto, scanner, phys or cfg.ct, cfg.bone, nets, cfg.fov_mm, cfg.fine_voxel_mm)
    return r, proto


def fit(r, contrast: bool | None, hu: np.ndarray | None = None, cfg: CalibrationConfig = CAL,
        labels: np.ndarray | None = None):
    return calibrate_study(r.hu if hu is None else hu, np.asarray(r.geometry.spacing),
                           r.labels if labels is None else labels, cfg, "sid", contrast)


def max_error_hu(cal, slope: float, offset: float, lo: float = -1000.0, hi: float = 1000.0) -> float:
    """Largest |calibrated - true| HU over [lo, hi] when the scanner applied (slope, offset)."""
    true = np.array([lo, hi])
    return float(np.max(np.abs(cal.slope * (slope * true + offset) + cal.intercept - true)))


# --- pure maths ---------------------------------------------------------------
def test_wls_line_matches_numpy_polyfit_and_is_exact_through_two_points():
    rng = np.random.default_rng(0)
    m, w = rng.normal(0, 300, 6), rng.uniform(0.1, 3, 6)
    r = 0.97 * m + 12 + rng.normal(0, 5, 6)
    ref = np.polyfit(m, r, 1, w=np.sqrt(w))               # polyfit weights multiply residuals (sqrt of WLS weights)
    assert np.allclose(fit_line(m, r, w), ref, atol=1e-9)
    assert np.allclose(fit_line([-992.0, -92.0], [-1000.0, -100.0], [1.0, 1e-6]), (1.0, -8.0))


def test_median_survives_censoring_at_the_storage_floor_and_the_normal_fallback_recovers_the_level():
    rng = np.random.default_rng(1)
    for true in (-1015.0, -1030.0, -1040.0):               # 23 %, 62 %, 79 % below the -1024 floor
        v = np.clip(np.rint(rng.normal(true, 20.0, 200_000)), -1024, None)
        level, mad, censored = robust_level(v)
        assert abs(level - true) <= 2.0, (true, level, censored)   # integer HU + quantile noise
        assert censored > 0.2
    level, _, censored = robust_level(rng.normal(-1000, 20, 10_000))
    assert censored == 0.0 and abs(level + 1000) < 1.5      # no pile-up: plain median


# --- recovery of the scanner's transform ------------------------------------------
@pytest.mark.parametrize("slope,offset", [(1.00, 8.0), (0.98, -12.0), (1.02, 15.0), (0.90, -40.0), (1.03, 30.0)])
def test_fit_recovers_the_inverse_of_the_scanner_transform(cohort_cfg, slope, offset):
    r, _ = render(cohort_cfg, 0, slope, offset)
    cal = fit(r, contrast=False)
    assert [x.name for x in cal.references] == ["air", "fat", "blood"]
    assert abs(cal.slope - 1 / slope) <= TOL_HU / 1000 and abs(cal.intercept + offset / slope) <= TOL_HU
    assert max_error_hu(cal, slope, offset) <= TOL_HU
    assert max(abs(v) for v in cal.residuals().values()) <= 2.0


def test_same_bone_under_two_scanner_calibrations_agrees_after_calibration(cohort_cfg):
    """Per-level trabecular mean HU of one patient under s/o = 0.92/-30 and 1.03/+25 HU."""
    spec = roi_spec(IngestConfig())
    means = {}
    for key, (s, o) in {"low": (0.92, -30.0), "high": (1.03, 25.0)}.items():
        r, proto = render(cohort_cfg, 1, s, o)
        cal = fit(r, contrast=False)
        lab = Volume(r.labels, r.geometry.affine)
        for tag, hu in (("raw", r.hu.astype(np.float32)), ("cal", cal.apply(r.hu))):
            rois = extract_rois(Volume(hu, r.geometry.affine), lab, spec, "sid", list(proto.levels))
            means[key, tag] = np.array([roi.stats["hu_mean"] for roi in rois])
    raw = np.abs(means["high", "raw"] - means["low", "raw"])
    cal = np.abs(means["high", "cal"] - means["low", "cal"])
    assert raw.min() > 40.0                                 # the scanners disagree by 40-70 HU on trabecular bone
    assert cal.max() <= TOL_HU                              # after calibration: within the fit tolerance
    assert cal.mean() <= raw.mean() / 20


# --- contrast: blood is no reference ------------------------------------------------
@pytest.mark.parametrize("declared", [True, None])
def test_contrast_or_unknown_studies_do_not_use_blood(cohort_cfg, declared):
    r, _ = render(cohort_cfg, 2, 1.02, 15.0, contrast=True)
    cal = fit(r, contrast=declared)
    assert [x.name for x in cal.references] == ["air", "fat"]
    rec = cal.record()
    assert np.isnan(rec["ref_blood_hu"]) and rec["cal_version"] == CALIBRATION_VERSION
    assert max_error_hu(cal, 1.02, 15.0) <= TOL_HU          # air + fat alone recover the line


def test_blood_would_bias_a_contrast_study_so_excluding_it_matters(cohort_cfg):
    """The property behind the rule: on a contrast study the para-aortic region is enhanced."""
    r, _ = render(cohort_cfg, 2, 1.0, 0.0, contrast=True)
    with_blood = calibrate_study(r.hu, np.asarray(r.geometry.spacing), r.labels,
                                 replace(CAL, max_residual_hu=1e9), "sid", contrast=False)
    blood = {x.name: x.measured_hu for x in with_blood.references}["blood"]
    assert blood - CAL.blood_hu >= 15.0                     # enhanced 20-40 HU above unenhanced blood


# --- saturated air --------------------------------------------------------------------
def test_air_below_the_storage_floor_falls_back_to_fat_and_blood(cohort_cfg):
    r, _ = render(cohort_cfg, 0, 1.10, 0.0)                 # air at -1100 HU: all clipped to -1024
    cal = fit(r, contrast=False)
    assert [x.name for x in cal.references] == ["fat", "blood"]
    assert np.isnan(cal.record()["ref_air_hu"])
    assert max_error_hu(cal, 1.10, 0.0, -100.0, 400.0) <= 2 * TOL_HU
    rc, _ = render(cohort_cfg, 0, 1.10, 0.0, contrast=True)
    with pytest.raises(CalibrationReferenceError) as err:
        fit(rc, contrast=True)
    assert err.value.reference == "air" and "storage floor" in str(err.value)


# --- missing references: typed errors --------------------------------------------------
def test_fov_cut_at_the_skin_has_no_air(cohort_cfg):
    r, proto = render(cohort_cfg, 0, 1.0, 8.0)
    ys = r.geometry.axes()[1]
    keep = ys >= -proto.back_depth_mm + 112.0 ** 2 / 4 / 300 + 1.0   # posterior to the skin everywhere: gone
    with pytest.raises(CalibrationReferenceError) as err:
        fit(r, contrast=False, hu=np.ascontiguousarray(r.hu[:, keep]), labels=np.ascontiguousarray(r.labels[:, keep]))
    assert err.value.reference == "air" and err.value.stage == "calibration"


def test_study_without_fat_has_no_fat_reference(cohort_cfg):
    r, _ = render(cohort_cfg, 0, 1.0, 8.0, phys=replace(cohort_cfg.ct, fat_hu=cohort_cfg.ct.soft_tissue_hu))
    with pytest.raises(CalibrationReferenceError) as err:
        fit(r, contrast=False)
    assert err.value.reference == "fat"


def test_implausible_slope_is_a_fit_error(cohort_cfg):
    r, _ = render(cohort_cfg, 0, 1.0, 8.0)
    with pytest.raises(CalibrationFitError, match="slope"):
        fit(r, contrast=False, hu=np.rint(0.7 * r.hu.astype(np.float32)).astype(np.int16))


# --- through per-study processing ---------------------------------------------------------
def _write_study(tmp_path: Path, r, name: str, hu: np.ndarray | None = None) -> StudyTask:
    d = tmp_path / name
    save_nifti(d / "ct.nii.gz", r.hu if hu is None else hu, r.geometry.affine)
    mask = write_mask(d, r.labels, r.geometry.affine, "verse")
    return StudyTask(name, str(d / "ct.nii.gz"), "nifti", str(d / mask), "verse", contrast=False)


def test_process_study_cuts_rois_from_calibrated_hu_and_records_the_line(cohort_cfg, tmp_path):
    r, proto = render(cohort_cfg, 0, 0.92, -30.0)
    cfg = IngestConfig()
    task = _write_study(tmp_path, r, "s1")
    on = process_study(task, roi_spec(cfg), study_checks(cfg), str(tmp_path / "out"))
    off = process_study(task, roi_spec(cfg), study_checks(replace(cfg, calibration=CalibrationConfig(enabled=False))),
                        str(tmp_path / "out"))
    assert on.ok and [q.reason for q in on.quarantine] == []
    rec = on.calibration
    assert rec["cal_version"] == CALIBRATION_VERSION and abs(rec["cal_slope"] - 1 / 0.92) <= TOL_HU / 1000
    assert all(np.isfinite(rec[f"ref_{n}_hu"]) for n in ("air", "fat", "blood"))
    assert off.calibration["cal_version"] == "none"
    for a, b in zip(on.rois, off.rois):                     # ROI stats are the calibrated ones
        assert a["roi_sha256"] != b["roi_sha256"]
        assert abs(a["hu_mean"] - (rec["cal_slope"] * b["hu_mean"] + rec["cal_intercept"])) < 0.05
    again = process_study(task, roi_spec(cfg), study_checks(cfg), str(tmp_path / "out"))
    assert [x["roi_sha256"] for x in again.rois] == [x["roi_sha256"] for x in on.rois]   # deterministic


def test_process_study_quarantines_a_study_without_air_with_the_typed_reason(cohort_cfg, tmp_path):
    r, proto = render(cohort_cfg, 0, 1.0, 8.0)
    geo = r.geometry
    keep = geo.axes()[1] >= -proto.back_depth_mm + 112.0 ** 2 / 4 / 300 + 1.0
    j0 = int(np.argmax(keep))
    aff = geo.affine.copy()
    aff[1, 3] += j0 * geo.spacing[1]
    cut = replace(r, hu=np.ascontiguousarray(r.hu[:, j0:]), labels=np.ascontiguousarray(r.labels[:, j0:]),
                  geometry=replace(geo, shape=(geo.shape[0], geo.shape[1] - j0, geo.shape[2]),
                                   origin=(geo.origin[0], geo.origin[1] + j0 * geo.spacing[1], geo.origin[2])))
    assert np.allclose(cut.geometry.affine, aff)
    cfg = IngestConfig()
    res = process_study(_write_study(tmp_path, cut, "s2"), roi_spec(cfg), study_checks(cfg), str(tmp_path / "out"))
    assert not res.ok and res.rois == []
    (q,) = res.quarantine
    assert (q.kind, q.reason, q.stage) == ("study", "CalibrationReferenceError", "calibration")
    assert "'air'" in q.detail and "field of view" in q.detail


# --- configuration --------------------------------------------------------------------------
def test_params_calibration_section_parses_and_rejects_unknown_keys():
    params = load_params(REPO / "params.yaml", "demo")
    cal = IngestConfig.from_params(params).calibration
    assert cal.enabled and cal.slope_range == (0.8, 1.25) and cal.air_hu == -1000.0
    bad = {"ingest": {**params["ingest"], "calibration": {**params["ingest"]["calibration"], "slop": 1}}}
    with pytest.raises(ValueError, match="slop"):
        IngestConfig.from_params(bad)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 1.0), (0.8, 0.96, 1.25), (0.9765625, 0.9765625, 2.5), (1.5, 1.5, 1.5)])
def test_chord_morphology_equals_the_distance_transform_rule(spacing):
    """inplane_core / inplane_near are exactly the EDT thresholds they replace (open disc, array edge not background)."""
    from scipy import ndimage

    from features.calibration import _inplane_edt, inplane_core, inplane_near
    rng = np.random.default_rng(int(spacing[0] * 1000))
    sp = np.asarray(spacing)
    for _ in range(6):
        shape = tuple(int(v) for v in rng.integers(10, 36, 3))
        m = ndimage.binary_opening(rng.random(shape) < 0.8) | (rng.random(shape) < 0.5)
        for r in (1.0, 1.5, 3.0, 5.0):
            assert np.array_equal(inplane_core(m, r, sp), _inplane_edt(m, sp) >= r), (shape, r)
            assert np.array_equal(inplane_near(m, r, sp), _inplane_edt(~m, sp) < r), (shape, r)
    assert not inplane_near(np.zeros((4, 4, 4), bool), 3.0, sp).any()


def test_faster_segmentation_equals_the_whole_volume_reference(cohort_cfg):
    """Body outline (one flood per slice) and blood (inside the search boxes' bounding box only) are exactly
    the whole-volume scipy rules of osteo_testing.calibration_reference, also when the boxes reach the edge."""
    from features.calibration import StudyScene, _line, _measure, air_region, blood_region, body_outline, fat_region
    from osteo_testing.calibration_reference import blood_region_reference, body_outline_reference

    for index, site in ((0, "A"), (1, "B"), (2, "C")):
        r, _ = render(cohort_cfg, index, 1.0, 8.0, site=site)
        sp = np.asarray(r.geometry.spacing)
        scenes = [StudyScene.of(r.hu, sp, r.labels, np.ones(r.hu.shape, bool), CAL)]
        # the aorta's box cut by the array's left edge (x) and anterior edge (y): the crop is clipped there
        x0 = int(np.nonzero(r.labels.any(axis=(1, 2)))[0].min())
        y1 = int(np.nonzero(r.labels.any(axis=(0, 2)))[0].max())
        cut = (slice(max(x0 - 20, 0), None), slice(0, min(y1 + 15, r.hu.shape[1])), slice(None))
        scenes.append(StudyScene.of(r.hu[cut], sp, r.labels[cut], np.ones(r.hu[cut].shape, bool), CAL))
        for scene in scenes:
            assert np.array_equal(scene.body, body_outline_reference(scene.smooth, scene.valid, CAL.body_threshold_hu))
            refs = [_measure(scene, air_region(scene, CAL), "air", CAL), _measure(scene, fat_region(scene, CAL), "fat", CAL)]
            line = _line(refs)
            got, ref = blood_region(scene, CAL, *line), blood_region_reference(scene, CAL, *line)
            assert got.shape == ref.shape and np.array_equal(got, ref), (index, site)
    assert np.array_equal(body_outline(np.full((5, 5, 2), -900.0, np.float32), np.ones((5, 5, 2), bool), -500.0),
                          np.zeros((5, 5, 2), bool))
