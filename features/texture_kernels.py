"""Compute kernels of the texture engine: numba (CPU) and torch (CUDA or CPU).

Both take ROIs already discretised by :mod:`features.texture` (levels 1..Ng in
the mask, 0 outside), the per-batch table of dropped directions and the batch
id of every voxel, and return float64 maps (4, X, Y, Z) in
``texture.FEATURES`` order. See :mod:`features.texture` for the maths.

Index conventions: every ROI is zero-padded by ``P = r + 1`` voxels per side,
so a pair partner ``o + a`` of any origin ``o`` that matters is in range and a
padded voxel (level 0) never forms a pair. For an output voxel ``v`` and a
direction component ``a_d`` the pair origins in the kernel run over
``[v - s_d, v + e_d]`` with ``s_d = r - max(0, -a_d)`` and ``e_d = r - max(0, a_d)``.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from features.texture import DIRECTIONS

Prepared = tuple  # (levels (X, Y, Z) int32, drop (13, n_batches) uint8, batch_id (X, Y, Z) int32)


def _layout(ng: int, radius: int) -> tuple[np.ndarray, type]:
    """Bit layout of the moment channels and the integer type of the box sums.

    A kernel sum of one moment is at most ``W = (2r+1)^3`` times its largest
    term, and every running sum in the kernel holds at most one window, so the
    five moments fit as bit fields of two int64 words when the bounds allow:
    word 0 = n | S_ij << sA | S_d2 << sB, word 1 = S_i+j | S_|d| << sC. Box sums
    are linear, and no field ever borrows from its neighbour because every
    intermediate value is a sum of non-negative terms below its field's bound.
    Otherwise five plain channels: int32 when they provably fit, else int64.

    Returns:
        layout: int64 [packed (0/1), sA, sB, sC]; dtype of the level array and sums.
    The numba kernel needs the packed layout; the torch path uses plain channels.
    """
    w = (2 * radius + 1) ** 3
    bits = [int(v).bit_length() for v in
            (w, w * ng * ng, w * (ng - 1) ** 2, 2 * w * ng, w * max(ng - 1, 0))]
    if bits[0] + bits[1] + bits[2] <= 63 and bits[3] + bits[4] <= 63:
        return np.array([1, bits[0], bits[0] + bits[1], bits[3]], dtype=np.int64), np.int64
    dtype = np.int32 if w * ng * ng < 2**31 - 1 else np.int64
    return np.zeros(4, dtype=np.int64), dtype


# --- numba -------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _slice_moments(g, x, ax, ay, az, ylo, yhi, zlo, zhi, acc, sign, sA, sB, sC):
    """acc[:, y, z] += sign * moments of the pair (o, o + a), o = (x, y, z); level 0 makes no pair."""
    n = zhi - zlo
    for y in range(ylo, yhi):
        gi_row = g[x, y, zlo:zhi]          # 1-D views: contiguous, no wrap-around index checks
        gj_row = g[x + ax, y + ay, zlo + az:zhi + az]
        a0 = acc[0, y, zlo:zhi]
        a1 = acc[1, y, zlo:zhi]
        for z in range(n):
            gi = gi_row[z]
            gj = gj_row[z]
            p = (gi > 0) & (gj > 0)
            d = gi - gj
            a0[z] += sign * (p + ((gi * gj) << sA) + ((d * d * p) << sB))
            a1[z] += sign * (p * (gi + gj) + ((abs(d) * p) << sC))


@nb.njit(cache=True, parallel=True)
def _glcm_kernel(g, bid, drop, dirs, radius, tasks, layout, out, fill):
    """Fused per-direction pair moments + running box sums + per-voxel features.

    g: (B, X+2P, Y+2P, Z+2P) int levels; bid: (B, X, Y, Z) int32; drop: (B, 13, nb) uint8;
    tasks: (T, 3) rows (b, x0, x1); layout: see _layout;
    out: (B, 4, X, Y, Z) float64 written on mask voxels and fill elsewhere.
    """
    P = radius + 1
    X = out.shape[2]
    Y = out.shape[3]
    Z = out.shape[4]
    Yp = Y + 2 * P
    Zp = Z + 2 * P
    sA = layout[1]
    sB = layout[2]
    sC = layout[3]
    C = 2
    mA = (np.int64(1) << sA) - 1
    mP = (np.int64(1) << (sB - sA)) - 1
    mC = (np.int64(1) << sC) - 1
    for t in nb.prange(tasks.shape[0]):
        b = tasks[t, 0]
        x0 = tasks[t, 1]
        x1 = tasks[t, 2]
        gb = g[b]
        nx = x1 - x0
        sums = np.zeros((4, nx, Y, Z), dtype=np.float64)
        cnt = np.zeros((nx, Y, Z), dtype=np.int32)
        ja_nan = np.zeros((nx, Y, Z), dtype=np.uint8)
        acc = np.zeros((C, Yp, Zp), dtype=g.dtype)   # x-window sums per (y, z) origin
        accz = np.zeros((C, Yp, Z), dtype=g.dtype)   # + z-window sums
        row = np.zeros((C, Z), dtype=g.dtype)        # + y-window sums for one output row
        for a in range(dirs.shape[0]):
            ax = dirs[a, 0]
            ay = dirs[a, 1]
            az = dirs[a, 2]
            sx = radius - max(0, -ax)
            ex = radius - max(0, ax)
            sy = radius - max(0, -ay)
            ey = radius - max(0, ay)
            sz = radius - max(0, -az)
            ez = radius - max(0, az)
            ylo = P - sy
            yhi = Y + P + ey
            zlo = P - sz
            zhi = Z + P + ez
            single_batch = drop.shape[2] == 1
            dropped = drop[b, a, 0] != 0
            if single_batch and dropped:
                continue  # pyradiomics deletes the direction for every voxel
            acc[:] = 0
            for ox in range(x0 + P - sx, x0 + P + ex + 1):
                _slice_moments(gb, ox, ax, ay, az, ylo, yhi, zlo, zhi, acc, 1, sA, sB, sC)
            for x in range(x0, x1):
                if x > x0:  # slide the x window; remove first so no field exceeds one window
                    _slice_moments(gb, x - 1 + P - sx, ax, ay, az, ylo, yhi, zlo, zhi, acc, -1, sA, sB, sC)
                    _slice_moments(gb, x + P + ex, ax, ay, az, ylo, yhi, zlo, zhi, acc, 1, sA, sB, sC)
                # z window: accz[k, y, z] = sum_{oz = z+P-sz}^{z+P+ez} acc[k, y, oz]
                for k in range(C):
                    for y in range(ylo, yhi):
                        src = acc[k, y]
                        dst = accz[k, y]
                        s = src[zlo] * 0
                        for oz in range(zlo, zlo + sz + ez):
                            s += src[oz]
                        head = src[P + ez:P + ez + Z]
                        tail = src[P - sz:P - sz + Z]
                        for z in range(Z):
                            s += head[z]
                            dst[z] = s
                            s -= tail[z]
                # y window, row by row, then the features of the row's mask voxels
                for k in range(C):
                    rk = row[k]
                    rk[:] = 0
                    for oy in range(ylo, ylo + sy + ey):
                        src = accz[k, oy]
                        for z in range(Z):
                            rk[z] += src[z]
                r0 = row[0]
                r1 = row[1]
                for y in range(Y):
                    for k in range(C):
                        rk = row[k]
                        src = accz[k, y + P + ey]
                        for z in range(Z):
                            rk[z] += src[z]
                    grow = gb[x + P, y + P, P:P + Z]
                    xi = x - x0
                    for z in range(Z):
                        if grow[z] > 0:
                            if not single_batch and drop[b, a, bid[b, x, y, z]] != 0:
                                continue
                            w0 = r0[z]
                            w1 = r1[z]
                            n = w0 & mA
                            if n == 0:
                                ja_nan[xi, y, z] = 1  # nanmean skips it, JointAverage's mean does not
                            else:
                                inv = 1.0 / float(n)
                                sums[0, xi, y, z] += ((w0 >> sA) & mP) * inv    # S_ij / n
                                sums[1, xi, y, z] += (w1 & mC) * (0.5 * inv)   # S_i+j / 2n
                                sums[2, xi, y, z] += (w0 >> sB) * inv          # S_d2 / n
                                sums[3, xi, y, z] += (w1 >> sC) * inv          # S_|d| / n
                                cnt[xi, y, z] += 1
                    for k in range(C):
                        rk = row[k]
                        src = accz[k, y + P - sy]
                        for z in range(Z):
                            rk[z] -= src[z]
        for x in range(x0, x1):
            for y in range(Y):
                for z in range(Z):
                    if gb[x + P, y + P, z + P] == 0:
                        for f in range(4):
                            out[b, f, x, y, z] = fill
                    elif cnt[x - x0, y, z] == 0:
                        for f in range(4):
                            out[b, f, x, y, z] = np.nan
                    else:
                        c = float(cnt[x - x0, y, z])
                        for f in range(4):
                            out[b, f, x, y, z] = sums[f, x - x0, y, z] / c
                        if ja_nan[x - x0, y, z]:
                            out[b, 1, x, y, z] = np.nan


def _stack(prepared: list[Prepared], radius: int, packing: bool = True):
    """Zero-pad every ROI to a common shape (+P per side) and stack; padding adds no pair."""
    P = radius + 1
    shape = np.max([p[0].shape for p in prepared], axis=0)
    B = len(prepared)
    ng = max(int(p[0].max()) for p in prepared)
    layout, dtype = _layout(ng, radius)
    if not packing and layout[0]:
        layout, dtype = np.zeros(4, dtype=np.int64), np.int64
    nbat = max(p[1].shape[1] for p in prepared)
    g = np.zeros((B, *(shape + 2 * P)), dtype=dtype)
    bid = np.zeros((B, *shape), dtype=np.int32)
    drop = np.zeros((B, len(DIRECTIONS), nbat), dtype=np.uint8)
    for i, (lev, dr, bi) in enumerate(prepared):
        X, Y, Z = lev.shape
        g[i, P:P + X, P:P + Y, P:P + Z] = lev
        bid[i, :X, :Y, :Z] = bi
        drop[i, :, :dr.shape[1]] = dr
    return g, bid, drop, shape, layout


def numba_glcm_maps(prepared: list[Prepared], radius: int, fill: float, device: str = "cpu",
                    packing: bool = True) -> list[np.ndarray]:
    """CPU engine: one parallel numba call over (ROI, x-chunk) tasks.

    Needs the packed two-word layout (see :func:`_layout`; holds for kernel radius <= 4 at
    256 gray levels); otherwise, or with ``packing=False``, the batch runs on torch (CPU).
    """
    g, bid, drop, shape, layout = _stack(prepared, radius, packing)
    if not layout[0]:
        return torch_glcm_maps(prepared, radius, fill, device="cpu")
    B = len(prepared)
    X = int(shape[0])
    threads = nb.get_num_threads()
    chunks = max(1, min(X, math.ceil(2 * threads / B)))  # >= 2 tasks per thread when B is small
    bounds = np.linspace(0, X, chunks + 1).astype(np.int64)
    tasks = np.array([(b, bounds[c], bounds[c + 1]) for b in range(B) for c in range(chunks)
                      if bounds[c + 1] > bounds[c]], dtype=np.int64)
    out = np.empty((B, 4, *shape), dtype=np.float64)
    _glcm_kernel(g, bid, drop, DIRECTIONS, radius, tasks, layout, out, fill)
    return [out[i, :, :p[0].shape[0], :p[0].shape[1], :p[0].shape[2]].copy() for i, p in enumerate(prepared)]


# --- torch ---------------------------------------------------------------------------
def _box_sum(t, dim: int, start_lo: int, start_hi: int, n: int):
    """Window sums along ``dim``: out[v] = sum t[v + start_lo .. v + start_hi - 1] (cumsum difference)."""
    import torch

    c = torch.cumsum(t, dim=dim, dtype=t.dtype)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
    return c.narrow(dim, start_hi, n) - c.narrow(dim, start_lo, n)


def torch_glcm_maps(prepared: list[Prepared], radius: int, fill: float, device: str = "cpu") -> list[np.ndarray]:
    """Torch engine (CUDA or CPU): all ROIs of the batch at once, one direction at a time."""
    import torch

    g_np, bid_np, drop_np, shape, _ = _stack(prepared, radius, packing=False)
    dev = torch.device(device)
    P = radius + 1
    X, Y, Z = (int(s) for s in shape)
    g = torch.from_numpy(g_np).to(dev)                             # (B, Xp, Yp, Zp)
    bid = torch.from_numpy(bid_np).to(dev).long()                  # (B, X, Y, Z)
    drop = torch.from_numpy(drop_np).to(dev).bool()                # (B, 13, nb)
    inside = g[:, P:P + X, P:P + Y, P:P + Z] > 0                   # (B, X, Y, Z)
    B = g.shape[0]
    sums = torch.zeros((B, 4, X, Y, Z), dtype=torch.float64, device=dev)
    cnt = torch.zeros((B, X, Y, Z), dtype=torch.int32, device=dev)
    ja_nan = torch.zeros((B, X, Y, Z), dtype=torch.bool, device=dev)
    for a, (ax, ay, az) in enumerate(DIRECTIONS.tolist()):
        # partner level g[o + a]; the roll wraps only zero padding onto the origins that matter
        gj = torch.roll(g, shifts=(-ax, -ay, -az), dims=(1, 2, 3))
        p = ((g > 0) & (gj > 0)).to(g.dtype)
        d = g - gj
        m = torch.stack([p, g * gj, p * (g + gj), p * d * d, p * d.abs()], dim=1)  # (B, 5, Xp, Yp, Zp)
        del gj, d
        for dim, comp, n in ((2, ax, X), (3, ay, Y), (4, az, Z)):
            s = radius - max(0, -comp)
            e = radius - max(0, comp)
            m = _box_sum(m, dim, P - s, P + e + 1, n)              # shrinks axis dim to n
        # m: (B, 5, X, Y, Z) kernel sums for direction a
        keep = inside & ~torch.gather(drop[:, a, :], 1, bid.flatten(1)).view_as(bid)
        n = m[:, 0]
        has = keep & (n > 0)
        ja_nan |= keep & (n == 0)
        fn = torch.where(has, n, torch.ones_like(n)).to(torch.float64)
        ratios = torch.stack([m[:, 1] / fn, m[:, 2] / (2.0 * fn), m[:, 3] / fn, m[:, 4] / fn], dim=1)
        sums += torch.where(has[:, None], ratios, torch.zeros_like(ratios))
        cnt += has.to(torch.int32)
    out = sums / cnt.clamp(min=1)[:, None].to(torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=dev)
    out = torch.where((cnt == 0)[:, None], nan, out)
    out[:, 1] = torch.where(ja_nan, nan, out[:, 1])
    out = torch.where(inside[:, None], out, torch.tensor(fill, dtype=torch.float64, device=dev))
    res = out.cpu().numpy()
    return [res[i, :, :p[0].shape[0], :p[0].shape[1], :p[0].shape[2]].copy() for i, p in enumerate(prepared)]
