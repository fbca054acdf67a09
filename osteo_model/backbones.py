"""3-D encoders: a ResNet34 (paper profile) and a compact CNN (CPU profiles).

How the texture pool enters the encoder
---------------------------------------
TP-SwAV pretrains on *single-channel* views (the HU volume, or one GLCM map)
while fine-tuning sees all five pool channels at once. Paper 001 §2.1 encodes
every pool member "through a general encoder"; both stages therefore run through
the same weights thanks to a **per-channel shared stem** (:class:`ChannelStem`):

1. every channel c is convolved on its own by one shared ``Conv3d(1 -> W)``
   and normalised on its own (each member keeps a comparable scale),
2. a learned channel-type embedding ``e_c`` (W numbers, one per pool member) is
   added so the network knows *which* map it sees,
3. a learned **per-member mixing** ``M_c`` (a W x W matrix per pool member, i.e.
   a 1x1x1 convolution over the stacked member features) weights and filters
   each map on its own before the members present are summed and divided by
   their count: ``h = relu( (1/|C|) sum_c M_c (norm(conv(x_c)) + e_c) )``.

``M_c`` starts at the identity (plus a small member-specific perturbation), so an
untrained stem is close to the mean of the members, but the network can learn to
amplify, suppress or recombine a map. The division by the count keeps a 1-channel
pretraining view and the 5-channel fine-tuning input on the same scale, and no
weight has to be replicated or re-initialised between stages. Because ``M_c``
belongs to the member id, permuting the channels of x (ids unchanged) changes
the output: the maps are weighed, not averaged.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from osteo_model.config import POOL_CHANNELS, BackboneConfig


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name; GroupNorm (default) does not depend on the batch size."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ChannelStem(nn.Module):
    """Shared per-channel stem with channel-type embeddings and learned per-member mixing (see module doc)."""

    def __init__(self, n_channels: int, width: int, norm: str, stride: int = 2) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.conv = nn.Conv3d(1, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.channel_embed = nn.Parameter(torch.zeros(n_channels, width))
        self.norm = make_norm(norm, width)
        # M_c: identity + small member-specific noise (std 0.1/sqrt(W)), so members differ from step 0.
        mix = torch.eye(width).repeat(n_channels, 1, 1) + torch.randn(n_channels, width, width) * (0.1 / math.sqrt(width))
        self.channel_mix = nn.Parameter(mix)                  # (n_channels, W_out, W_in)

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, C, X, Y, Z); channel_ids (B, C) pool indices of x's channels (None: 0..C-1)."""
        B, C = x.shape[:2]
        if channel_ids is None:
            channel_ids = torch.arange(C, device=x.device).expand(B, C)
        h = self.norm(self.conv(x.reshape(B * C, 1, *x.shape[2:])))  # (B*C, W, X', Y', Z')
        h = h.reshape(B, C, *h.shape[1:])                     # (B, C, W, X', Y', Z')
        e = self.channel_embed[channel_ids]                   # (B, C, W)
        h = h + e[..., None, None, None]                      # after the norm, so the identity survives it
        m = self.channel_mix[channel_ids].to(h.dtype)         # (B, C, W_out, W_in)
        h = torch.einsum("bcoi,bcixyz->boxyz", m, h) / C      # (B, W, X', Y', Z'): 1x1x1 conv over members
        return F.relu(h)
class BasicBlock3d(nn.Module):
    """ResNet BasicBlock in 3-D: two 3x3x3 convs and an identity (or 1x1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.n1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.n2 = make_norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), make_norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.conv1(x)))
        h = self.n2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


def resnet_body(cfg: BackboneConfig) -> nn.Sequential:
    """ResNet stages: ``cfg.layers[i]`` BasicBlocks of width ``cfg.widths[i]``; stages 2+ halve the grid."""
    stages, c_in = [], cfg.stem_width
    for i, (width, n_blocks) in enumerate(zip(cfg.widths, cfg.layers)):
        blocks = [BasicBlock3d(c_in, width, stride=1 if i == 0 else 2, norm=cfg.norm)]
        blocks += [BasicBlock3d(width, width, 1, cfg.norm) for _ in range(n_blocks - 1)]
        stages.append(nn.Sequential(*blocks))
        c_in = width
    return nn.Sequential(*stages)


def compact_body(cfg: BackboneConfig) -> nn.Sequential:
    """Plain CNN for CPUs: per stage one 3x3x3 conv (stride 2) + norm + ReLU."""
    layers, c_in = [], cfg.stem_width
    for width in cfg.widths:
        layers += [nn.Conv3d(c_in, width, 3, stride=2, padding=1, bias=False), make_norm(cfg.norm, width), nn.ReLU()]
        c_in = width
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Texture-pool encoder: stem -> body -> global average pool -> embedding P_I of size ``embed_dim``."""

    def __init__(self, cfg: BackboneConfig, n_channels: int = len(POOL_CHANNELS)) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.stem = ChannelStem(n_channels, cfg.stem_width, cfg.norm)
        self.body = resnet_body(cfg) if cfg.name == "resnet34" else compact_body(cfg)
        last = cfg.widths[-1]
        self.head: nn.Module = nn.Identity() if last == cfg.embed_dim else nn.Linear(last, cfg.embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, C, X, Y, Z) normalised pool channels; channel_ids (B, C) or None. Returns (B, embed_dim)."""
        h = self.body(self.stem(x, channel_ids))              # (B, W_last, x, y, z)
        h = h.mean(dim=(2, 3, 4))                             # (B, W_last)
        return self.head(h)                                   # (B, embed_dim)


def build_backbone(cfg: BackboneConfig, n_channels: int = len(POOL_CHANNELS)) -> Encoder:
    """Build the encoder named by ``cfg.name`` (``resnet34`` uses BasicBlocks ``cfg.layers``, paper [3, 4, 6, 3]).

    Args:
        cfg: ``model.backbone`` section.
        n_channels: texture-pool members known to the channel embedding (5 by the data contract).

    Returns:
        An :class:`Encoder` mapping (B, C, X, Y, Z) to (B, embed_dim).
    """
    return Encoder(cfg, n_channels)
