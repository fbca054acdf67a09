"""ROI extraction: orientation invariance, mask conventions, body-mask rule, FOV padding."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from features.errors import VertebraTooSmallError
from features.io.volume import Volume, read_nifti, to_ras
from features.roi import body_mask, ellipsoid, extract_rois, largest_component
from features.ingest import roi_spec, study_checks
from features.study import StudyTask, process_study


def _run(tmp_path, synth, ct_path, mask_path, mask_format="totalseg", ct_format="nifti", cfg=None):
    cfg = cfg or synth.config()
    task = StudyTask("s0", str(ct_path), ct_format, str(mask_path), mask_format)
    return process_study(task, roi_spec(cfg), study_checks(cfg), str(tmp_path / "out"))


def _load(tmp_path, res):
    out = {}
    for r in res.rois:
        with np.load(tmp_path / "out" / r["roi_path"]) as z:
            out[r["level"]] = (z["hu"], z["body"])
    return out


def test_lps_and_permuted_storage_give_identical_rois(tmp_path, synth, phantom):
    # purpose: geometry comes from the affine; voxel order on disk must not change a single ROI voxel
    hu, lab, aff, _ = phantom
    seg = synth.to_totalseg(lab)
    ras = _run(tmp_path, synth, synth.save_nifti(hu, aff, tmp_path / "ras/ct.nii.gz"),
               synth.save_nifti(seg, aff, tmp_path / "ras/seg.nii.gz"))
    hu_l, aff_l = synth.to_lps_storage(hu, aff)
    seg_l, _ = synth.to_lps_storage(seg, aff)
    assert not np.array_equal(hu_l, hu)
    lps = _run(tmp_path, synth, synth.save_nifti(hu_l, aff_l, tmp_path / "lps/ct.nii.gz"),
               synth.save_nifti(seg_l, aff_l, tmp_path / "lps/seg.nii.gz"))
    # (z, x, y) storage order: transpose the voxel axes and permute the affine columns to match
    perm = (2, 0, 1)
    aff_p = aff.copy()
    aff_p[:3, :3] = aff[:3, :3][:, perm]
    per = _run(tmp_path, synth, synth.save_nifti(np.transpose(hu, perm).copy(), aff_p, tmp_path / "p/ct.nii.gz"),
               synth.save_nifti(np.transpose(seg, perm).copy(), aff_p, tmp_path / "p/seg.nii.gz"))
    assert ras.ok and lps.ok and per.ok and len(ras.rois) == 3
    a, b, c = _load(tmp_path, ras), _load(tmp_path, lps), _load(tmp_path, per)
    for level in a:
        assert np.array_equal(a[level][0], b[level][0]) and np.array_equal(a[level][1], b[level][1])
        assert np.array_equal(a[level][0], c[level][0]) and np.array_equal(a[level][1], c[level][1])
    assert [r["roi_sha256"] for r in ras.rois] == [r["roi_sha256"] for r in lps.rois]


def test_to_ras_restores_canonical_axes(synth, phantom):
    hu, _, aff, _ = phantom
    hu_l, aff_l = synth.to_lps_storage(hu, aff)
    back = to_ras(Volume(hu_l, aff_l))
    assert np.array_equal(back.array, hu)
    np.testing.assert_allclose(back.affine, aff, atol=1e-9)


@pytest.mark.parametrize("fmt", ["totalseg_dir", "verse"])
def test_mask_conventions_give_same_rois(tmp_path, synth, phantom, fmt):
    # purpose: TotalSegmentator ids, its per-vertebra folder and VerSe ids denote the same levels
    hu, lab, aff, _ = phantom
    ct = synth.save_nifti(hu, aff, tmp_path / "ct.nii.gz")
    ref = _run(tmp_path, synth, ct, synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz"))
    if fmt == "verse":
        mask = synth.save_nifti(synth.to_verse(lab), aff, tmp_path / "seg_verse.nii.gz")
    else:
        mask = synth.write_totalseg_dir(lab, aff, tmp_path / "seg")
    other = _run(tmp_path, synth, ct, mask, mask_format=fmt)
    assert [r["level"] for r in ref.rois] == [12, 13, 14]
    assert [(r["level"], r["roi_sha256"]) for r in ref.rois] == [(r["level"], r["roi_sha256"]) for r in other.rois]


def _iso_phantom(synth, ring_mm):
    hu, lab, aff, truth = synth.make_phantom(ring_mm=ring_mm, spacing=(1.0, 1.0, 1.0), shape=(40, 45, 70))
    return lab, truth


def test_body_mask_strips_thin_posterior_elements(synth):
    # purpose: opening removes laminae/spinous process thinner than the ball; the body survives
    lab, truth = _iso_phantom(synth, ring_mm=2.5)
    y = np.arange(lab.shape[1])[None, :, None]
    for level, body_true in truth["body"].items():
        body = body_mask(lab == level, np.ones(3), 2.0)
        post = truth["posterior"][level]
        wall = np.nonzero(body_true)[1].min()           # posterior body wall = canal's anterior wall
        assert not (body & post & (y <= wall)).any()    # nothing behind the wall survives
        assert (body & post).sum() <= 0.01 * body_true.sum()  # only junction voxels beside the wall
        assert (body & body_true).sum() >= 0.85 * body_true.sum()


def test_body_mask_cuts_thick_pedicles_at_the_canal(synth):
    # purpose: an arch thicker than the opening ball survives opening; the canal rule must cut it off
    lab, truth = _iso_phantom(synth, ring_mm=6.0)
    level = 13
    vert = lab == level
    opened_only = largest_component(ndimage.binary_opening(np.pad(vert, 3), structure=ellipsoid(2.0, np.ones(3))))
    opened_only = opened_only[3:-3, 3:-3, 3:-3]
    post = truth["posterior"][level]
    assert (opened_only & post).sum() > 50, "fixture must have an arch that survives the opening"
    body = body_mask(vert, np.ones(3), 2.0)
    y = np.arange(lab.shape[1])[None, :, None]
    wall = np.nonzero(truth["body"][level])[1].min()
    assert not (body & post & (y <= wall)).any()
    assert (body & post).sum() <= 0.02 * truth["body"][level].sum()
    assert (body & truth["body"][level]).sum() >= 0.8 * truth["body"][level].sum()


def test_roi_outside_field_of_view_is_padded(synth):
    # purpose: a body at the FOV edge gives an ROI padded with the window minimum and body 0
    hu, lab, aff, _ = synth.make_phantom()
    cut = 4                                     # keep only 4 slices above the top vertebra's mid-height
    top_z = np.nonzero(lab == 12)[2]
    zmax = int((top_z.min() + top_z.max()) // 2 + cut)
    hu, lab = hu[:, :, :zmax], lab[:, :, :zmax]
    cfg = synth.config()
    res = extract_rois(Volume(hu.astype(np.float32), aff), Volume(lab, aff), roi_spec(cfg), "s", [12, 13])
    roi = res[0]
    assert not isinstance(roi, VertebraTooSmallError)
    lo = cfg.hu_window[0]
    top = roi.hu[:, :, -2:]
    assert np.all(top == lo) and not roi.body[:, :, -2:].any()
    assert roi.hu.min() >= lo and roi.hu.max() <= cfg.hu_window[1] and roi.hu.dtype == np.float32


def test_tiny_label_is_too_small(synth, phantom):
    hu, lab, aff, _ = phantom
    lab = lab.copy()
    lab[lab == 12] = 0
    lab[20:23, 30:33, 50:53] = 12               # a 27-voxel speck labelled T12
    res = extract_rois(Volume(hu.astype(np.float32), aff), Volume(lab, aff), roi_spec(synth.config()), "s",
                       [12, 13, 14])
    assert type(res[0]) is VertebraTooSmallError and res[0].item == "s:12"
    assert not isinstance(res[1], VertebraTooSmallError)


def test_trabecular_stats_exclude_cortex(synth, phantom):
    # purpose: the eroded core reads the trabecular HU (150 + 20 n), not the 600 HU shell
    hu, lab, aff, _ = phantom
    cfg = synth.config(core_erosion_mm=2.0)
    res = extract_rois(Volume(hu.astype(np.float32), aff), Volume(lab, aff), roi_spec(cfg), "s", [12, 13, 14])
    for n, roi in enumerate(res):
        assert abs(roi.stats["hu_p50"] - (150 + 20 * n)) < 10
        assert roi.stats["hu_p05"] <= roi.stats["hu_p50"] <= roi.stats["hu_p95"]
        assert roi.stats["body_voxels"] == int(roi.body.sum())


def test_dxa_descriptors_of_a_box_vertebra_with_a_posterior_element():
    # purpose: the descriptors are what an AP projection integrates: body size from the body mask, and the HU
    # through the WHOLE label (posterior elements behind the body count where they project onto the body box)
    from features.roi import DESCRIPTOR_COLUMNS, dxa_descriptors
    spacing = np.array([1.0, 0.5, 2.0])
    body = np.zeros((30, 40, 20), bool)
    body[5:25, 10:30, 5:15] = True                       # 20 x (20 x 0.5 = 10 mm) x (10 x 2 = 20 mm)
    spine = np.zeros_like(body)
    spine[12:18, 0:10, 5:15] = True                      # a process behind the body, 6 columns wide, 10 x 0.5 mm deep
    vert = body | spine
    hu = np.full(body.shape, 40.0)                       # soft tissue outside the label must not count
    hu[body] = 200.0
    hu[spine] = 500.0
    d = dxa_descriptors(hu, vert, body, spacing)
    assert d["body_height_mm"] == pytest.approx(20.0) and d["proj_area_mm2"] == pytest.approx(20 * 1.0 * 20.0)
    assert d["body_width_mm"] == pytest.approx(20.0) and d["body_depth_mm"] == pytest.approx(10.0)
    # per (x, z) column: 200 HU x 10 mm through the body, + 500 HU x 5 mm where the process lies (6 of 20 columns)
    assert d["proj_hu_mm"] == pytest.approx(200 * 10 + 500 * 5 * 6 / 20)
    assert d["proj_path_mm"] == pytest.approx(10 + 5 * 6 / 20)
    d2 = dxa_descriptors(1.1 * hu - 30, vert, body, spacing)             # a recalibrated scan: exact linear rule
    assert d2["proj_hu_mm"] == pytest.approx(1.1 * d["proj_hu_mm"] - 30 * d["proj_path_mm"])
    hu_nan = hu.copy()
    hu_nan[:, :, :10] = np.nan                           # half the body outside the field of view counts 0
    assert dxa_descriptors(hu_nan, vert, body, spacing)["proj_hu_mm"] == pytest.approx(d["proj_hu_mm"] / 2)
    assert set(DESCRIPTOR_COLUMNS) == set(d) | {"shell_hu"}


def test_extract_rois_records_shell_and_descriptors(synth, phantom):
    # purpose: every ROI carries the descriptors; a denser shell reads above the trabecular mean
    from features.roi import DESCRIPTOR_COLUMNS
    hu, lab, aff, _ = phantom
    cfg = synth.config()
    rois = extract_rois(to_ras(Volume(hu.astype(np.float32), aff)), to_ras(Volume(lab, aff)), roi_spec(cfg), "s0",
                        [int(v) for v in np.unique(lab) if v > 0])
    ok = [r for r in rois if not isinstance(r, Exception)]
    assert ok
    for r in ok:
        assert set(DESCRIPTOR_COLUMNS) <= set(r.stats) and all(np.isfinite(r.stats[k]) for k in DESCRIPTOR_COLUMNS)
        assert r.stats["body_height_mm"] > 0 and r.stats["proj_area_mm2"] > 0
