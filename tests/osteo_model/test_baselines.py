"""Baselines: the L1 HU rule and radiomics + logistic regression share the scorer interface."""
from __future__ import annotations

import numpy as np
import pandas as pd

from osteo_model.baselines import L1HURule, RadiomicsLogistic, hu_rule_score


def test_hu_score_crosses_half_exactly_at_the_threshold_and_is_monotone():
    hu = np.array([300.0, 161.0, 160.0, 159.0, 50.0, -1e6])
    s = hu_rule_score(hu, 160.0, 20.0)
    assert ((s >= 0.5) == (hu <= 160)).all() and np.all(np.diff(s) >= 0) and s.max() <= 1.0


def test_l1_rule_scores_every_vertebra_with_its_study_l1():
    frame = pd.DataFrame({"study_id": ["a", "a", "a", "b"], "level": [12, 13, 14, 14],
                          "hu_mean": [200.0, 100.0, 200.0, 150.0]})
    rule = L1HURule(110.0)
    assert rule.predict(frame).tolist() == [1, 1, 1, 0]                 # study a: L1 = 100 HU; b has no L1
    assert L1HURule(160.0).predict(frame).tolist() == [1, 1, 1, 1]
    p = rule.predict_proba(frame)
    assert ((p >= 0) & (p <= 1)).all() and p[0] == p[1] == p[2]


def test_radiomics_logistic_learns_a_separable_feature():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    frame = pd.DataFrame({"original_firstorder_Mean": 200 - 80 * y + rng.normal(0, 10, 80),
                          "original_glcm_Contrast": rng.normal(0, 1, 80), "site": "A"})
    model = RadiomicsLogistic().fit(frame, y)
    assert model.features == ["original_firstorder_Mean", "original_glcm_Contrast"]
    p = model.predict_proba(frame)
    assert ((p >= 0) & (p <= 1)).all() and (model.predict(frame) == y).mean() > 0.95
