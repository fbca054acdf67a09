"""SwAV / TP-SwAV: Eq. 1 against a hand computation, regulariser, prototypes, views."""
from __future__ import annotations

import math

import torch

from osteo_model.backbones import build_backbone
from osteo_model.swav import SwAVModel, SwAVObjective, prototype_uniformity, swapped_prediction_loss
from osteo_model.train import fit
from osteo_model.views import crop_views, step_generator, tp_views


def test_swapped_loss_matches_hand_computation():
    # tau = 1; softmax(scores_t) = [1/4, 3/4], softmax(scores_s) = [1/2, 1/2].
    scores_t = torch.tensor([[0.0, math.log(3.0)]] * 2)
    scores_s = torch.zeros(2, 2)
    q_s = torch.tensor([[0.5, 0.5]] * 2)
    q_t = torch.tensor([[1.0, 0.0]] * 2)
    # -[0.5 ln 1/4 + 0.5 ln 3/4] - [1 ln 1/2]
    expected = 0.5 * math.log(4) + 0.5 * math.log(4 / 3) + math.log(2)
    got = swapped_prediction_loss(scores_s, scores_t, q_s, q_t, temperature=1.0)
    assert abs(got.item() - expected) < 1e-6
    # Temperature divides the scores: tau = 0.5 on halved scores gives the same value.
    got_tau = swapped_prediction_loss(scores_s / 2, scores_t / 2, q_s, q_t, temperature=0.5)
    assert abs(got_tau.item() - expected) < 1e-6


def test_uniformity_regulariser_by_hand():
    two_orthogonal = torch.eye(2)
    assert abs(prototype_uniformity(two_orthogonal).item() - (-4.0)) < 1e-6        # log exp(-2 * 2)
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = math.log((2 * 1.0 + 4 * math.exp(-4.0)) / 6)                         # 6 ordered pairs
    assert abs(prototype_uniformity(dup).item() - expected) < 1e-6
    assert prototype_uniformity(dup) > prototype_uniformity(torch.eye(3))            # spread -> lower


def test_tp_views_pick_two_distinct_members(dataset):
    pool = dataset.pool[:6]                                                           # (6, 5, 16, 16, 8)
    for pairs in ("hu_texture", "any_pair"):
        views, ids = tp_views(pool, step_generator(0, 3), pairs)
        assert views.shape == (12, 1, 16, 16, 8) and ids.shape == (12, 1)
        s, t = ids[:6, 0], ids[6:, 0]
        assert (s != t).all()
        for b in range(6):
            assert torch.equal(views[b, 0], pool[b, s[b]]) and torch.equal(views[6 + b, 0], pool[b, t[b]])
    views, ids = tp_views(pool, step_generator(0, 3), "hu_texture")
    assert (ids[:6] == 0).all() and (ids[6:] > 0).all()
    same, _ = tp_views(pool, step_generator(0, 3), "hu_texture")
    assert torch.equal(views, same)                                                   # a function of (seed, step)


def test_crop_views_keep_the_grid_and_use_hu_only(dataset):
    pool = dataset.pool[:3]
    views, ids = crop_views(pool, step_generator(1, 0), (0.5, 0.8), 0.1)
    assert views.shape == (6, 1, 16, 16, 8) and (ids == 0).all()
    assert not torch.equal(views[:3], views[3:])                                      # two different views
    again, _ = crop_views(pool, step_generator(1, 0), (0.5, 0.8), 0.1)
    assert torch.equal(views, again)


def test_prototypes_frozen_then_updated_and_renormalised(tmp_path, backbone_cfg, swav_cfg, train_cfg, dataset):
    torch.manual_seed(0)
    model = SwAVModel(build_backbone(backbone_cfg), swav_cfg)                         # freeze for 2 steps
    initial = model.prototypes.weight.detach().clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(6))
    seen: dict[int, torch.Tensor] = {}
    enc_initial = model.encoder.stem.conv.weight.detach().clone()

    def log(step, metrics):
        seen[step] = model.prototypes.weight.detach().clone()
        assert math.isfinite(metrics["loss_ssl"]) and "loss_div" in metrics

    fit(model, SwAVObjective(swav_cfg, "tp_swav", seed=1), dataset, train_cfg, tmp_path, log_metrics=log)
    assert torch.equal(seen[1], initial) and torch.equal(seen[2], initial)           # steps 0, 1 frozen
    assert not torch.equal(seen[3], initial)                                         # step 2 updates them
    for step in (3, 4, 5, 6):
        torch.testing.assert_close(seen[step].norm(dim=1), torch.ones(6), atol=1e-6, rtol=0)
    assert not torch.equal(model.encoder.stem.conv.weight, enc_initial)             # encoder trained meanwhile


def test_swav_baseline_objective_runs_and_backpropagates(backbone_cfg, swav_cfg, dataset):
    model = SwAVModel(build_backbone(backbone_cfg), swav_cfg)
    batch = {"pool": dataset.pool[:4]}
    loss, metrics = SwAVObjective(swav_cfg, "swav", seed=0)(model, batch, step=0)
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(metrics["loss"])
    assert model.encoder.stem.conv.weight.grad is not None
    # Only the HU embedding row is used by the crop baseline.
    emb_grad = model.encoder.stem.channel_embed.grad
    assert emb_grad[0].abs().sum() > 0 and emb_grad[1:].abs().sum() == 0
