"""The training loop: exact crash-resume, NaN stop, refused checkpoints, LR schedule."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from osteo_model.backbones import build_backbone
from osteo_model.checkpoint import architecture_signature, load_checkpoint
from osteo_model.errors import CheckpointMismatchError, NonFiniteLossError
from osteo_model.moe import MultiTaskModel, MultiTaskObjective
from osteo_model.swav import SwAVModel, SwAVObjective
from osteo_model.train import fit, lr_multiplier


class Crash(RuntimeError):
    pass


def _augmented_pools(root):
    """12 real pools (HU + engine maps) re-imaged with p = 0.7 per epoch: items depend on (seed, epoch, row)."""
    from osteo_config.model import AugmentConfig
    from osteo_model.data import TexturePoolDataset
    from osteo_model.norm import ChannelNorm
    from osteo_testing.pool_fixtures import SETTINGS, SPACING, WINDOW, write_pools

    frame = write_pools(root, n=12, shape=(16, 16, 8))
    aug = AugmentConfig(p=0.7, hu_slope=(0.95, 1.05), hu_offset_hu=(-25, 25), noise_hu=(0, 16), psf_fwhm_mm=(0, 0.9),
                        slice_fwhm_mm=(0, 1.75))
    norm = ChannelNorm.fit(TexturePoolDataset(frame, root).iter_raw_pools())
    return TexturePoolDataset(frame, root, norm, cache=True, augment=aug, glcm=SETTINGS, spacing_mm=SPACING,
                              hu_window=WINDOW, seed=7)


def _make(kind, backbone_cfg, swav_cfg, moe_cfg):
    torch.manual_seed(123)
    if kind == "swav":
        return SwAVModel(build_backbone(backbone_cfg), swav_cfg), SwAVObjective(swav_cfg, "tp_swav", seed=5)
    return MultiTaskModel(build_backbone(backbone_cfg), moe_cfg), MultiTaskObjective(moe_cfg)


@pytest.mark.parametrize("kind", ["swav", "moe", "moe_augmented"])
def test_crash_and_resume_gives_bit_identical_weights(tmp_path, kind, backbone_cfg, swav_cfg, moe_cfg, train_cfg, dataset):
    # 12 vertebrae, batch 4 -> 3 steps/epoch, 2 epochs = 6 steps, checkpoints at steps 2, 4, 6.
    # moe_augmented: fine-tuning re-imaging on; the resumed run must draw the same scans (seed, epoch, row).
    if kind == "moe_augmented":
        dataset = _augmented_pools(tmp_path)
        assert dataset.epoch_keyed
    kind = "moe" if kind == "moe_augmented" else kind
    model, objective = _make(kind, backbone_cfg, swav_cfg, moe_cfg)
    reference = fit(model, objective, dataset, train_cfg, tmp_path / "straight", params_digest="p")
    assert reference.steps == 6

    def crash_at_5(step, metrics):
        if step == 5:                                            # mid-epoch 2, one step after the checkpoint
            raise Crash("simulated power cut")

    model, objective = _make(kind, backbone_cfg, swav_cfg, moe_cfg)
    with pytest.raises(Crash):
        fit(model, objective, dataset, train_cfg, tmp_path / "crashy", params_digest="p", log_metrics=crash_at_5)
    state = load_checkpoint(tmp_path / "crashy" / "last.pt", architecture_signature(model), "p")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)

    torch.manual_seed(999)                                       # a different init: resume must overwrite it
    model2, objective2 = _make(kind, backbone_cfg, swav_cfg, moe_cfg)
    torch.nn.init.zeros_(next(model2.parameters()))
    steps_seen = []
    resumed = fit(model2, objective2, dataset, train_cfg, tmp_path / "crashy", params_digest="p",
                  log_metrics=lambda s, m: steps_seen.append(s))
    assert resumed.resumed_from_step == 4 and steps_seen == [5, 6] and resumed.steps == 6
    for (name, a), (_, b) in zip(reference.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_nan_loss_stops_with_step_and_batch_recorded(tmp_path, backbone_cfg, swav_cfg, moe_cfg, train_cfg, dataset):
    model, objective = _make("moe", backbone_cfg, swav_cfg, moe_cfg)

    def poisoned(m, batch, step):
        loss, metrics = objective(m, batch, step)
        return (loss * float("nan") if step == 3 else loss), metrics

    with pytest.raises(NonFiniteLossError) as info:
        fit(model, poisoned, dataset, train_cfg, tmp_path)
    assert (info.value.step, info.value.epoch, info.value.batch_index) == (3, 1, 0)
    assert "step 3" in str(info.value) and "resume" in str(info.value)


def test_checkpoint_of_another_architecture_or_params_is_refused(tmp_path, backbone_cfg, swav_cfg, moe_cfg, train_cfg, dataset):
    cfg = dataclasses.replace(train_cfg, epochs=1)
    model, objective = _make("moe", backbone_cfg, swav_cfg, moe_cfg)
    fit(model, objective, dataset, cfg, tmp_path, params_digest="p1")
    wider = dataclasses.replace(backbone_cfg, widths=(8, 24))
    other, objective = _make("moe", wider, swav_cfg, moe_cfg)
    with pytest.raises(CheckpointMismatchError) as info:
        fit(other, objective, dataset, cfg, tmp_path, params_digest="p1")
    assert info.value.field == "architecture" and "fresh run directory" in str(info.value)
    same, objective = _make("moe", backbone_cfg, swav_cfg, moe_cfg)
    with pytest.raises(CheckpointMismatchError) as info:
        fit(same, objective, dataset, cfg, tmp_path, params_digest="p2")
    assert info.value.field == "params"
    # A pretraining checkpoint (SwAV model) cannot be resumed as a fine-tuning model either.
    swav_model, swav_obj = _make("swav", backbone_cfg, swav_cfg, moe_cfg)
    with pytest.raises(CheckpointMismatchError):
        fit(swav_model, swav_obj, dataset, cfg, tmp_path, params_digest="p1")


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    m = [lr_multiplier(s, total_steps=20, warmup_steps=5, min_ratio=0.1) for s in range(21)]
    assert m[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert m[5] == pytest.approx(1.0) and m[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(m[5:], m[6:]))                                # monotone decay
    assert m[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 7 / 15)).item()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: AMP runs on CUDA only")
def test_amp_on_cuda_trains_with_finite_loss(tmp_path, backbone_cfg, swav_cfg, moe_cfg, train_cfg, dataset):
    cfg = dataclasses.replace(train_cfg, device="cuda", amp=True, epochs=1)
    model, objective = _make("moe", backbone_cfg, swav_cfg, moe_cfg)
    losses = []
    result = fit(model, objective, dataset, cfg, tmp_path, log_metrics=lambda s, m: losses.append(m["loss"]))
    assert result.steps == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert next(result.model.parameters()).is_cuda


class _PidPools(torch.utils.data.Dataset):
    """Items carry the id of the process that produced them (a worker's pool cache lives there)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        import os
        return {**self.base[i], "pid": torch.tensor(os.getpid())}


def test_loader_workers_persist_across_epochs_so_their_pool_cache_survives(tmp_path, backbone_cfg, moe_cfg, train_cfg,
                                                                          dataset):
    # A per-process cache (TexturePoolDataset cache=True) is only reused if the same workers serve every epoch.
    model, objective = _make("moe", backbone_cfg, swav_cfg=None, moe_cfg=moe_cfg)
    pids: dict[int, set[int]] = {}

    def spy(m, batch, step):
        pids.setdefault(step // 3, set()).update(int(p) for p in batch["pid"])      # 3 steps per epoch
        return objective(m, batch, step)

    cfg = dataclasses.replace(train_cfg, epochs=3, num_workers=2)
    fit(model, spy, _PidPools(dataset), cfg, tmp_path)
    assert sorted(pids) == [0, 1, 2] and len(pids[0]) == 2
    assert pids[0] == pids[1] == pids[2]


class _KeyedPools(torch.utils.data.Dataset):
    """Records the keys it is asked for; ``epoch_keyed`` like an augmenting TexturePoolDataset."""

    epoch_keyed = True

    def __init__(self, base):
        self.base, self.keys = base, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        self.keys.append(key)
        return self.base[key % len(self.base)]


def test_an_epoch_keyed_dataset_receives_row_plus_epoch_times_length(tmp_path, backbone_cfg, moe_cfg, train_cfg, dataset):
    # Its draws are a function of (seed, epoch, row): the loop must tell it the epoch through the key.
    model, objective = _make("moe", backbone_cfg, swav_cfg=None, moe_cfg=moe_cfg)
    keyed = _KeyedPools(dataset)
    fit(model, objective, keyed, train_cfg, tmp_path)
    n = len(dataset)
    assert sorted(keyed.keys[:n]) == list(range(n)) and sorted(keyed.keys[n:]) == list(range(n, 2 * n))
