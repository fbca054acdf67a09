"""Physics-informed augmentation of fine-tuning pools: re-image the ROI as another scanner would, recompute the maps.

Sites differ by their CT scanners (``cohort.scanners``): HU calibration (slope, offset), in-plane
point-spread function, slice sensitivity profile and noise. A model fine-tuned on sites A-C meets
other scanners at site D and in production, so during fine-tuning a vertebra is, with probability
``model.augment.p`` per epoch, re-imaged with parameters drawn uniformly inside the spread of the
training sites' scanners (:func:`reimage`), and its four GLCM maps are **recomputed** from the new HU
with the texture engine (:func:`features.texture.glcm_maps`, the function the texture stage runs): a
GLCM map of a noisier, blurrier scan is a different function of the voxels, not the old map plus noise.

What :func:`reimage` approximates, honestly:

* it works on the reconstructed, resampled ROI (``ingest.spacing_mm``), not on projections: blur is an
  extra Gaussian PSF convolved with the image that already carries the source scanner's PSF, so
  resolution can only get worse (a sharper scanner cannot be simulated), and the extra FWHM adds in
  quadrature (``FWHM_total^2 = FWHM_source^2 + FWHM_extra^2`` for Gaussian profiles);
* the slice sensitivity profile is modelled as a Gaussian along z (a real SSP is closer to a box of the
  slice thickness ``T``, variance ``T^2 / 12``; a Gaussian of FWHM ``2.3548 sqrt((T2^2 - T1^2) / 12)``
  has the variance a thickness change ``T1 -> T2`` adds);
* noise is white Gaussian on the ROI grid, added in quadrature (``SD_total^2 = SD_source^2 +
  noise_hu^2``); a scanner's noise is spatially correlated (its noise power spectrum follows the
  reconstruction kernel) and not stationary, which this does not reproduce;
* the HU calibration is the affine map ``HU' = slope x HU + offset`` of ``cohort.scanners``, applied last
  (to the noise as well); the ROIs are cut from phantomless-calibrated CT (``ingest.calibration``), so
  the residual site-to-site shift is smaller than the raw scanner spread these ranges come from;
* the result is clipped to ``ingest.hu_window`` as ingestion clips every ROI; the body mask is kept
  (a re-imaged scan is segmented the same way).

Fine-tuning only (:func:`osteo_model.pipeline.finetune_augmentation`): TP-SwAV / SwAV pretraining
views have their own augmentation (``model.swav``), and validation, test and prediction sets see
the scans as they are. Pure functions (numpy / scipy / features.texture); the dataset
(:class:`osteo_model.data.TexturePoolDataset`) draws the randomness from ``(seed, epoch, index)``
and asks for ``spawn`` loader workers (numba's GNU OpenMP pool is not fork-safe).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from features.texture import GLCMSettings, glcm_maps
from osteo_config.model import AugmentConfig
from osteo_model.errors import AmbiguousFillValueError

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))     # 2.3548: Gaussian FWHM / standard deviation


@dataclass(frozen=True)
class Reimaging:
    """One draw of another scanner's physics (units as in ``model.augment``).

    Attributes:
        hu_slope: calibration slope (HU' = slope x HU + offset).
        hu_offset_hu: calibration offset, HU.
        noise_hu: SD of the white noise added (in quadrature with the noise already there), HU.
        psf_fwhm_mm: FWHM of the extra in-plane (x, y) Gaussian PSF, mm.
        slice_fwhm_mm: FWHM of the extra Gaussian slice sensitivity profile along z, mm.
        noise_seed: seed of the noise realisation (so :func:`reimage` is a pure function).
    """

    hu_slope: float = 1.0
    hu_offset_hu: float = 0.0
    noise_hu: float = 0.0
    psf_fwhm_mm: float = 0.0
    slice_fwhm_mm: float = 0.0
    noise_seed: int = 0


def check_fill_value(fill_value: float) -> None:
    """Refuse a ``texture.fill_value`` an in-mask Autocorrelation (>= 1 or NaN) could equal.

    Raises:
        AmbiguousFillValueError: ``fill_value`` >= 1 or not finite.
    """
    if not np.isfinite(fill_value) or fill_value >= 1:
        raise AmbiguousFillValueError(f"texture.fill_value={fill_value}: inside the mask Autocorrelation is >= 1 or "
                                      "NaN, so the mask cannot be told from the fill; use a fill value < 1 (default 0) "
                                      "and rebuild the pools with `osteo texture`, or set model.augment.p: 0")


def pool_mask(pool: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
    """The body mask a pool's maps were computed on: (X, Y, Z) bool.

    Inside the mask Autocorrelation (channel 1) is a mean of products of gray levels >= 1, so it is
    >= 1 or NaN (no pair in the kernel); outside it is ``fill_value`` (``texture.fill_value``).

    Raises:
        AmbiguousFillValueError: ``fill_value`` >= 1 or NaN, which an in-mask value can equal.
    """
    check_fill_value(fill_value)
    auto = pool[1]                                                        # (X, Y, Z) Autocorrelation
    return np.isnan(auto) | (auto != np.float32(fill_value))


def draw_reimaging(cfg: AugmentConfig, rng: np.random.Generator) -> Reimaging | None:
    """With probability ``cfg.p`` one :class:`Reimaging` drawn uniformly in the configured ranges, else None."""
    if cfg.p <= 0 or rng.random() >= cfg.p:
        return None
    u = lambda r: float(rng.uniform(r[0], r[1]))                          # noqa: E731
    return Reimaging(hu_slope=u(cfg.hu_slope), hu_offset_hu=u(cfg.hu_offset_hu), noise_hu=u(cfg.noise_hu),
                     psf_fwhm_mm=u(cfg.psf_fwhm_mm), slice_fwhm_mm=u(cfg.slice_fwhm_mm),
                     noise_seed=int(rng.integers(2**63)))


def reimage(hu: np.ndarray, spacing_mm: Sequence[float], draw: Reimaging,
            hu_window: Sequence[float] | None = None) -> np.ndarray:
    """The ROI as another scanner would have produced it: blur, noise, calibration, clip (float32 (X, Y, Z)).

    Args:
        hu: (X, Y, Z) HU of the whole ROI box (real HU outside the body mask too: the blur needs them).
        spacing_mm: (x, y, z) voxel size in mm (``ingest.spacing_mm``).
        draw: the physics to apply (:func:`draw_reimaging`).
        hu_window: (low, high) HU clip (``ingest.hu_window``); None = no clip.
    """
    sx, sy, sz = (float(s) for s in spacing_mm)
    sigma = (draw.psf_fwhm_mm / FWHM_PER_SIGMA / sx, draw.psf_fwhm_mm / FWHM_PER_SIGMA / sy,
             draw.slice_fwhm_mm / FWHM_PER_SIGMA / sz)                    # voxels per axis
    out = np.asarray(hu, dtype=np.float64)
    if max(sigma) > 0:
        out = ndimage.gaussian_filter(out, sigma=sigma, mode="nearest", truncate=3.0)
    if draw.noise_hu > 0:
        out = out + np.random.default_rng(draw.noise_seed).normal(0.0, draw.noise_hu, size=out.shape)
    out = draw.hu_slope * out + draw.hu_offset_hu
    if hu_window is not None:
        out = np.clip(out, float(hu_window[0]), float(hu_window[1]))
    return out.astype(np.float32)


def reimaged_pool(hu: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float], draw: Reimaging,
                  settings: GLCMSettings, hu_window: Sequence[float] | None = None) -> np.ndarray:
    """Re-imaged HU plus its four GLCM maps recomputed on ``mask``: float32 (5, X, Y, Z), as the texture stage writes."""
    new_hu = reimage(hu, spacing_mm, draw, hu_window)                               # (X, Y, Z)
    maps = glcm_maps(new_hu, mask, settings, device="cpu", backend="numba")          # (4, X, Y, Z) float64
    return np.concatenate([new_hu[None], maps.astype(np.float32)], axis=0)           # (5, X, Y, Z)


def augment_pool(pool: np.ndarray, spacing_mm: Sequence[float], settings: GLCMSettings, aug_cfg: AugmentConfig,
                 rng: np.random.Generator, hu_window: Sequence[float] | None = None) -> np.ndarray:
    """With probability ``aug_cfg.p`` the pool of a re-imaged ROI (maps recomputed), else ``pool`` itself.

    Args:
        pool: raw float32 (5, X, Y, Z) texture pool (HU + 4 maps, texture stage output).
        spacing_mm: its voxel size (``ingest.spacing_mm``).
        settings: the GLCM settings the pool was computed with (``texture:``).
        aug_cfg: ``model.augment``.
        rng: the draw's generator (the dataset seeds it from (seed, epoch, index)).
        hu_window: ``ingest.hu_window`` (the re-imaged HU is clipped to it).

    Raises:
        AmbiguousFillValueError: ``settings.fill_value`` cannot be told from an in-mask value.
    """
    draw = draw_reimaging(aug_cfg, rng)
    if draw is None:
        return pool
    return reimaged_pool(pool[0], pool_mask(pool, settings.fill_value), spacing_mm, draw, settings, hu_window)
