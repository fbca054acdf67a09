"""The two views of one vertebra fed to SwAV-style pretraining.

* **TP-SwAV** (paper §2.1): two *different members of the texture pool* of the
  same vertebra, e.g. the HU volume and its Contrast map. No cropping: the
  sliding-window texture maps already are a texture-preserving "augmentation".
* **SwAV baseline**: two random 3-D crops of the HU volume, each resized back to
  the ROI grid (trilinear), randomly flipped along each axis and given a random
  gain/offset in normalised-HU units. CT is single-channel and calibrated, so
  there is no colour jitter and no ImageNet normalisation.

Views are returned stacked as one (2B, 1, X, Y, Z) batch (first B rows = view
s, last B rows = view t) with their pool channel ids (2B, 1), so one encoder
forward serves both views (one forward per step also keeps DDP simple).
Randomness comes from an explicit ``torch.Generator`` so that a resumed run
draws exactly the same views (see :func:`step_generator`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded by (seed, step, rank): view sampling is a function of the step, so resume is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1))


def tp_views(pool: torch.Tensor, g: torch.Generator, pairs: str = "hu_texture") -> tuple[torch.Tensor, torch.Tensor]:
    """Pick two distinct texture-pool members per vertebra.

    Args:
        pool: (B, C, X, Y, Z) normalised texture pool (channel 0 = HU).
        g: generator for the member choice.
        pairs: ``hu_texture`` (view s = HU, view t = one random texture map) or
            ``any_pair`` (two distinct random members).

    Returns:
        views (2B, 1, X, Y, Z) and channel ids (2B, 1).
    """
    B, C = pool.shape[:2]
    if C < 2:
        raise ValueError("TP-SwAV needs a texture pool with at least 2 members")
    if pairs == "hu_texture":
        s = torch.zeros(B, dtype=torch.long)
        t = torch.randint(1, C, (B,), generator=g)
    elif pairs == "any_pair":
        s = torch.randint(0, C, (B,), generator=g)
        t = (s + torch.randint(1, C, (B,), generator=g)) % C    # never equal to s
    else:
        raise ValueError(f"unknown tp pairs {pairs!r}: use hu_texture | any_pair")
    ids = torch.cat([s, t]).to(pool.device)                     # (2B,)
    rows = torch.arange(B, device=pool.device).repeat(2)        # (2B,)
    views = pool[rows, ids].unsqueeze(1)                        # (2B, 1, X, Y, Z)
    return views, ids.unsqueeze(1)                              # (2B, 1, X, Y, Z), (2B, 1)


def _random_crop(vol: torch.Tensor, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    """One isotropic-fraction random crop of vol (1, X, Y, Z), resized back to (1, X, Y, Z)."""
    shape = vol.shape[1:]
    frac = lo + (hi - lo) * torch.rand((), generator=g).item()
    slices = []
    for n in shape:
        size = max(2, min(n, round(frac * n)))
        start = int(torch.randint(0, n - size + 1, (1,), generator=g))
        slices.append(slice(start, start + size))
    crop = vol[:, slices[0], slices[1], slices[2]]              # (1, x, y, z)
    return F.interpolate(crop[None], size=tuple(shape), mode="trilinear", align_corners=False)[0]


def crop_views(hu: torch.Tensor, g: torch.Generator, crop_scale: tuple[float, float] = (0.5, 1.0),
               jitter: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """SwAV baseline views of the HU channel: random crop + resize, flips, intensity gain/offset.

    Args:
        hu: (B, 1, X, Y, Z) normalised HU volumes (or the full pool: only channel 0 is used).
        g: generator for every random draw.
        crop_scale: range of the crop side as a fraction of the ROI side.
        jitter: std of the gain (around 1) and offset (around 0), in normalised units.

    Returns:
        views (2B, 1, X, Y, Z) and channel ids (2B, 1), all 0 (HU).
    """
    hu = hu[:, :1]                                              # (B, 1, X, Y, Z)
    out = []
    for _view in range(2):
        for b in range(hu.shape[0]):
            v = _random_crop(hu[b], g, *crop_scale)             # (1, X, Y, Z)
            flips = [d + 1 for d in range(3) if torch.rand((), generator=g).item() < 0.5]
            if flips:
                v = torch.flip(v, dims=flips)
            gain = 1.0 + jitter * torch.randn((), generator=g).item()
            offset = jitter * torch.randn((), generator=g).item()
            out.append(v * gain + offset)
    views = torch.stack(out)                                    # (2B, 1, X, Y, Z)
    return views, torch.zeros(views.shape[0], 1, dtype=torch.long, device=hu.device)
