"""Companion methods: threshold vs brute force, adaptive triplet margin, pseudo-BMD rounds, STR heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from osteo_model.backbones import build_backbone
from osteo_model.companion import (PseudoLabels, ScreeningModel, adaptive_triplet_loss, batch_triplets,
                                   refine_pseudo_bmd, screening_loss, select_threshold, self_training)


def _brute_force(scores, labels, min_sens):
    best = None
    for t in np.unique(scores):
        pred = scores >= t
        sens = (pred & (labels == 1)).sum() / (labels == 1).sum()
        spec = (~pred & (labels == 0)).sum() / (labels == 0).sum()
        if sens >= min_sens and (best is None or (spec, sens) > (best[1], best[2])):
            best = (t, spec, sens)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 60))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)                 # rounding creates ties
    min_sens = float(rng.choice([0.5, 0.86, 0.95, 1.0]))
    got = select_threshold(scores, labels, min_sens)
    t, spec, sens = _brute_force(scores, labels, min_sens)
    assert (got.threshold, got.specificity, got.sensitivity) == (t, pytest.approx(spec), pytest.approx(sens))
    assert got.sensitivity >= min_sens


def test_threshold_rejects_one_class_labels():
    with pytest.raises(ValueError, match="both classes"):
        select_threshold(np.array([0.1, 0.2]), np.array([1, 1]))


def test_adaptive_triplet_margin_grows_with_bmd_gap():
    a, p, n = torch.zeros(1, 2), torch.tensor([[0.3, 0.0]]), torch.tensor([[0.5, 0.0]])
    losses = [adaptive_triplet_loss(a, p, n, torch.tensor([0.9]), torch.tensor([0.9 + g]), 0.1, 1.0).item()
              for g in (0.0, 0.05, 0.1, 0.2, -0.3)]
    # hand value: relu(0.3 - 0.5 + 0.1 + |gap|)
    assert losses == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2], abs=1e-6)
    gaps = np.linspace(0, 0.5, 11)
    vals = [adaptive_triplet_loss(a, p, n, torch.tensor([0.9]), torch.tensor([0.9 + g]), 0.1, 1.0).item() for g in gaps]
    assert all(x <= y for x, y in zip(vals, vals[1:])) and vals[-1] > vals[0]


def test_batch_triplets_positive_is_nearest_and_negatives_farther():
    bmd = torch.tensor([0.70, 0.72, 0.90, float("nan"), 1.10])
    a, p, n = batch_triplets(bmd)
    assert 3 not in a.tolist() + p.tolist() + n.tolist()
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        assert abs(bmd[ai] - bmd[pi]) < abs(bmd[ai] - bmd[ni]) and len({ai, pi, ni}) == 3
    assert sorted(n[a == 0].tolist()) == [2, 4] and set(p[a == 0].tolist()) == {1}


def test_pseudo_labels_confidence_rule_and_refinement():
    preds = np.array([[1.0, 0.8, 0.5], [1.0, 0.9, 0.9]])               # spreads 0, 0.05, 0.2
    first = refine_pseudo_bmd(preds, None, max_std=0.05, momentum=0.5)
    np.testing.assert_allclose(first.bmd, [1.0, 0.85, 0.7])
    assert first.confident.tolist() == [True, True, False]
    second = refine_pseudo_bmd(np.array([[0.8, 0.85, 0.7]]), first, max_std=0.05, momentum=0.5)
    np.testing.assert_allclose(second.bmd, [0.9, 0.85, 0.7])            # 0.5 * previous + 0.5 * new mean


def test_self_training_feeds_each_round_the_previous_pseudo_labels():
    truth = np.array([0.8, 1.0, 1.2])
    seen: list[PseudoLabels | None] = []

    def train_round(pseudo):
        seen.append(pseudo)
        return 0.5 if pseudo is None else 0.5 * (1 - len(seen) / 10)   # "model" = its bias

    model, history = self_training(3, train_round, lambda bias: (truth + bias)[None, :], 0.1, 0.5)
    assert len(history) == 3 and seen[0] is None and seen[1:] == history
    errors = [np.abs(h.bmd - truth).mean() for h in history]
    assert errors == sorted(errors, reverse=True)                       # refined labels approach the truth


def test_screening_loss_terms_by_hand(backbone_cfg):
    out = {"screen_logit": torch.tensor([0.0, 0.0, 0.0]), "severity_logit": torch.tensor([0.0, 0.0, 0.0]),
           "tscore": torch.tensor([-1.0, -2.0, 0.0])}
    total, parts = screening_loss(out, torch.tensor([0, 2, -1]), torch.tensor([-1.5, float("nan"), 0.0]), 2.0)
    ln2 = float(np.log(2))
    assert parts["screen"].item() == pytest.approx(ln2)                 # two labeled rows, p = 0.5
    assert parts["severity"].item() == pytest.approx(ln2)               # only the osteoporosis row
    assert parts["tscore"].item() == pytest.approx((0.25 + 0.0) / 2)
    assert total.item() == pytest.approx(2 * ln2 + 2.0 * 0.125)
    model = ScreeningModel(build_backbone(backbone_cfg))
    res = model(torch.randn(2, 5, 16, 16, 8))
    assert res["screen_logit"].shape == (2,) and res["tscore"].shape == (2,)


# --- operating point: patient-level aggregation and Platt calibration --------------------------
def test_patient_max_reproduces_the_any_vertebra_rule():
    from osteo_model.companion import patient_max
    rng = np.random.default_rng(3)
    pid = rng.integers(0, 15, 80)
    s, y = rng.random(80), (rng.random(80) < 0.3).astype(int)
    ps, py = patient_max(s, y, pid)
    for t in (0.2, 0.5, 0.8):                      # thresholding patient rows == any vertebra over t
        per_patient = {p: (s[pid == p] >= t).any() for p in np.unique(pid)}
        assert list(ps >= t) == [per_patient[p] for p in np.unique(pid)]
    assert list(py) == [int(y[pid == p].max()) for p in np.unique(pid)]


def test_platt_recovers_a_known_logistic_map_and_keeps_the_ranking():
    from osteo_model.companion import PlattCalibration
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 20000)
    raw = 1 / (1 + np.exp(-z))                    # scores whose true log-odds are 0.5 * z - 1
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)
    cal = PlattCalibration.fit(raw, y)
    assert cal.a == pytest.approx(0.5, abs=0.05) and cal.b == pytest.approx(-1.0, abs=0.06)
    out = cal.apply(raw)
    assert (np.argsort(out, kind="stable") == np.argsort(raw, kind="stable")).all()
    with pytest.raises(ValueError, match="both classes"):
        PlattCalibration.fit(raw[:10], np.zeros(10))
    with pytest.raises(ValueError, match="do not rank"):
        PlattCalibration.fit(raw, (rng.random(z.size) < 1 / (1 + np.exp(z))).astype(int))   # anti-ranked
