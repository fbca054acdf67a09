"""Shared tiny fixtures for the model tests: small configs and an in-memory labeled dataset."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from osteo_model.config import BackboneConfig, MoEConfig, SwAVConfig, TrainConfig

SHAPE = (5, 16, 16, 8)  # (C, X, Y, Z): tiny texture pools


class SyntheticPools(Dataset):
    """n labeled vertebrae with random pools; labels loosely tied to the HU channel mean."""

    def __init__(self, n: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(n, *SHAPE, generator=g)
        self.bmd = 0.9 + 0.2 * self.pool[:, 0].mean(dim=(1, 2, 3))
        self.who = torch.randint(0, 3, (n,), generator=g)
        self.level = torch.randint(1, 19, (n,), generator=g)
        self.device = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pool": self.pool[i], "device": self.device[i], "who_class": self.who[i],
                "bmd": self.bmd[i], "level": self.level[i], "index": torch.tensor(i)}


@pytest.fixture
def backbone_cfg() -> BackboneConfig:
    return BackboneConfig(name="compact", widths=(8, 16), stem_width=8, embed_dim=16, norm="group")


@pytest.fixture
def swav_cfg() -> SwAVConfig:
    return SwAVConfig(proj_hidden=16, proj_dim=8, n_prototypes=6, freeze_prototypes_steps=2, sinkhorn_iters=3)


@pytest.fixture
def moe_cfg() -> MoEConfig:
    return MoEConfig(n_experts=3, expert_hidden=8)


@pytest.fixture
def train_cfg() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0.5, seed=7, device="cpu",
                       ckpt_every_steps=2, grad_clip=1.0)


@pytest.fixture
def dataset() -> SyntheticPools:
    return SyntheticPools()
