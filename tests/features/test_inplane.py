"""features/inplane.py: the numba in-plane EDT and per-slice hole filling equal scipy's, exactly."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from features.inplane import fill_holes_inplane, inplane_edt
from osteo_testing.calibration_reference import fill_holes_reference, inplane_edt_reference

SPACINGS = [(0.5, 0.5, 1.0), (0.7, 0.7, 2.0), (0.8, 0.96, 1.25), (0.8867, 0.93, 3.0), (0.9765625, 0.9765625, 2.5),
            (1.5, 1.5, 1.5)]


def _masks(rng, n: int):
    """Random masks from salt-and-pepper to large blobs, every slice holding a False voxel."""
    for _ in range(n):
        shape = tuple(int(v) for v in rng.integers(1, 30, 3))
        dense = rng.uniform(0.3, 0.995)
        m = rng.random(shape) < dense
        if rng.random() < 0.5 and min(shape) > 2:
            m = ndimage.binary_opening(m) | (rng.random(shape) < 0.2)
        for k in range(shape[2]):
            if m[:, :, k].all():
                m[rng.integers(shape[0]), rng.integers(shape[1]), k] = False
        yield m


@pytest.mark.parametrize("spacing", SPACINGS)
def test_inplane_edt_equals_scipys_distance_transform(spacing):
    rng = np.random.default_rng(int(spacing[1] * 1e4))
    for m in _masks(rng, 60):
        got, ref = inplane_edt(m, spacing), inplane_edt_reference(m, spacing)
        assert got.dtype == np.float32 and np.array_equal(got, ref), (m.shape, spacing)


def test_inplane_edt_on_a_body_sized_outline_and_its_edge_cases():
    x, y, z = np.ogrid[:120, :140, :9]
    blob = np.broadcast_to(((x - 60) ** 2 / 50 ** 2 + (y - 70) ** 2 / 60 ** 2) < 1, (120, 140, 9)).copy()
    blob[30:50, 60:80, 4] = False                        # a lung-like hole in one slice
    assert np.array_equal(inplane_edt(blob, (0.8, 0.8, 2.0)), inplane_edt_reference(blob, (0.8, 0.8, 2.0)))
    assert not inplane_edt(np.zeros((3, 4, 5), bool), (1, 1, 1)).any()
    full = np.ones((4, 5, 3), bool)
    full[1, 2, 0] = False
    d = inplane_edt(full, (1.0, 1.0, 1.0))
    assert np.isinf(d[:, :, 1:]).all() and d[1, 2, 0] == 0 and d[0, 0, 0] == pytest.approx(np.hypot(1, 2))
    with pytest.raises(ValueError, match="x, y, z"):
        inplane_edt(np.ones((4, 4), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        inplane_edt(np.ones((4, 4, 4), bool), (0.0, 1, 1))


def test_fill_holes_inplane_equals_binary_fill_holes_per_slice():
    rng = np.random.default_rng(7)
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 25, 3))
        m = rng.random(shape) < rng.uniform(0.3, 0.85)
        assert np.array_equal(fill_holes_inplane(m), fill_holes_reference(m)), shape
    ring = np.zeros((9, 9, 2), bool)
    ring[2:7, 2:7, :] = True
    ring[4, 4, 0] = False                                 # a hole in slice 0; slice 1 has none
    out = fill_holes_inplane(ring)
    assert out[4, 4, 0] and not out[0, 0, 0] and out.sum() == 50 and ring[4, 4, 0] == False  # noqa: E712 (input kept)
    with pytest.raises(ValueError, match="x, y, z"):
        fill_holes_inplane(np.ones(4, bool))
