"""ChannelNorm statistics and round trip; TexturePoolDataset files, labels, SHA check, workers."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from osteo_model.data import TexturePoolDataset
from osteo_model.errors import PoolIntegrityError
from osteo_model.norm import ChannelNorm


def _pools(n=4, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.array([300.0, 5000.0, 20.0, 80.0, 3.0])[:, None, None, None]
    return [(rng.normal(1.0, 1.0, (5, 6, 6, 4)) * scales).astype(np.float32) for _ in range(n)]


def test_channel_norm_streams_the_same_statistics_as_one_big_array():
    pools = _pools()
    pools[1][2, 0, 0, 0] = np.nan                                         # a fill value is ignored
    norm = ChannelNorm.fit(iter(pools))
    stacked = np.stack(pools).astype(np.float64)                          # (N, C, X, Y, Z)
    np.testing.assert_allclose(norm.mean, np.nanmean(stacked, axis=(0, 2, 3, 4)), rtol=1e-10)
    np.testing.assert_allclose(norm.std, np.nanstd(stacked, axis=(0, 2, 3, 4)), rtol=1e-10)
    out = np.stack([norm.transform(p) for p in pools])
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3, 4)), 0, atol=1e-4)
    back = ChannelNorm.from_state_dict(norm.state_dict())
    assert back == norm
    torch.testing.assert_close(back.transform(torch.from_numpy(np.stack(pools))), torch.from_numpy(out))


def test_channel_norm_transform_equals_nan_to_num_of_the_standardised_pool():
    """Non-finite values (NaN maps, overflows to inf) become 0, every other value is the standardised one,
    bit for bit as ``np.nan_to_num(nan=0, posinf=0, neginf=0)``; the input is not modified."""
    pools = _pools(3)
    norm = ChannelNorm.fit(iter(pools))
    pool = pools[0].copy()
    pool[1, 0, 0, 0], pool[2, 1, 1, 1], pool[3, 2, 2, 2], pool[0, 3, 3, 3] = np.nan, np.inf, -np.inf, 3e38
    keep = pool.copy()
    m = np.asarray(norm.mean, np.float32).reshape(-1, 1, 1, 1)
    s = np.asarray(norm.std, np.float32).reshape(-1, 1, 1, 1)
    with np.errstate(over="ignore"):
        ref = np.nan_to_num((pool - m) / s, nan=0.0, posinf=0.0, neginf=0.0)
        got = norm.transform(pool)
    assert got.dtype == np.float32 and np.array_equal(got, ref) and np.array_equal(pool, keep, equal_nan=True)
    assert got[1, 0, 0, 0] == 0 and got[2, 1, 1, 1] == 0 and got[3, 2, 2, 2] == 0


def _write_pools(root, pools):
    rows = []
    for i, pool in enumerate(pools):
        sha = hashlib.sha256(np.ascontiguousarray(pool).tobytes()).hexdigest()
        rel = f"texture/{sha[:2]}/{sha}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, pool)
        rows.append({"pool_path": rel, "pool_sha256": sha, "level": 13 + i,
                     "device_vendor": ["Hologic", "GE Lunar", "MEDIX", None][i],
                     "who_class": [0, 1, 2, None][i], "bmd_g_cm2": [1.0, 0.8, 0.6, None][i]})
    return pd.DataFrame(rows)


def test_dataset_items_labels_and_workers(tmp_path):
    pools = _pools()
    frame = _write_pools(tmp_path, pools)
    norm = ChannelNorm.fit(pools)
    ds = TexturePoolDataset(frame, tmp_path, norm, verify=True)
    item = ds[3]
    assert item["pool"].shape == (5, 6, 6, 4) and item["pool"].dtype == torch.float32
    assert item["device"].item() == 3 and item["who_class"].item() == -1 and torch.isnan(item["bmd"])
    torch.testing.assert_close(ds[0]["pool"], torch.from_numpy(norm.transform(pools[0])))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["pool"].shape == (4, 5, 6, 6, 4) and batch["level"].tolist() == [13, 14, 15, 16]
    assert batch["device"].tolist() == [0, 1, 2, 3]


def test_tampered_or_malformed_pool_is_a_typed_error(tmp_path):
    frame = _write_pools(tmp_path, _pools(2))
    path = tmp_path / frame.loc[0, "pool_path"]
    np.save(path, np.load(path) + 1)                                      # same shape, different bytes
    with pytest.raises(PoolIntegrityError, match="SHA-256"):
        TexturePoolDataset(frame, tmp_path, verify=True)[0]
    np.save(tmp_path / frame.loc[1, "pool_path"], np.zeros((3, 4, 4, 4), np.float32))
    with pytest.raises(PoolIntegrityError, match="osteo texture"):
        TexturePoolDataset(frame, tmp_path)[1]


@pytest.mark.parametrize("profile", ["demo", "tiny", "paper"])
def test_effective_voxel_keeps_the_texture_scale(profile):
    # The encoder's voxel (ROI extent / model.input_shape) may be at most 1.5x the ingest spacing:
    # coarser grids blur away the trabecular texture the method is about (paper: 0.75 mm ROIs as is).
    from osteo_config import load_config
    cfg = load_config("params.yaml", profile)
    roi, spacing = cfg.ingest.roi_shape, cfg.ingest.spacing_mm
    shape = cfg.model.input_shape or roi
    effective = [n * s / m for n, s, m in zip(roi, spacing, shape)]          # mm per encoder voxel
    assert all(e <= 1.5 * s + 1e-9 for e, s in zip(effective, spacing)), (profile, effective, spacing)


def test_descriptor_columns_are_required_finite_and_never_imputed():
    # purpose: a vertebra without its descriptors is a typed error naming it, not a silent fill
    import numpy as np
    import pandas as pd
    from osteo_model.data import descriptor_matrix
    from osteo_model.errors import DescriptorInputError
    f = pd.DataFrame({"patient_id": ["p1", "p2"], "study_id": ["s1", "s2"], "level": [13, 14],
                      "shell_hu": [400.0, 380.0], "proj_hu_mm": [9000.0, np.nan]})
    with pytest.raises(DescriptorInputError, match="p2"):
        descriptor_matrix(f, ["shell_hu", "proj_hu_mm"])
    with pytest.raises(DescriptorInputError, match="body_width_mm"):
        descriptor_matrix(f, ["shell_hu", "body_width_mm"])
    m = descriptor_matrix(f.iloc[:1], ["proj_hu_mm", "shell_hu"])
    assert m.dtype == np.float32 and m.tolist() == [[9000.0, 400.0]]
