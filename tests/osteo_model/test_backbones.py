"""Encoders: output shapes, ResNet34 layout, and the shared per-channel stem."""
from __future__ import annotations

import torch

from osteo_model.backbones import BasicBlock3d, build_backbone
from osteo_model.config import BackboneConfig


def test_compact_and_resnet34_embed_the_pool(backbone_cfg):
    x = torch.randn(2, 5, 16, 16, 8)
    assert build_backbone(backbone_cfg)(x).shape == (2, 16)
    cfg = BackboneConfig(name="resnet34", widths=(8, 8, 16, 16), layers=(3, 4, 6, 3), stem_width=8, embed_dim=16)
    net = build_backbone(cfg)
    assert net(x).shape == (2, 16)
    assert sum(isinstance(m, BasicBlock3d) for m in net.modules()) == 16              # 3 + 4 + 6 + 3


def test_single_channel_view_uses_the_same_weights_as_the_full_pool(backbone_cfg):
    torch.manual_seed(0)
    net = build_backbone(backbone_cfg).eval()
    x = torch.randn(2, 5, 16, 16, 8)
    # A 1-channel view of member c is accepted and differs by channel identity.
    hu = net(x[:, :1], torch.zeros(2, 1, dtype=torch.long))
    with torch.no_grad():
        net.stem.channel_embed[3] += 1.0
    as_contrast = net(x[:, :1], torch.full((2, 1), 3))
    assert hu.shape == (2, 16) and not torch.allclose(hu, as_contrast)


def test_stem_weighs_members_so_permuting_channels_changes_the_output(backbone_cfg):
    # Fails on a mean-fusion stem: a mean over members is invariant to their order.
    torch.manual_seed(0)
    net = build_backbone(backbone_cfg).eval()
    x = torch.randn(2, 5, 16, 16, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, permuted = net(x), net(x[:, perm])               # channel ids stay 0..4: members swap maps
    assert not torch.allclose(out, permuted, atol=1e-5)
    # Permuting the ids with the maps is the same input: the identity travels with the map.
    ids = perm.expand(2, 5)
    torch.testing.assert_close(net(x[:, perm], ids), out)


def test_stem_can_silence_one_member(backbone_cfg):
    # A learned mixing can drop a map entirely (M_c = 0): the output no longer depends on that member.
    torch.manual_seed(0)
    net = build_backbone(backbone_cfg).eval()
    x = torch.randn(2, 5, 16, 16, 8)
    y = x.clone()
    y[:, 3] = torch.randn(2, 16, 16, 8)                       # change only the Contrast map
    assert not torch.allclose(net(x), net(y), atol=1e-5)
    with torch.no_grad():
        net.stem.channel_mix[3].zero_()
    torch.testing.assert_close(net(x), net(y))
