"""pyradiomics itself as the reference for the texture engine (tests and benchmarks).

Runs ``RadiomicsFeatureExtractor(...).execute(image, mask, voxelBased=True)``
for the four GLCM features and places the returned maps back on the input
grid. pyradiomics crops its voxel-based maps to the mask bounding box padded
by ``kernelRadius`` (clipped to the image) and keeps that crop's origin, so the
offset of each map is read from its origin; voxels outside the crop get
``fill_value`` like every other voxel outside the mask.

Arrays are handed to SimpleITK with ``GetImageFromArray`` so numpy axis 0 is
SimpleITK's z: the engine and pyradiomics then see the same C-order voxel
sequence, which matters only for ``voxelBatch``.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from features.texture import FEATURES, GLCMSettings


def pyradiomics_maps(image: np.ndarray, mask: np.ndarray, settings: GLCMSettings) -> np.ndarray:
    """pyradiomics voxel-based GLCM maps on the input grid: float64 (4, X, Y, Z), FEATURES order.

    Args:
        image: (X, Y, Z) intensities (dtype kept).
        mask: (X, Y, Z) mask, nonzero = ROI (passed as label 1).
        settings: the engine settings, translated with :meth:`GLCMSettings.to_pyradiomics`.
    """
    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(**settings.to_pyradiomics())
    ext.disableAllFeatures()
    ext.enableFeaturesByName(glcm=list(FEATURES))
    img = sitk.GetImageFromArray(np.ascontiguousarray(image))
    msk = sitk.GetImageFromArray((np.asarray(mask) != 0).astype(np.uint8))
    msk.CopyInformation(img)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its nanmean over all-NaN angles
        result = ext.execute(img, msk, voxelBased=True)
    out = np.full((len(FEATURES), *np.shape(image)), settings.fill_value, dtype=np.float64)
    for f, name in enumerate(FEATURES):
        fmap = result[f"original_glcm_{name}"]
        arr = sitk.GetArrayFromImage(fmap)
        off = img.TransformPhysicalPointToIndex(fmap.GetOrigin())[::-1]  # sitk (x, y, z) -> numpy order
        sl = tuple(slice(o, o + n) for o, n in zip(off, arr.shape))
        out[(f, *sl)] = arr
    return out


def synthetic_vertebra(shape: tuple[int, int, int] = (64, 64, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A vertebra-like ROI for tests and benchmarks: (hu float32, body uint8), axes (x, y, z).

    An elliptic cylinder (the vertebral body, ~45 % of the box) with a dense
    cortical rim (~700 HU) around a trabecular core (~150-350 HU): a band-passed
    random field thresholded into plate/rod-like bone and marrow, plus scanner
    noise. Outside the body: soft tissue around 40 HU.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    rx, ry = 0.42 * X, 0.36 * Y
    ell = ((x - X / 2 + 0.5) / rx) ** 2 + ((y - Y / 2 + 0.5) / ry) ** 2
    zin = (z >= 0.06 * Z) & (z <= 0.94 * Z - 1)
    body = (ell <= 1.0) & zin
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) - ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    field /= field.std()
    bone = field > 0.3  # trabecular network
    hu = np.where(bone, 420.0, 60.0) + 25.0 * field
    rim = body & (ell > 0.8)
    hu = np.where(rim, 700.0, hu)
    hu = np.where(body, hu, 40.0)
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0, 18.0, size=shape)
    return np.clip(hu, -200, 1500).astype(np.float32), body.astype(np.uint8)
