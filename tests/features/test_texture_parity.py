"""Parity of the texture engine with pyradiomics' voxel-based GLCM maps (METHOD.md §2).

Every case runs pyradiomics itself (``RadiomicsFeatureExtractor.execute(...,
voxelBased=True)``) and both engine backends on the same arrays; the maps must
agree to a relative error <= 1e-9 with an identical NaN pattern.
"""
from __future__ import annotations

import numpy as np
import pytest

from features.texture import GLCMSettings, glcm_maps
from osteo_testing.texture_reference import pyradiomics_maps, synthetic_vertebra

RTOL = 1e-9


def _assert_parity(engine: np.ndarray, ref: np.ndarray) -> None:
    assert engine.shape == ref.shape
    nan_e, nan_r = np.isnan(engine), np.isnan(ref)
    assert np.array_equal(nan_e, nan_r), f"NaN pattern differs at {int((nan_e != nan_r).sum())} voxels"
    fin = ~nan_r
    err = np.abs(engine[fin] - ref[fin]) / np.maximum(np.abs(ref[fin]), 1e-300)
    assert err.max(initial=0.0) <= RTOL, f"max relative error {err.max():.3g}"


def _rng(seed):
    return np.random.default_rng(seed)


def _dense():
    r = _rng(1)
    return r.normal(150, 80, (8, 9, 10)).astype(np.float32), r.random((8, 9, 10)) < 0.8


def _sparse():  # isolated voxels and directions with no pair anywhere
    r = _rng(2)
    return r.normal(100, 60, (9, 9, 9)).astype(np.float32), r.random((9, 9, 9)) < 0.25


def _single_slice():  # z-directions are empty for the whole mask
    r = _rng(3)
    img = r.normal(300, 100, (10, 11, 7)).astype(np.float32)
    m = np.zeros(img.shape, bool)
    m[3] = r.random((11, 7)) < 0.7
    return img, m


def _flat():  # constant ROI exactly on a bin edge, then a mostly flat one with a step
    img = np.full((7, 8, 9), 125.0, dtype=np.float32)
    img[:, :, 6:] = 150.0
    m = np.ones(img.shape, bool)
    m[0, 0, 0] = False
    return img, m


def _flat_edge():
    return np.full((6, 6, 6), 100.0, dtype=np.float32), np.ones((6, 6, 6), bool)


def _vertebra():
    hu, body = synthetic_vertebra((20, 18, 12), seed=4)
    return hu, body.astype(bool)


def _int16():
    r = _rng(5)
    return r.integers(-200, 1500, (8, 8, 8)).astype(np.int16), r.random((8, 8, 8)) < 0.6


def _two_parts():  # first voxel batch is a single slice: its z-directions are dropped per batch
    r = _rng(6)
    img = r.normal(200, 90, (8, 9, 9)).astype(np.float32)
    m = np.zeros(img.shape, bool)
    m[0, 1:8, 1:8] = True
    m[5:8, 2:8, 2:8] = r.random((3, 6, 6)) < 0.7
    return img, m


def _off_centre():  # mask bbox far smaller than the image and touching its border: the engine crops to it
    r = _rng(7)
    img = r.normal(250, 120, (14, 12, 11)).astype(np.float32)
    m = np.zeros(img.shape, bool)
    m[9:14, 0:5, 6:11] = r.random((5, 5, 5)) < 0.75
    return img, m


CASES = {
    "dense-r1": (_dense, GLCMSettings(kernel_radius=1)),
    "dense-r2": (_dense, GLCMSettings(kernel_radius=2)),
    "sparse-r1": (_sparse, GLCMSettings(kernel_radius=1)),
    "sparse-r3": (_sparse, GLCMSettings(kernel_radius=3, bin_width=40.0)),
    "single-slice": (_single_slice, GLCMSettings(kernel_radius=1)),
    "flat-with-step": (_flat, GLCMSettings(kernel_radius=1)),
    "flat-on-edge": (_flat_edge, GLCMSettings(kernel_radius=2)),
    "bin-width-10": (_dense, GLCMSettings(kernel_radius=1, bin_width=10.0)),
    "bin-count-8": (_sparse, GLCMSettings(kernel_radius=2, bin_count=8)),
    "vertebra-r2": (_vertebra, GLCMSettings(kernel_radius=2)),
    "int16-fill-nan": (_int16, GLCMSettings(kernel_radius=1, bin_width=50.0, fill_value=float("nan"))),
    "voxel-batch-49": (_two_parts, GLCMSettings(kernel_radius=1, voxel_batch=49)),
    "off-centre-r2": (_off_centre, GLCMSettings(kernel_radius=2)),
}


@pytest.fixture(scope="module")
def references():
    """pyradiomics output per case, computed once for both backends."""
    cache = {}

    def get(name):
        if name not in cache:
            make, settings = CASES[name]
            img, m = make()
            cache[name] = (img, m, settings, pyradiomics_maps(img, m, settings))
        return cache[name]

    return get


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_pyradiomics(references, case, backend):
    img, m, settings, ref = references(case)
    out = glcm_maps(img, m, settings, device="cpu", backend=backend)
    _assert_parity(out, ref)


def test_cases_exercise_the_nan_rules(references):
    """The suite must contain JointAverage-only NaNs, all-feature NaNs and per-batch dropped directions."""
    _, m, _, ref = references("sparse-r1")
    ja_only = np.isnan(ref[1]) & ~np.isnan(ref[0])
    assert ja_only.any() and np.isnan(ref[0][m]).any()
    img, m, s, ref = references("voxel-batch-49")
    whole = pyradiomics_maps(img, m, GLCMSettings(kernel_radius=1))
    assert not np.array_equal(np.isnan(whole), np.isnan(ref)), "voxel batch case does not change the NaN pattern"


def test_fill_value_outside_mask(references):
    img, m, s, ref = references("int16-fill-nan")
    out = glcm_maps(img, m, s, device="cpu")
    assert np.isnan(out[:, ~m]).all()
    _, m2, s2, ref2 = references("dense-r1")
    assert (ref2[:, ~m2] == 0).all() and (glcm_maps(*references("dense-r1")[:2], s2)[:, ~m2] == 0).all()


@pytest.mark.gpu
def test_cuda_parity(references):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA parity test runs on a GPU machine only")
    for name in ("dense-r2", "sparse-r1", "vertebra-r2", "voxel-batch-49"):
        img, m, settings, ref = references(name)
        _assert_parity(glcm_maps(img, m, settings, device="cuda"), ref)
