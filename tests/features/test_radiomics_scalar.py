"""ROI-level scalar features through pyradiomics."""
from __future__ import annotations

import numpy as np
import pytest

from features.radiomics_scalar import ScalarRadiomicsError, scalar_features
from osteo_testing.texture_reference import synthetic_vertebra


@pytest.fixture(scope="module")
def roi():
    return synthetic_vertebra((16, 14, 10), seed=2)


def test_first_order_matches_numpy(roi):
    hu, body = roi
    f = scalar_features(hu, body, (1.0, 1.0, 1.0), {"firstorder": ["Mean", "Maximum", "Minimum"]})
    v = hu[body > 0].astype(np.float64)
    assert f["original_firstorder_Mean"] == pytest.approx(v.mean(), rel=1e-6)
    assert f["original_firstorder_Maximum"] == pytest.approx(v.max())
    assert f["original_firstorder_Minimum"] == pytest.approx(v.min())
    assert set(f) == {"original_firstorder_Mean", "original_firstorder_Maximum", "original_firstorder_Minimum"}


def test_empty_list_enables_the_whole_class(roi):
    f = scalar_features(*roi, (0.75, 0.75, 0.75), {"glcm": [], "glrlm": [], "glszm": []})
    assert all(isinstance(v, float) for v in f.values())
    for cls, n in (("glcm", 20), ("glrlm", 14), ("glszm", 14)):
        assert sum(k.startswith(f"original_{cls}_") for k in f) >= n


def test_rejections_are_typed(roi):
    hu, body = roi
    with pytest.raises(ScalarRadiomicsError, match="unknown feature class"):
        scalar_features(hu, body, (1, 1, 1), {"shape": []})
    one = np.zeros_like(body)
    one[4, 4, 4] = 1
    with pytest.raises(ScalarRadiomicsError, match="rejected"):
        scalar_features(hu, one, (1, 1, 1), {"firstorder": []})
