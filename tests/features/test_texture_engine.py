"""Texture engine: typed input errors and invariants (no pyradiomics needed)."""
from __future__ import annotations

import numpy as np
import pytest

from features import texture_kernels as K
from features.texture import (
    EmptyMaskError, GLCMSettings, InvalidSettingsError, MaskTooSmallError, NonFiniteImageError,
    DIRECTIONS, ShapeMismatchError, TextureInputError, TooManyGrayLevelsError, discretize, dropped_directions,
    glcm_maps, glcm_maps_batch, mask_bbox,
)
from osteo_testing.texture_reference import synthetic_vertebra

S1 = GLCMSettings(kernel_radius=1)


def _roi(seed=0, shape=(10, 9, 8)):
    r = np.random.default_rng(seed)
    return r.normal(200, 80, shape).astype(np.float32), r.random(shape) < 0.7


# --- bad input: typed errors with the reason ------------------------------------------------
def test_empty_mask():
    img, _ = _roi()
    with pytest.raises(EmptyMaskError, match="no voxel"):
        glcm_maps(img, np.zeros(img.shape, bool), S1)


def test_one_voxel_mask():
    img, _ = _roi()
    m = np.zeros(img.shape, bool)
    m[3, 3, 3] = True
    with pytest.raises(MaskTooSmallError, match="single voxel"):
        glcm_maps(img, m, S1)


def test_line_mask_needs_two_dimensions():
    img, _ = _roi()
    m = np.zeros(img.shape, bool)
    m[2:7, 4, 4] = True
    with pytest.raises(MaskTooSmallError, match="1 dimension"):
        glcm_maps(img, m, S1)
    assert np.isfinite(glcm_maps(img, m, GLCMSettings(kernel_radius=1, min_roi_dimensions=1))[:, m]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inside_mask(bad):
    img, m = _roi()
    img[np.argwhere(m)[0][0], np.argwhere(m)[0][1], np.argwhere(m)[0][2]] = bad
    with pytest.raises(NonFiniteImageError, match="NaN/inf"):
        glcm_maps(img, m, S1)


def test_non_finite_outside_mask_is_ignored():
    img, m = _roi()
    ref = glcm_maps(img, m, S1)
    img2 = img.copy()
    img2[~m] = np.nan
    np.testing.assert_array_equal(glcm_maps(img2, m, S1), ref)


def test_shape_mismatch():
    img, m = _roi()
    with pytest.raises(ShapeMismatchError, match="same shape"):
        glcm_maps(img, m[:-1], S1)
    with pytest.raises(ShapeMismatchError):
        glcm_maps(img[0], m[0], S1)
    with pytest.raises(ShapeMismatchError, match="2 masks"):
        glcm_maps_batch([img], [m, m], S1)


def test_too_many_gray_levels():
    img, m = _roi()
    with pytest.raises(TooManyGrayLevelsError, match="bin_width"):
        glcm_maps(img, m, GLCMSettings(kernel_radius=1, bin_width=0.5, max_gray_levels=256))


@pytest.mark.parametrize("kwargs", [dict(bin_width=0), dict(bin_width=float("nan")), dict(kernel_radius=0),
                                    dict(voxel_batch=0), dict(bin_count=0), dict(min_roi_dimensions=4)])
def test_invalid_settings(kwargs):
    with pytest.raises(InvalidSettingsError):
        GLCMSettings(**kwargs)


def test_errors_are_value_errors():
    assert issubclass(TextureInputError, ValueError)
    img, m = _roi()
    with pytest.raises(InvalidSettingsError, match="CPU only"):
        glcm_maps(img, m, S1, device="cuda", backend="numba")


# --- invariants --------------------------------------------------------------------------------
def test_levels_start_at_one_and_follow_bin_width():
    img = np.array([[[54.0, 75.0, 99.9, 166.0]]], dtype=np.float64)
    lev = discretize(img, np.ones(img.shape, bool), GLCMSettings(bin_width=25.0))
    np.testing.assert_array_equal(lev.ravel(), [1, 2, 2, 5])  # edges 50, 75, 100, 125, 150, 175


def test_axis_permutation_and_padding_invariance():
    """13 directions are closed under axis permutations; zero-mask padding adds no pair."""
    img, m = _roi(1)
    ref = glcm_maps(img, m, S1)
    perm = glcm_maps(img.transpose(2, 0, 1), m.transpose(2, 0, 1), S1)
    np.testing.assert_allclose(perm, ref.transpose(0, 3, 1, 2), rtol=1e-12, equal_nan=True)
    big_i = np.zeros((14, 12, 13), np.float32)
    big_m = np.zeros(big_i.shape, bool)
    big_i[2:12, 1:10, 3:11], big_m[2:12, 1:10, 3:11] = img, m
    np.testing.assert_array_equal(glcm_maps(big_i, big_m, S1)[:, 2:12, 1:10, 3:11], ref)


def test_batch_of_mixed_shapes_equals_single_calls():
    rois = [_roi(2, (10, 9, 8)), _roi(3, (7, 12, 6)), synthetic_vertebra((16, 14, 10), seed=1)]
    s = GLCMSettings(kernel_radius=2)
    batch = glcm_maps_batch([i for i, _ in rois], [mm for _, mm in rois], s)
    for (i, mm), b in zip(rois, batch):
        np.testing.assert_array_equal(b, glcm_maps(i, mm, s))


def test_feature_ranges_and_identities():
    """JointAverage lies in [1, Ng]; Contrast >= DifferenceAverage (d^2 >= |d| for integer level differences)."""
    hu, body = synthetic_vertebra((24, 24, 16), seed=3)
    s = GLCMSettings(kernel_radius=2)
    out = glcm_maps(hu, body, s)
    ng = discretize(hu, body > 0, s).max()
    ja = out[1][body > 0]
    ja = ja[np.isfinite(ja)]
    assert ja.size and ja.min() >= 1 and ja.max() <= ng
    con, da = out[2][body > 0], out[3][body > 0]
    assert np.all(con + 1e-12 >= da)


def test_packed_layout_matches_plain_channels_at_many_levels():
    """256 gray levels, radius 2: the two-word packing (numba) equals plain int64 channels (torch)."""
    r = np.random.default_rng(7)
    img = r.uniform(0, 256, (12, 11, 10))
    m = r.random(img.shape) < 0.8
    s = GLCMSettings(kernel_radius=2, bin_width=1.0)
    assert K._layout(256, 2)[0][0] == 1
    np.testing.assert_allclose(glcm_maps(img, m, s, backend="numba"), glcm_maps(img, m, s, backend="torch"),
                               rtol=1e-13, equal_nan=True)


def test_unpackable_layout_falls_back_to_torch():
    assert K._layout(256, 5)[0][0] == 0
    r = np.random.default_rng(4)
    img = r.uniform(0, 256, (12, 12, 12))
    m = r.random(img.shape) < 0.7
    s = GLCMSettings(kernel_radius=5, bin_width=1.0)
    np.testing.assert_array_equal(glcm_maps(img, m, s, backend="numba"), glcm_maps(img, m, s, backend="torch"))


# --- preparation helpers: exact against numpy ------------------------------------------------
@pytest.mark.parametrize("settings", [GLCMSettings(bin_width=25.0), GLCMSettings(bin_width=0.5, max_gray_levels=4096),
                                      GLCMSettings(bin_width=7.0, max_gray_levels=4096), GLCMSettings(bin_count=9)])
def test_discretize_equals_numpy_digitize(settings):
    """Values on and next to every bin edge: the numba binning equals np.digitize exactly."""
    r = np.random.default_rng(11)
    img = r.normal(100, 60, (9, 10, 11)).astype(np.float32)
    m = r.random(img.shape) < 0.7
    vals = img[m]
    w = settings.bin_width
    lo = vals.min()
    edges = np.arange(lo - lo % w, vals.max() + 2 * w, w)
    on_edge = np.argwhere(m)[:len(edges) - 1]
    for (x, y, z), e in zip(on_edge, edges[1:]):  # exact edges and their float32 neighbours
        img[x, y, z] = np.float32(e) if (x + y + z) % 2 else np.nextafter(np.float32(e), np.float32(-1e9))
    vals = img[m]
    if settings.bin_count is None:
        lo = vals.min()
        edges = np.arange(lo - lo % w, vals.max() + 2 * w, w)
    else:
        edges = np.histogram(vals, settings.bin_count)[1]
        edges[-1] += 1
    expected = np.zeros(img.shape, np.int32)
    expected[m] = np.digitize(vals, edges)
    np.testing.assert_array_equal(discretize(img, m, settings), expected)


def test_empty_directions_and_bbox():
    """Single-batch dropped directions = directions with no pair anywhere; bbox = extent of the mask."""
    m = np.zeros((7, 8, 9), bool)
    m[2, 3:6, 4] = True  # a line along y: only direction (0, 1, 0) has pairs
    drop, _ = dropped_directions(m, S1)
    assert drop.shape == (13, 1)
    assert [tuple(d) for d, k in zip(DIRECTIONS, drop[:, 0]) if not k] == [(0, 1, 0)]
    assert mask_bbox(m) == (slice(2, 3), slice(3, 6), slice(4, 5))
