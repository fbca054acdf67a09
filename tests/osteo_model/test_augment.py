"""Physics re-imaging of fine-tuning pools: mask recovery, exact physics, map parity, (seed, epoch, row) draws."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from features.texture import GLCMSettings, glcm_maps
from osteo_config import load_config
from osteo_config.model import AugmentConfig, ModelConfig, ModelConfigError
from osteo_model.augment import FWHM_PER_SIGMA, Reimaging, augment_pool, draw_reimaging, pool_mask, reimage
from osteo_model.data import TexturePoolDataset
from osteo_model.errors import AmbiguousFillValueError, AugmentationError, DescriptorInputError
from osteo_model.norm import ChannelNorm
from osteo_testing.pool_fixtures import SETTINGS, SPACING, WINDOW, pool as _pool, roi as _roi, write_pools as _write

ON = AugmentConfig(p=1.0, hu_slope=(0.95, 1.05), hu_offset_hu=(-25.0, 25.0), noise_hu=(5.0, 15.0),
                   psf_fwhm_mm=(0.3, 0.9), slice_fwhm_mm=(0.5, 1.75))


def test_pool_mask_recovers_the_exact_mask_nan_voxels_included():
    hu, body = _roi()
    pool = _pool(hu, body)
    assert np.isnan(pool[1, 0, 0, 0])                          # the isolated voxel: in the mask, map NaN
    np.testing.assert_array_equal(pool_mask(pool, SETTINGS.fill_value), body)
    other = GLCMSettings(bin_width=25.0, kernel_radius=1, fill_value=0.5)
    np.testing.assert_array_equal(pool_mask(_pool(hu, body, other), 0.5), body)


@pytest.mark.parametrize("fill", [1.0, 3.0, float("nan")])
def test_a_fill_value_an_in_mask_value_can_equal_is_refused(fill):
    hu, body = _roi()
    with pytest.raises(AmbiguousFillValueError, match="fill_value"):
        pool_mask(_pool(hu, body), fill)
    assert issubclass(AmbiguousFillValueError, ValueError)


def test_p_zero_returns_the_pool_itself():
    hu, body = _roi()
    pool = _pool(hu, body)
    off = AugmentConfig(p=0.0, noise_hu=(10.0, 20.0))
    assert augment_pool(pool, SPACING, SETTINGS, off, np.random.default_rng(0), WINDOW) is pool
    assert ModelConfig().augment.p == 0                         # code that builds ModelConfig() is unchanged


def test_slope_and_offset_alone_are_the_exact_affine_map():
    hu, _ = _roi()
    out = reimage(hu, SPACING, Reimaging(hu_slope=1.03, hu_offset_hu=-7.5))
    np.testing.assert_allclose(out, 1.03 * hu.astype(np.float64) - 7.5, rtol=1e-6, atol=1e-4)
    clipped = reimage(hu, SPACING, Reimaging(hu_slope=2.0, hu_offset_hu=100.0), hu_window=WINDOW)
    assert clipped.max() <= WINDOW[1] and clipped.min() >= WINDOW[0]
    np.testing.assert_allclose(clipped, np.clip(2.0 * hu.astype(np.float64) + 100.0, *WINDOW), rtol=1e-6)


def test_added_noise_has_the_requested_sd_on_a_flat_region():
    flat = np.full((32, 32, 24), 40.0, np.float32)
    out = reimage(flat, SPACING, Reimaging(noise_hu=12.0, noise_seed=3))
    assert out.mean() == pytest.approx(40.0, abs=0.2)
    assert out.std() == pytest.approx(12.0, rel=0.02)
    # in quadrature with noise already there: SD_total^2 = 8^2 + 12^2
    noisy = (40.0 + np.random.default_rng(1).normal(0, 8.0, flat.shape)).astype(np.float32)
    assert reimage(noisy, SPACING, Reimaging(noise_hu=12.0, noise_seed=3)).std() == pytest.approx(math.hypot(8, 12), rel=0.02)
    assert np.array_equal(out, reimage(flat, SPACING, Reimaging(noise_hu=12.0, noise_seed=3)))   # pure function


def test_blur_reduces_variance_acts_on_its_own_axes_and_converts_mm_to_voxels():
    noise = np.random.default_rng(0).normal(0, 30.0, (32, 32, 24)).astype(np.float32)
    assert reimage(noise, SPACING, Reimaging(psf_fwhm_mm=1.5)).var() < 0.5 * noise.var()
    assert reimage(noise, SPACING, Reimaging(slice_fwhm_mm=2.0)).var() < 0.7 * noise.var()
    z_only = np.broadcast_to(noise[:1, :1, :], noise.shape).copy()            # varies along z alone
    np.testing.assert_allclose(reimage(z_only, SPACING, Reimaging(psf_fwhm_mm=2.0)), z_only, atol=1e-3)
    x_only = np.broadcast_to(noise[:, :1, :1], noise.shape).copy()            # varies along x alone
    np.testing.assert_allclose(reimage(x_only, SPACING, Reimaging(slice_fwhm_mm=3.0)), x_only, atol=1e-3)
    # an impulse spreads with sigma = FWHM / 2.3548 / spacing voxels per axis (anisotropic grid)
    delta = np.zeros((41, 41, 41), np.float32)
    delta[20, 20, 20] = 1000.0
    spacing = (0.5, 1.0, 2.0)
    out = reimage(delta, spacing, Reimaging(psf_fwhm_mm=3.0, slice_fwhm_mm=6.0)).astype(np.float64)
    r = np.arange(41) - 20.0
    for axis, fwhm in ((0, 3.0), (1, 3.0), (2, 6.0)):
        profile = out.sum(axis=tuple(a for a in range(3) if a != axis))
        var = (profile * r**2).sum() / profile.sum()
        assert var == pytest.approx((fwhm / FWHM_PER_SIGMA / spacing[axis]) ** 2, rel=0.05), axis


def test_augmented_maps_are_the_engine_maps_of_the_reimaged_hu():
    hu, body = _roi()
    pool = _pool(hu, body)
    out = augment_pool(pool, SPACING, SETTINGS, ON, np.random.default_rng(11), WINDOW)
    draw = draw_reimaging(ON, np.random.default_rng(11))        # the same draw
    new_hu = reimage(hu, SPACING, draw, WINDOW)
    assert out.dtype == np.float32 and out.shape == pool.shape
    np.testing.assert_array_equal(out[0], new_hu)
    np.testing.assert_array_equal(out[1:], glcm_maps(new_hu, body, SETTINGS, device="cpu").astype(np.float32))
    np.testing.assert_array_equal(pool_mask(out, SETTINGS.fill_value), body)   # same segmentation
    inside = body & np.isfinite(pool[2]) & np.isfinite(out[2])
    assert not np.allclose(out[3][inside], pool[3][inside])                 # Contrast of another scan


def _dataset(root, frame, aug=ON, seed=5, **kw):
    norm = ChannelNorm.fit(TexturePoolDataset(frame, root).iter_raw_pools())
    return TexturePoolDataset(frame, root, norm, augment=aug, glcm=SETTINGS, spacing_mm=SPACING, hu_window=WINDOW,
                              seed=seed, **kw)


@pytest.mark.slow    # > 20 s: `make test-slow` (the PACS client's retries / Dask start-up / long loops)
def test_items_are_a_function_of_seed_epoch_and_row(tmp_path):
    frame = _write(tmp_path)
    n = len(frame)
    half = dataclasses.replace(ON, p=0.5)
    ds, again = _dataset(tmp_path, frame, half, cache=True), _dataset(tmp_path, frame, half)
    plain = _dataset(tmp_path, frame, None)
    assert ds.epoch_keyed and not plain.epoch_keyed
    epochs = [[ds[i + e * n]["pool"] for i in range(n)] for e in range(3)]
    for e in range(3):                                          # a fresh instance (a worker, a resumed run) agrees
        for i in range(n):
            assert torch.equal(epochs[e][i], again[i + e * n]["pool"])
            assert ds[i + e * n]["index"].item() == i
    assert torch.equal(ds[2 + n]["pool"], epochs[1][2])          # after caching: the same draw again
    reimaged = [[not torch.equal(epochs[e][i], plain[i]["pool"]) for i in range(n)] for e in range(3)]
    assert 0 < sum(map(sum, reimaged)) < 3 * n                   # p = 0.5: some items, not all
    assert reimaged[0] != reimaged[1] or reimaged[1] != reimaged[2]   # another epoch, another decision
    assert any(not torch.equal(epochs[0][i], epochs[1][i]) for i in range(n))
    other_seed = _dataset(tmp_path, frame, ON, seed=6)
    full = _dataset(tmp_path, frame, ON)
    assert not torch.equal(full[0]["pool"], other_seed[0]["pool"])
    assert not torch.equal(full[0]["pool"], full[n]["pool"])    # p = 1: epoch 1 is another scan
    # DataLoader workers draw exactly what the main process draws
    keys = [i + 2 * n for i in range(n)]
    loader = DataLoader(torch.utils.data.Subset(full, keys), batch_size=2, num_workers=2,
                        multiprocessing_context=full.multiprocessing_context)   # spawn: numba after fork is fatal
    pools = torch.cat([b["pool"] for b in loader])             # (n, 5, X, Y, Z), batches from two workers
    assert torch.equal(pools, torch.stack([full[k]["pool"] for k in keys]))


def test_augmentation_needs_the_texture_settings_and_spacing(tmp_path):
    frame = _write(tmp_path, n=1)
    with pytest.raises(AugmentationError, match="spacing_mm"):
        TexturePoolDataset(frame, tmp_path, augment=ON)
    with pytest.raises(AmbiguousFillValueError):
        TexturePoolDataset(frame, tmp_path, augment=ON, glcm=GLCMSettings(fill_value=1.0), spacing_mm=SPACING)
    assert not TexturePoolDataset(frame, tmp_path, augment=AugmentConfig()).epoch_keyed   # p = 0: a plain dataset


@pytest.mark.parametrize("bad", [{"p": 1.5}, {"noise_hu": [10.0, 5.0]}, {"psf_fwhm_mm": [-0.1, 0.5]},
                                 {"hu_slope": [0.0, 1.0]}, {"noise": [0, 1]}])
def test_augment_section_is_validated(bad):
    with pytest.raises(ModelConfigError, match="model.augment"):
        ModelConfig.from_params({"model": {"augment": bad}})


def test_finetuning_gets_augmentation_and_pretraining_does_not(tmp_path, monkeypatch):
    import osteo_model.pipeline as pipeline

    seen = {}

    class Stop(Exception):
        pass

    def spy(model, objective, dataset, cfg, run_dir, **kw):
        seen[run_dir.name] = dataset
        raise Stop

    monkeypatch.setattr(pipeline, "fit", spy)
    spec = load_config(profile="tiny", overrides={"model": {"augment": {"p": 0.5}, "moe": {"descriptors": [], "wide": False}},
                                                  "train": {"device": "cpu"}}).experiment()
    frame = _write(tmp_path, n=2)
    for name, run in (("pre", pipeline.run_pretrain), ("fine", pipeline.run_finetune),
                      ("screen", pipeline.run_screening)):
        with pytest.raises(Stop):
            run(spec, frame, tmp_path, tmp_path / name)
    assert seen["pre"].augment is None
    for name in ("fine", "screen"):
        ds = seen[name]
        assert ds.augment == spec.model.augment and ds.glcm == spec.glcm and ds.epoch_keyed
        assert ds.spacing_mm == tuple(spec.geometry["spacing_mm"]) and ds.seed == spec.finetune.seed


def test_demo_ranges_stay_within_the_training_scanners_spread():
    # Derived from cohort.scanners of the training sites (A-C); the external site D never sets them.
    cfg = load_config(profile="demo")
    ids = {s for site in cfg.cohort.sites.values() if not site.external for s, _ in site.scanners}
    sc = [cfg.cohort.scanners[s] for s in sorted(ids)]
    aug = cfg.model.augment
    assert aug.p > 0
    ratios = [b.hu_slope / a.hu_slope for a in sc for b in sc]                  # scanner a's scan as scanner b
    offsets = [b.hu_offset - b.hu_slope / a.hu_slope * a.hu_offset for a in sc for b in sc]
    assert min(ratios) <= aug.hu_slope[0] <= aug.hu_slope[1] <= max(ratios)
    assert min(offsets) <= aug.hu_offset_hu[0] <= aug.hu_offset_hu[1] <= max(offsets)
    noise = [s.noise_hu for s in sc]
    assert aug.noise_hu[1] <= math.sqrt(max(noise) ** 2 - min(noise) ** 2)      # in quadrature
    psf = [s.psf_fwhm_mm for s in sc]
    assert aug.psf_fwhm_mm[1] <= math.sqrt(max(psf) ** 2 - min(psf) ** 2)
    thick = [t for s in sc for t in s.slice_mm]
    # a box profile of thickness T has variance T^2 / 12: the Gaussian adding what T_min -> T_max adds
    assert aug.slice_fwhm_mm[1] <= FWHM_PER_SIGMA * math.sqrt((max(thick) ** 2 - min(thick) ** 2) / 12)
    assert aug.slice_fwhm_mm[1] <= max(thick) - min(thick)


def test_reimaged_rows_carry_the_descriptors_that_scan_would_have_given(tmp_path):
    # purpose: the HU-linear descriptors follow the drawn recalibration exactly (shell_hu' = a shell + b,
    # proj_hu_mm' = a proj + b path, features.roi.dxa_descriptors); sizes stay; a plain item keeps the measured ones
    from osteo_testing.frames import with_descriptors
    frame = with_descriptors(_write(tmp_path))
    names = ("shell_hu", "proj_hu_mm", "body_width_mm")
    ds, plain = _dataset(tmp_path, frame, ON, descriptors=names), TexturePoolDataset(frame, tmp_path, descriptors=names)
    for i in range(len(frame)):
        draw = draw_reimaging(ON, ds.item_rng(0, i))
        got, measured = ds[i]["descriptors"].numpy(), plain[i]["descriptors"].numpy()
        a, b = draw.hu_slope, draw.hu_offset_hu
        np.testing.assert_allclose(got[0], a * measured[0] + b, rtol=1e-5)
        np.testing.assert_allclose(got[1], a * measured[1] + b * frame["proj_path_mm"].iloc[i], rtol=1e-5)
        assert got[2] == measured[2]
    with pytest.raises(DescriptorInputError, match="proj_path_mm"):              # needed to follow a recalibration
        _dataset(tmp_path, frame.drop(columns=["proj_path_mm"]), ON, descriptors=names)
