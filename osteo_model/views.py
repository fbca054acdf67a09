"""The two views of one vertebra fed to SwAV-style pretraining.

Both arms see **all five pool members** over pretraining and share one
physics-respecting augmentation (:func:`augment`); they differ only in how a
view is built, which is what the paper's comparison is about:

* **TP-SwAV** (paper §2.1): each view is *one member of the texture pool* of the
  vertebra (view s = HU, view t = a GLCM map, or two distinct members), plus a
  *small* random crop (``tp_crop_scale``, default >= 0.85 of the side) so that a
  vertebra does not always yield the same 4 pairs. The crop is resized back to
  the ROI grid, a scale change of at most ~15 %, well inside the voxel-size spread
  of the training scanners: the texture is preserved.
* **SwAV baseline**: each view is a *large* random 3-D crop (``crop_scale``,
  default 0.5-1.0 of the side) of the whole 5-channel pool (one crop box for all
  members), resized back to the ROI grid: the conventional cropping the paper
  argues destroys texture. Same 5 channels as fine-tuning, so no stem weight stays
  untrained and scratch / SwAV / TP-SwAV fine-tune the same network on the same input.

:func:`augment` (both arms): random flips along each axis (texture statistics do
not depend on the direction the trabeculae are traversed) and Gaussian noise of
``noise_std`` normalised units **on the HU channel only** (CT noise lives on HU;
a GLCM map of a noisier scan is not the old map plus white noise). No gain/offset
or colour jitter: CT numbers are calibrated, and no ImageNet normalisation.

Views are returned stacked as one (2B, C_v, X, Y, Z) batch (first B rows = view
s, last B rows = view t; C_v = 1 for TP-SwAV, 5 for SwAV) with their pool channel
ids (2B, C_v), so one encoder forward serves both views (one forward per step
also keeps DDP simple). Randomness comes from an explicit ``torch.Generator`` so
that a resumed run draws exactly the same views (see :func:`step_generator`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HU_CHANNEL = 0


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded by (seed, step, rank): view sampling is a function of the step, so resume is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1))


def member_choice(B: int, C: int, g: torch.Generator, pairs: str = "hu_texture") -> tuple[torch.Tensor, torch.Tensor]:
    """Pool members (s, t) per vertebra, each (B,), never equal: ``hu_texture`` (s = HU) | ``any_pair``."""
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
    return s, t


def random_crop(vol: torch.Tensor, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    """One random crop of vol (C, X, Y, Z) whose side is a fraction in [lo, hi], resized back to (C, X, Y, Z).

    The same box is cut from every channel (the members stay voxel-aligned).
    """
    shape = vol.shape[1:]
    if lo >= 1.0:
        return vol
    frac = lo + (hi - lo) * torch.rand((), generator=g).item()
    slices = []
    for n in shape:
        size = max(2, min(n, round(frac * n)))
        start = int(torch.randint(0, n - size + 1, (1,), generator=g))
        slices.append(slice(start, start + size))
    crop = vol[:, slices[0], slices[1], slices[2]]              # (C, x, y, z)
    if tuple(crop.shape[1:]) == tuple(shape):
        return crop
    return F.interpolate(crop[None], size=tuple(shape), mode="trilinear", align_corners=False)[0]


def augment(view: torch.Tensor, ids: torch.Tensor, g: torch.Generator, crop_scale: tuple[float, float],
            flip: bool, noise_std: float) -> torch.Tensor:
    """Physics-respecting augmentation of one view.

    Args:
        view: (C_v, X, Y, Z) normalised pool members.
        ids: (C_v,) their pool channel ids (noise goes to id 0 = HU only).
        g: generator for every draw.
        crop_scale: side-fraction range of the random crop (resized back); (1, 1) = no crop.
        flip: random flip along each axis with probability 1/2.
        noise_std: std of the Gaussian noise added to the HU member, in normalised units.

    Returns:
        (C_v, X, Y, Z).
    """
    v = random_crop(view, g, *crop_scale)
    if flip:
        dims = [d + 1 for d in range(3) if torch.rand((), generator=g).item() < 0.5]
        if dims:
            v = torch.flip(v, dims=dims)
    if noise_std > 0:
        noise = torch.randn(v.shape, generator=g) * noise_std  # drawn on CPU: same numbers on any device
        is_hu = (ids.cpu() == HU_CHANNEL).to(v.dtype).reshape(-1, 1, 1, 1)
        v = v + (noise * is_hu).to(v.device, v.dtype)
    return v


def tp_views(pool: torch.Tensor, g: torch.Generator, pairs: str = "hu_texture",
             crop_scale: tuple[float, float] = (1.0, 1.0), flip: bool = False,
             noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """TP-SwAV views: two distinct texture-pool members per vertebra, each lightly augmented.

    Args:
        pool: (B, C, X, Y, Z) normalised texture pool (channel 0 = HU).
        g: generator for the member choice and the augmentation.
        pairs: ``hu_texture`` (view s = HU, view t = one random texture map) or
            ``any_pair`` (two distinct random members).
        crop_scale, flip, noise_std: see :func:`augment` (defaults: no augmentation).

    Returns:
        views (2B, 1, X, Y, Z) and channel ids (2B, 1).
    """
    B, C = pool.shape[:2]
    s, t = member_choice(B, C, g, pairs)
    ids = torch.cat([s, t])                                     # (2B,)
    rows = torch.arange(B).repeat(2)                            # (2B,)
    out = [augment(pool[int(r), int(c)][None], ids[i:i + 1], g, crop_scale, flip, noise_std)
           for i, (r, c) in enumerate(zip(rows, ids))]
    views = torch.stack(out)                                    # (2B, 1, X, Y, Z)
    return views, ids.unsqueeze(1).to(pool.device)              # (2B, 1, X, Y, Z), (2B, 1)


def crop_views(pool: torch.Tensor, g: torch.Generator, crop_scale: tuple[float, float] = (0.5, 1.0),
               flip: bool = True, noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """SwAV baseline views: two large random crops of the whole pool (all members), resized back, augmented.

    Args:
        pool: (B, C, X, Y, Z) normalised texture pools.
        g: generator for every random draw.
        crop_scale: range of the crop side as a fraction of the ROI side.
        flip, noise_std: see :func:`augment`.

    Returns:
        views (2B, C, X, Y, Z) and channel ids (2B, C) = 0..C-1.
    """
    B, C = pool.shape[:2]
    ids = torch.arange(C)
    out = [augment(pool[b], ids, g, crop_scale, flip, noise_std) for _view in range(2) for b in range(B)]
    views = torch.stack(out)                                    # (2B, C, X, Y, Z)
    return views, ids.expand(2 * B, C).to(pool.device)
