"""Body-mask morphology: chord-decomposed ball operations and the 3-D canal search equal the reference.

Reference: ``osteo_testing.roi_reference`` (scipy ``binary_erosion`` / ``binary_opening`` with the
ball of ``features.roi.ellipsoid``, a per-slice ``binary_fill_holes`` canal loop, the first
``extract_rois``). Every comparison is exact (array_equal / ==): the new code is a faster way
to compute the same sets, not an approximation.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from features.ingest import roi_spec
from features.io.volume import Volume
from features.roi import body_mask, canal_front, dilate_ball, ellipsoid, erode_ball, extract_rois, open_ball
from osteo_testing.roi_reference import body_mask_reference, canal_front_reference, extract_rois_reference

SPACINGS = [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (0.7, 1.25, 2.0), (0.5, 0.5, 0.5), (3.0, 1.0, 0.8),
            (0.8, 0.8, 1e6)]                    # the last: an in-plane disc (chords along x)
RADII = [0.3, 1.0, 1.5, 2.0, 3.0, 3.7]


def _blobs(rng, shape, level=0.5):
    """Random smooth blobs (bool), the kind of shapes a label turns into after resampling."""
    return ndimage.gaussian_filter(rng.random(shape), 1.0) > level


@pytest.mark.parametrize("spacing", SPACINGS)
def test_ball_erosion_dilation_opening_equal_structuring_element(spacing):
    # purpose: erode/dilate/open_ball are exactly scipy's with the ellipsoid ball (border = background)
    rng = np.random.default_rng(sum(int(10 * s) for s in spacing))
    sp = np.asarray(spacing)
    n_changed = 0
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 22, 3))
        m = _blobs(rng, shape, rng.uniform(0.42, 0.58))
        if trial == 0:
            m[:] = True                          # only the border erodes it
        if trial == 1:
            m[:] = False
        r = float(RADII[trial % len(RADII)])
        ball = ellipsoid(r, sp)
        ero, ref_ero = erode_ball(m, r, sp), ndimage.binary_erosion(m, structure=ball)
        dil, ref_dil = dilate_ball(m, r, sp), ndimage.binary_dilation(m, structure=ball)
        assert np.array_equal(ero, ref_ero), (shape, r)
        assert np.array_equal(dil, ref_dil), (shape, r)
        assert np.array_equal(open_ball(m, r, sp), ndimage.binary_opening(m, structure=ball)), (shape, r)
        n_changed += int((ero != m).any())
    assert n_changed > 20, "the random masks must actually be changed by the erosions"


def test_nonpositive_radius_is_identity():
    m = _blobs(np.random.default_rng(3), (9, 8, 7))
    for fn in (erode_ball, dilate_ball, open_ball):
        assert np.array_equal(fn(m, 0.0, np.ones(3)), m)


def test_canal_front_equals_per_slice_reference():
    # purpose: one in-plane 3-D labelling finds the same canal wall as the slice-by-slice hole filling
    rng = np.random.default_rng(11)
    found = 0
    for trial in range(150):
        shape = tuple(int(n) for n in rng.integers(3, 30, 3))
        vert = _blobs(rng, shape, rng.uniform(0.4, 0.55))
        body = rng.random(shape) > 0.7
        if trial % 10 == 0:
            body[:] = False
        ref = canal_front_reference(vert, body)
        assert canal_front(vert, body) == ref
        found += ref is not None
    assert found > 30, "random shapes must contain canal-like holes"


@pytest.mark.parametrize("ring_mm", [2.5, 6.0])
def test_body_mask_equals_reference_on_phantom_vertebrae(synth, ring_mm):
    # purpose: thin arches (opening) and thick pedicles (canal cut + second opening) give the same body
    _, lab, _, _ = synth.make_phantom(ring_mm=ring_mm, spacing=(1.0, 1.0, 1.0), shape=(40, 45, 70))
    for level in np.unique(lab[lab > 0]):
        vert = lab == level
        new, ref = body_mask(vert, np.ones(3), 3.0), body_mask_reference(vert, np.ones(3), 3.0)
        assert ref.sum() > 500 and np.array_equal(new, ref)


@pytest.mark.parametrize("seed,spacing", [(0, (0.8, 0.8, 2.0)), (1, (0.7, 0.7, 1.5)), (2, (1.0, 1.0, 1.0))])
def test_extract_rois_equal_reference(synth, seed, spacing):
    # purpose: the ROIs (HU, body, every statistic) and the typed errors are unchanged, bit for bit
    hu, lab, aff, _ = synth.make_phantom(seed=seed, spacing=spacing)
    spec = roi_spec(synth.config())
    ct, levels = Volume(hu.astype(np.float32), aff), Volume(lab, aff)
    wanted = [int(v) for v in np.unique(lab) if v > 0] + [1]          # + a level absent from the mask
    new = extract_rois(ct, levels, spec, "s0", wanted)
    ref = extract_rois_reference(ct, levels, spec, "s0", wanted)
    assert len(new) == len(ref) == len(wanted)
    n_roi = 0
    for a, b in zip(new, ref):
        assert type(a) is type(b)
        if isinstance(b, Exception):
            assert str(a) == str(b)
            continue
        n_roi += 1
        assert a.level == b.level and a.stats == b.stats
        assert np.array_equal(a.hu, b.hu) and np.array_equal(a.body, b.body)
    assert n_roi >= 3


@pytest.mark.slow
def test_extract_rois_equal_reference_on_simulator_studies(tmp_path):
    # purpose: on the simulator's CTs (scanner spacings 0.7-0.9 mm x 1.25-3 mm, NIfTI/DICOM, all mask
    # conventions) every ROI, body mask, statistic and error is identical to the reference
    import copy
    from pathlib import Path

    import pandas as pd

    from cohort.config import CohortConfig
    from cohort.simulate import run_cohort
    from features.ingest import IngestConfig
    from features.io.masks import read_mask
    from features.io.volume import to_ras
    from features.study import StudyTask, _levels_present, read_ct_study
    from osteo_config.params import load_params

    params = copy.deepcopy(load_params(Path(__file__).resolve().parents[2] / "params.yaml", "demo"))
    params["cohort"].update(workers=1, dicom_share=0.3, totalseg_dir_share=0.3, verse_share=0.3)
    params["cohort"]["faults"] = {k: 0.0 for k in params["cohort"]["faults"]}
    run_cohort(CohortConfig.from_params(params), tmp_path / "raw", tmp_path / "truth", sites=["A", "C"],
               n_patients=2, progress=False)
    spec = roi_spec(IngestConfig.from_params(params))
    n_roi = 0
    for r in pd.read_csv(tmp_path / "raw" / "ct_studies.csv").itertuples():
        task = StudyTask("s", str(tmp_path / "raw" / r.ct_path), r.ct_format, str(tmp_path / "raw" / r.mask_path),
                         r.mask_format)
        ct = to_ras(read_ct_study(task)[0])
        levels = to_ras(read_mask(Path(task.mask_path), task.mask_format, "s").volume)
        wanted, _ = _levels_present(levels.array, "s")
        new = extract_rois(ct, levels, spec, "s", wanted)
        for a, b in zip(new, extract_rois_reference(ct, levels, spec, "s", wanted), strict=True):
            assert type(a) is type(b)
            if isinstance(b, Exception):
                assert str(a) == str(b)
                continue
            n_roi += 1
            assert a.level == b.level and a.stats == b.stats
            assert np.array_equal(a.hu, b.hu) and np.array_equal(a.body, b.body)
    assert n_roi >= 10
