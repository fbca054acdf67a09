"""read_nifti: the integer fast path gives exactly the arrays of the float64 round trip it skips."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from features.errors import UnreadableFileError
from features.io.volume import read_nifti


def _reference(path, dtype):
    """What read_nifti returned before the fast path: float64 scaled values, rint for labels, cast."""
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    if dtype in (np.int16, np.int32, np.uint8):
        data = np.rint(data)
    return data.astype(dtype)


def _write(tmp_path, name, data, slope=None, inter=None):
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("stored", [np.int16, np.uint8, np.uint16, np.int32, np.float32])
@pytest.mark.parametrize("target", [np.float32, np.int16, np.int32])
def test_read_nifti_equals_float64_round_trip(tmp_path, stored, target):
    # purpose: every stored integer/float type and every target dtype reads the same values and dtype
    rng = np.random.default_rng(0)
    hi = 3000 if stored not in (np.uint8,) else 250
    lo = -1024 if np.issubdtype(stored, np.signedinteger) or stored == np.float32 else 0
    data = rng.integers(lo, hi, (7, 6, 5)).astype(stored)
    path = _write(tmp_path, "v.nii.gz", data)
    got, ref = read_nifti(path, "s0", "CT", dtype=target).array, _reference(path, target)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)


@pytest.mark.parametrize("slope,inter", [(0.5, -1024.0), (1.0, -1024.0), (2.0, 0.0)])
def test_scaled_integers_take_the_scaling_path(tmp_path, slope, inter):
    # purpose: a stored RescaleSlope/Intercept (scl_slope/scl_inter) is applied, never skipped
    data = np.arange(210, dtype=np.int16).reshape(7, 6, 5)
    path = _write(tmp_path, "s.nii.gz", data, slope, inter)
    got = read_nifti(path, "s0", "CT").array
    assert np.array_equal(got, _reference(path, np.float32))
    assert np.array_equal(got, (data * slope + inter).astype(np.float32))


def test_nan_voxels_are_still_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(UnreadableFileError, match="NaN"):
        read_nifti(_write(tmp_path, "n.nii.gz", data), "s0", "CT")
