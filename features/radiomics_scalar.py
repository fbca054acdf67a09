"""ROI-level scalar radiomic features via pyradiomics itself (the tabular view of a vertebra).

The radiomics + linear baseline of the evaluation (METHOD.md §6) reads these
columns. pyradiomics is the implementation (not re-implemented here): one
segment-based extraction per ROI, on the original image only.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from features.texture import TextureInputError

SCALAR_CLASSES: tuple[str, ...] = ("firstorder", "glcm", "glrlm", "glszm")


class ScalarRadiomicsError(TextureInputError):
    """pyradiomics refused the ROI (e.g. a mask it considers too small)."""


def scalar_features(
    hu: np.ndarray,
    body: np.ndarray,
    spacing_mm: Sequence[float],
    classes: Mapping[str, Sequence[str]],
    bin_width: float = 25.0,
) -> dict[str, float]:
    """pyradiomics segment-based features of one ROI as a flat dict of floats.

    Args:
        hu: (x, y, z) HU volume.
        body: (x, y, z) mask, nonzero = vertebral body.
        spacing_mm: voxel spacing (x, y, z) in mm.
        classes: feature class -> feature names; an empty list enables every
            (non-deprecated) feature of the class. Classes: firstorder, glcm, glrlm, glszm.
        bin_width: gray-level bin width in HU (pyradiomics ``binWidth``).

    Returns:
        ``{"original_<class>_<Feature>": float}``, diagnostics excluded.

    Raises:
        ScalarRadiomicsError: an unknown class, or pyradiomics rejects the ROI.
    """
    import SimpleITK as sitk
    from radiomics import featureextractor

    unknown = sorted(set(classes) - set(SCALAR_CLASSES))
    if unknown:
        raise ScalarRadiomicsError(f"unknown feature class(es) {unknown}: use {list(SCALAR_CLASSES)}")
    if hu.shape != body.shape or hu.ndim != 3:
        raise ScalarRadiomicsError(f"hu {hu.shape} vs body {body.shape}: pass two 3-D arrays of one shape")
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(binWidth=float(bin_width), additionalInfo=False)
    ext.disableAllFeatures()
    ext.enableFeaturesByName(**{c: list(names) for c, names in classes.items()})
    # numpy (x, y, z) -> SimpleITK wants (z, y, x) arrays so that its x axis is ours
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(hu, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing_mm))
    msk = sitk.GetImageFromArray(np.ascontiguousarray((np.asarray(body) != 0).astype(np.uint8).transpose(2, 1, 0)))
    msk.CopyInformation(img)
    try:
        with np.errstate(all="ignore"):
            result = ext.execute(img, msk)
    except ValueError as exc:  # pyradiomics' mask checks
        raise ScalarRadiomicsError(f"pyradiomics rejected the ROI: {exc}") from exc
    out = {k: float(np.asarray(v)) for k, v in result.items() if k.startswith("original_")}
    if not out:
        raise ScalarRadiomicsError("pyradiomics returned no feature: check texture.scalar_features")
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}
