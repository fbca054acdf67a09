"""SwAV / TP-SwAV: Eq. 1 against a hand computation, regulariser, prototypes, views."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from osteo_config.model import ModelConfigError
from osteo_model.pipeline import check_queue

from osteo_model.backbones import build_backbone
from osteo_model.swav import SwAVModel, SwAVObjective, prototype_uniformity, queued_codes, swapped_prediction_loss
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


def test_crop_views_crop_all_members_alike(dataset):
    pool = dataset.pool[:3]
    views, ids = crop_views(pool, step_generator(1, 0), (0.5, 0.8), flip=True, noise_std=0.0)
    assert views.shape == (6, 5, 16, 16, 8) and torch.equal(ids, torch.arange(5).expand(6, 5))
    assert not torch.equal(views[:3], views[3:])                                      # two different views
    again, _ = crop_views(pool, step_generator(1, 0), (0.5, 0.8), flip=True, noise_std=0.0)
    assert torch.equal(views, again)
    # One crop box for all members: a pool whose members are copies of one map gives identical channels.
    same = pool[:, :1].expand(3, 5, 16, 16, 8)
    v, _ = crop_views(same, step_generator(2, 0), (0.5, 0.8))
    for c in range(1, 5):
        assert torch.equal(v[:, c], v[:, 0])


def test_tp_views_are_augmented_texture_preservingly(dataset):
    # Without augmentation a vertebra yields only 4 distinct (HU, map) pairs; with it, every draw differs.
    pool = dataset.pool[:1].repeat(8, 1, 1, 1, 1)                                     # one vertebra, 8 times
    plain, ids = tp_views(pool, step_generator(0, 0), "hu_texture")
    aug, ids_aug = tp_views(pool, step_generator(0, 0), "hu_texture", (0.85, 1.0), True, 0.1)
    assert torch.equal(ids, ids_aug)                                                  # same member choice
    assert torch.equal(plain[:8], pool[:, :1])                                        # no augmentation: HU as is
    assert len({v.numpy().tobytes() for v in aug[:8]}) == 8                          # 8 distinct HU views
    # Noise goes to HU only: with no crop/flip, a texture-map view equals its map exactly.
    noisy, ids_n = tp_views(pool, step_generator(0, 0), "hu_texture", (1.0, 1.0), False, 0.1)
    assert not torch.equal(noisy[:8], pool[:, :1])
    for b in range(8):
        assert torch.equal(noisy[8 + b, 0], pool[b, ids_n[8 + b, 0]])
    # Flips keep the voxel values (a permutation): the texture statistics are untouched.
    flipped, _ = tp_views(pool, step_generator(5, 0), "hu_texture", (1.0, 1.0), True, 0.0)
    torch.testing.assert_close(flipped[:8].flatten(1).sort(dim=1).values, pool[:, 0].flatten(1).sort(dim=1).values)


def test_codes_are_capped_at_batch_over_k_without_a_queue():
    # Equipartition: each prototype gets 1/K of the rows' mass, so with B < K no code exceeds B/K.
    g = torch.Generator().manual_seed(0)
    K, B, L = 16, 4, 60
    protos = torch.nn.functional.normalize(torch.randn(K, 8, generator=g), dim=1)
    batch = protos[:B] + 0.01 * torch.randn(B, 8, generator=g)                        # each near one prototype
    queue = protos[torch.arange(L) % K] + 0.01 * torch.randn(L, 8, generator=g)
    alone = queued_codes(batch @ protos.T, None, 200, 0.05)            # converged: columns sum to B/K
    with_queue = queued_codes(batch @ protos.T, queue @ protos.T, 200, 0.05)
    assert alone.max() <= B / K + 1e-3
    assert with_queue.max() > 2 * B / K                                             # past the cap: confident targets
    torch.testing.assert_close(with_queue.sum(dim=1), torch.ones(B, dtype=with_queue.dtype))


def test_objective_queue_fills_with_past_projections(backbone_cfg, swav_cfg, dataset):
    cfg = dataclasses.replace(swav_cfg, queue_length=10)
    model = SwAVModel(build_backbone(backbone_cfg), cfg)
    objective = SwAVObjective(cfg, "tp_swav", seed=0, hu_std=100.0)
    assert objective.noise_std == cfg.view_noise_hu / 100.0                          # HU -> normalised units
    for step in range(3):
        objective(model, {"pool": dataset.pool[4 * step:4 * step + 4]}, step)
    assert objective.queue.shape == (2, 10, cfg.proj_dim) and objective.queue_filled == 10
    torch.testing.assert_close(objective.queue.norm(dim=2), torch.ones(2, 10))       # projections are unit-norm


def test_pretraining_below_k_rows_without_queue_is_refused():
    with pytest.raises(ModelConfigError, match="queue_length"):
        check_queue(n_prototypes=300, queue_length=0, batch_size=32)
    check_queue(n_prototypes=300, queue_length=960, batch_size=32)


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


@pytest.mark.parametrize("method", ["swav", "tp_swav"])
def test_both_pretraining_arms_train_every_channel_row(backbone_cfg, swav_cfg, dataset, method):
    # Comparable arms: SwAV and TP-SwAV both see the 5 pool members, so every member-specific stem
    # weight (embedding row, mixing matrix) gets a gradient in pretraining, as in fine-tuning.
    torch.manual_seed(0)
    model = SwAVModel(build_backbone(backbone_cfg), swav_cfg)
    loss = sum(SwAVObjective(swav_cfg, method, seed=0)(model, {"pool": dataset.pool}, step=s)[0] for s in range(3))
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    stem = model.encoder.stem
    for c in range(5):
        assert stem.channel_embed.grad[c].abs().sum() > 0, (method, c)
        assert stem.channel_mix.grad[c].abs().sum() > 0, (method, c)
