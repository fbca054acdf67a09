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
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

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
    Every field of a packable layout is below 2**31 (three fields in 63 bits), so
    the kernel converts fields to float64 through int32.

    Returns:
        layout: int64 [packed (0/1), sA, sB, sC]; dtype of the level array (packed: int32
        levels, int64 words) or of the plain channels.
    The numba kernel needs the packed layout; the torch path uses plain channels.
    """
    w = (2 * radius + 1) ** 3
    bits = [int(v).bit_length() for v in
            (w, w * ng * ng, w * (ng - 1) ** 2, 2 * w * ng, w * max(ng - 1, 0))]
    if bits[0] + bits[1] + bits[2] <= 63 and bits[3] + bits[4] <= 63:
        return np.array([1, bits[0], bits[0] + bits[1], bits[3]], dtype=np.int64), np.int32
    dtype = np.int32 if w * ng * ng < 2**31 - 1 else np.int64
    return np.zeros(4, dtype=np.int64), dtype


# --- preparation helpers (numba) ------------------------------------------------------
@nb.njit(cache=True)
def digitize_masked(image, mask, edges):
    """(X, Y, Z) int32: ``np.digitize(image, edges)`` on mask voxels, 0 elsewhere (finite values).

    digitize with increasing edges = number of edges <= v. A guess from the mean spacing is
    corrected against the actual edges, so the result is exact whatever their rounding.
    """
    out = np.zeros(image.shape, dtype=np.int32)
    ne = edges.shape[0]
    e0 = edges[0]
    step = (edges[ne - 1] - e0) / max(ne - 1, 1)
    for x in range(image.shape[0]):
        for y in range(image.shape[1]):
            for z in range(image.shape[2]):
                if mask[x, y, z]:
                    v = np.float64(image[x, y, z])
                    k = min(max(int(np.floor((v - e0) / step)) + 1, 0), ne)
                    while k > 0 and edges[k - 1] > v:
                        k -= 1
                    while k < ne and edges[k] <= v:
                        k += 1
                    out[x, y, z] = k
    return out


@nb.njit(cache=True)
def empty_directions(mask, dirs):
    """(13,) uint8: 1 where no voxel pair (x, x + a) lies in the mask (pyradiomics drops a)."""
    X, Y, Z = mask.shape
    out = np.ones(dirs.shape[0], dtype=np.uint8)
    for a in range(dirs.shape[0]):
        ax, ay, az = dirs[a, 0], dirs[a, 1], dirs[a, 2]
        found = False
        for x in range(max(0, -ax), X - max(0, ax)):
            for y in range(max(0, -ay), Y - max(0, ay)):
                for z in range(max(0, -az), Z - max(0, az)):
                    if mask[x, y, z] and mask[x + ax, y + ay, z + az]:
                        found = True
                        break
                if found:
                    break
            if found:
                break
        out[a] = 0 if found else 1
    return out


# --- numba -------------------------------------------------------------------------
# error_model="numpy": a float division never raises, so the per-voxel loops have no
# hidden branch and LLVM vectorises them (the ratios never divide by zero anyway).
_JIT = dict(cache=True, error_model="numpy")

# int -> float64 for 0 <= v < 2**52 without AVX2's missing int64 conversion: put v in the
# mantissa of 2**52 (bits 0x4330...) and subtract 2**52. Exact; vectorises as plain int/float ops.
_MAGIC_BITS = np.int64(0x4330000000000000)
_MAGIC = 4503599627370496.0  # 2**52


@intrinsic
def _bits_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@nb.njit(inline="always", **_JIT)
def _to_f64(v):
    """float64(v) for an int64 0 <= v < 2**52."""
    return _bits_as_f64(v | _MAGIC_BITS) - _MAGIC


@nb.njit(inline="always", **_JIT)
def _pair_words(gi, gj, sA, sB, sC):
    """Packed moments of the ordered pair (gi, gj): (n | S_ij | S_d2, S_i+j | S_|d|); level 0 makes no pair.

    ``gi * gj`` needs no pair flag: it is 0 unless both levels are >= 1.
    """
    p = np.int32((gi > 0) & (gj > 0))
    d = gi - gj
    w0 = np.int64(p) + (np.int64(gi * gj) << sA) + (np.int64(d * d * p) << sB)
    w1 = np.int64(p * (gi + gj)) + (np.int64(abs(d) * p) << sC)
    return w0, w1


@nb.njit(inline="always", **_JIT)
def _slide(gi_in, gj_in, gi_out, gj_out, off, lo, hi, acc0, acc1, sA, sB, sC, remove):
    """acc[o] += moments of (gi_in[o], gj_in[o + off]) - those of (gi_out[o], gj_out[o + off]), o in [lo, hi).

    Flat y-z planes: the partner of origin o is o + off (off = a_y * Zp + a_z); a partner
    that wraps into the next row lies in the zero padding and adds nothing. The packed
    sums are exact integers modulo 2**64, so only the final window sums must fit their
    bit fields, not the intermediate values. Loops index views from 0 so that LLVM drops
    numba's negative-index checks and vectorises.
    """
    n = hi - lo
    ii = gi_in[lo:hi]
    ji = gj_in[lo + off:hi + off]
    c0 = acc0[lo:hi]
    c1 = acc1[lo:hi]
    if remove:
        io = gi_out[lo:hi]
        jo = gj_out[lo + off:hi + off]
        for o in range(n):
            u0, u1 = _pair_words(ii[o], ji[o], sA, sB, sC)
            v0, v1 = _pair_words(io[o], jo[o], sA, sB, sC)
            c0[o] += u0 - v0
            c1[o] += u1 - v1
    else:
        for o in range(n):
            u0, u1 = _pair_words(ii[o], ji[o], sA, sB, sC)
            c0[o] += u0
            c1[o] += u1


@nb.njit(inline="always", **_JIT)
def _ywindow(acc, ysum, P, Y, Zp, k0, k1):
    """ysum[y, :] = sum_{k=k0}^{k1} acc[y + k, :] for the output rows y in [P, P + Y) (flat planes).

    Runs along y, one row (a vector op over z) at a time.
    """
    q = P * Zp
    row = ysum[q:q + Zp]
    row[:] = 0
    for k in range(k0, k1 + 1):
        src = acc[q + k * Zp:q + k * Zp + Zp]
        for i in range(Zp):
            row[i] += src[i]
    for y in range(P + 1, P + Y):
        q = y * Zp
        row = ysum[q:q + Zp]
        prev = ysum[q - Zp:q]
        add = acc[q + k1 * Zp:q + k1 * Zp + Zp]
        sub = acc[q + (k0 - 1) * Zp:q + (k0 - 1) * Zp + Zp]
        for i in range(Zp):
            row[i] = prev[i] + add[i] - sub[i]


@nb.njit(inline="always", **_JIT)
def _prefix(ysum0, ysum1, pre0, pre1, lo, hi):
    """pre[o] = sum_{lo <= i < o} ysum[i] for o in [lo, hi], both words in one pass.

    A z-window sum is then ``pre[o + k1 + 1] - pre[o + k0]``: the prefix wraps modulo
    2**64 beyond one window, the difference is exact.
    """
    s0 = ysum0[0] * 0
    s1 = ysum1[0] * 0
    for o in range(lo, hi):
        pre0[o] = s0
        pre1[o] = s1
        s0 += ysum0[o]
        s1 += ysum1[o]
    pre0[hi] = s0
    pre1[hi] = s1


@nb.njit(parallel=True, **_JIT)
def _glcm_kernel(g, bid, drop, dirs, radius, Yp, Zp, tasks, layout, out, fill):
    """Fused pair moments, box sums and per-voxel features of all 13 directions.

    g: (B, Xp, Yp * Zp) int32 levels, zero-padded by P = r + 1 per side, y-z planes flat;
    bid: like g, batch id per voxel (read only when ``drop`` has more than one batch column);
    drop: (B, 13, nb) uint8; tasks: (T, 3) rows (b, x0, x1) of output x ranges;
    layout: see _layout; out: (B, 4, X, Y, Z) float64, written on every voxel of the
    task's x range (features on mask voxels, ``fill`` elsewhere).

    Per task the kernel walks x once. Each kept direction keeps the x-window sums of its
    pair moments on one flat y-z plane (``acc``), slid by one add-and-remove pass per x;
    y windows run along y a row at a time, z windows are differences of a running prefix,
    and the four ratios of every voxel of the plane are added branch-free (voxels outside
    the mask are overwritten when the plane is written).
    """
    P = radius + 1
    Y = out.shape[3]
    Z = out.shape[4]
    L = Yp * Zp
    nd = dirs.shape[0]
    sA = layout[1]
    sB = layout[2]
    sC = layout[3]
    mA = (np.int64(1) << sA) - 1
    mP = (np.int64(1) << (sB - sA)) - 1
    mC = (np.int64(1) << sC) - 1
    single = drop.shape[2] == 1
    lo = Zp + 1                      # origins: rows 1..Yp-2 (partners stay inside the plane)
    hi = (Yp - 1) * Zp - 1
    flo = P * Zp + P                 # features: first to last output voxel of the plane
    fhi = (P + Y - 1) * Zp + P + Z
    nf = fhi - flo
    for t in nb.prange(tasks.shape[0]):
        b = tasks[t, 0]
        x0 = tasks[t, 1]
        x1 = tasks[t, 2]
        gb = g[b]
        nkept = 0                                  # directions pyradiomics keeps (one voxel batch)
        for a in range(nd):
            nkept += drop[b, a, 0] == 0
        acc0 = np.zeros((nd, L), dtype=np.int64)   # per direction: x-window sums, word 0
        acc1 = np.zeros((nd, L), dtype=np.int64)   # word 1
        ysum0 = np.zeros(L, dtype=np.int64)        # + y window (output rows)
        ysum1 = np.zeros(L, dtype=np.int64)
        pre0 = np.zeros(L + 1, dtype=np.int64)     # running prefix of ysum along the flat plane
        pre1 = np.zeros(L + 1, dtype=np.int64)
        f0 = np.zeros(L, dtype=np.float64)         # sum over kept directions of each ratio
        f1 = np.zeros(L, dtype=np.float64)
        f2 = np.zeros(L, dtype=np.float64)
        f3 = np.zeros(L, dtype=np.float64)
        nhas = np.zeros(L, dtype=np.int32)         # kept directions with a pair in the kernel
        nkeep = np.zeros(L, dtype=np.int32)        # kept directions (voxel batches only)
        for x in range(x0, x1):
            for a in range(nd):
                if single and drop[b, a, 0] != 0:
                    continue  # pyradiomics deletes the direction for every voxel
                ax = dirs[a, 0]
                ay = dirs[a, 1]
                az = dirs[a, 2]
                off = ay * Zp + az
                sx = radius - max(0, -ax)
                ex = radius - max(0, ax)
                a0 = acc0[a]
                a1 = acc1[a]
                if x == x0:  # fill the x window of origins [x + P - sx, x + P + ex]
                    for ox in range(x + P - sx, x + P + ex + 1):
                        _slide(gb[ox], gb[ox + ax], gb[ox], gb[ox + ax], off, lo, hi, a0, a1, sA, sB, sC, False)
                else:
                    oi = x + P + ex
                    oo = x - 1 + P - sx
                    _slide(gb[oi], gb[oi + ax], gb[oo], gb[oo + ax], off, lo, hi, a0, a1, sA, sB, sC, True)
                ky0 = -(radius - max(0, -ay))
                ky1 = radius - max(0, ay)
                _ywindow(a0, ysum0, P, Y, Zp, ky0, ky1)
                _ywindow(a1, ysum1, P, Y, Zp, ky0, ky1)
                _prefix(ysum0, ysum1, pre0, pre1, P * Zp, (P + Y) * Zp)
                kz0 = -(radius - max(0, -az))
                kz1 = radius - max(0, az)
                h0 = pre0[flo + kz1 + 1:fhi + kz1 + 1]   # z window of voxel o: h[o] - l[o]
                l0 = pre0[flo + kz0:fhi + kz0]
                h1 = pre1[flo + kz1 + 1:fhi + kz1 + 1]
                l1 = pre1[flo + kz0:fhi + kz0]
                g0 = f0[flo:fhi]
                g1 = f1[flo:fhi]
                g2 = f2[flo:fhi]
                g3 = f3[flo:fhi]
                hh = nhas[flo:fhi]
                if single:  # branch-free; voxels outside the mask are overwritten below
                    for o in range(nf):
                        w0 = h0[o] - l0[o]
                        w1 = h1[o] - l1[o]
                        n = _to_f64(w0 & mA)
                        has = n > 0.0
                        inv = 1.0 / (n + (1.0 - has))                    # n = 0: every sum is 0 too
                        g0[o] += _to_f64((w0 >> sA) & mP) * inv          # S_ij / n
                        g1[o] += _to_f64(w1 & mC) * (0.5 * inv)          # S_i+j / 2n
                        g2[o] += _to_f64(w0 >> sB) * inv                 # S_d2 / n
                        g3[o] += _to_f64(w1 >> sC) * inv                 # S_|d| / n
                        hh[o] += np.int32(has)
                else:  # voxel batches: the direction may be dropped for this voxel's batch only
                    gx = gb[x + P, flo:fhi]
                    bx = bid[b, x + P, flo:fhi]
                    kk = nkeep[flo:fhi]
                    for o in range(nf):
                        if gx[o] == 0 or drop[b, a, bx[o]] != 0:
                            continue
                        kk[o] += 1
                        w0 = h0[o] - l0[o]
                        w1 = h1[o] - l1[o]
                        n = np.int32(w0 & mA)
                        if n != 0:
                            inv = 1.0 / np.float64(n)
                            g0[o] += np.float64(np.int32((w0 >> sA) & mP)) * inv
                            g1[o] += np.float64(np.int32(w1 & mC)) * (0.5 * inv)
                            g2[o] += np.float64(np.int32(w0 >> sB)) * inv
                            g3[o] += np.float64(np.int32(w1 >> sC)) * inv
                            hh[o] += 1
            for y in range(Y):  # write the plane: fill / NaN rules / mean over kept directions
                q = (y + P) * Zp + P
                gx = gb[x + P, q:q + Z]
                c = nhas[q:q + Z]
                k = nkeep[q:q + Z]
                s0 = f0[q:q + Z]
                s1 = f1[q:q + Z]
                s2 = f2[q:q + Z]
                s3 = f3[q:q + Z]
                o0 = out[b, 0, x, y]
                o1 = out[b, 1, x, y]
                o2 = out[b, 2, x, y]
                o3 = out[b, 3, x, y]
                for z in range(Z):
                    if gx[z] == 0:
                        o0[z] = fill
                        o1[z] = fill
                        o2[z] = fill
                        o3[z] = fill
                    elif c[z] == 0:  # every kept direction empty in the kernel: nanmean of NaNs
                        o0[z] = np.nan
                        o1[z] = np.nan
                        o2[z] = np.nan
                        o3[z] = np.nan
                    else:
                        cz = np.float64(c[z])
                        o0[z] = s0[z] / cz
                        # JointAverage takes a plain mean: NaN once a kept direction is empty
                        o1[z] = np.nan if c[z] < (nkept if single else k[z]) else s1[z] / cz
                        o2[z] = s2[z] / cz
                        o3[z] = s3[z] / cz
            f0[flo:fhi] = 0.0
            f1[flo:fhi] = 0.0
            f2[flo:fhi] = 0.0
            f3[flo:fhi] = 0.0
            nhas[flo:fhi] = 0
            nkeep[flo:fhi] = 0


def _stack(prepared: list[Prepared], radius: int, packing: bool = True):
    """Zero-pad every ROI to a common shape (+P per side) and stack; padding adds no pair.

    Returns:
        g: (B, Xp, Yp, Zp) levels; bid: like g, batch ids (B, 1, 1, 1) zeros when every ROI
        is one voxel batch); drop: (B, 13, nb) uint8; shape: common unpadded (X, Y, Z); layout.
    """
    P = radius + 1
    shape = np.max([p[0].shape for p in prepared], axis=0)
    B = len(prepared)
    ng = max(int(p[0].max()) for p in prepared)
    layout, dtype = _layout(ng, radius)
    if not packing and layout[0]:
        layout, dtype = np.zeros(4, dtype=np.int64), np.int64
    nbat = max(p[1].shape[1] for p in prepared)
    g = np.zeros((B, *(shape + 2 * P)), dtype=dtype)
    bid = np.zeros((B, *(shape + 2 * P)) if nbat > 1 else (B, 1, 1, 1), dtype=np.int32)
    drop = np.zeros((B, len(DIRECTIONS), nbat), dtype=np.uint8)
    for i, (lev, dr, bi) in enumerate(prepared):
        X, Y, Z = lev.shape
        g[i, P:P + X, P:P + Y, P:P + Z] = lev
        if nbat > 1:
            bid[i, P:P + X, P:P + Y, P:P + Z] = bi
        drop[i, :, :dr.shape[1]] = dr
    return g, bid, drop, shape, layout


def _tasks(B: int, X: int, radius: int, threads: int) -> np.ndarray:
    """(T, 3) rows (b, x0, x1): every ROI split into x chunks so that T fills the threads evenly.

    A chunk pays for filling its 2r+1 x windows once, so chunks stay >= 4 windows long.
    """
    chunks = threads // math.gcd(B, threads)
    chunks = max(1, min(chunks, X // (4 * (2 * radius + 1))))
    bounds = np.linspace(0, X, chunks + 1).astype(np.int64)
    return np.array([(b, bounds[c], bounds[c + 1]) for b in range(B) for c in range(chunks)
                     if bounds[c + 1] > bounds[c]], dtype=np.int64)


def numba_glcm_maps(prepared: list[Prepared], radius: int, fill: float, device: str = "cpu",
                    packing: bool = True) -> list[np.ndarray]:
    """CPU engine: one parallel numba call over (ROI, x-chunk) tasks.

    Needs the packed two-word layout (see :func:`_layout`; holds for kernel radius <= 4 at
    256 gray levels); otherwise, or with ``packing=False``, the batch runs on torch (CPU).
    """
    g, bid, drop, shape, layout = _stack(prepared, radius, packing)
    if not layout[0]:
        return torch_glcm_maps(prepared, radius, fill, device="cpu")
    B, Xp, Yp, Zp = g.shape
    tasks = _tasks(B, int(shape[0]), radius, nb.get_num_threads())
    out = np.empty((B, 4, *shape), dtype=np.float64)
    _glcm_kernel(g.reshape(B, Xp, Yp * Zp), bid.reshape(B, bid.shape[1], -1), drop, DIRECTIONS, radius,
                 Yp, Zp, tasks, layout, out, fill)
    return [out[i, :, :p[0].shape[0], :p[0].shape[1], :p[0].shape[2]] for i, p in enumerate(prepared)]


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
    bid = torch.from_numpy(bid_np[:, P:P + X, P:P + Y, P:P + Z].copy()).to(dev).long() if drop_np.shape[2] > 1 \
        else None                                                  # (B, X, Y, Z) batch ids
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
        if drop.shape[2] == 1:  # one voxel batch: the direction is kept or dropped per ROI
            keep = inside & ~drop[:, a, 0].view(B, 1, 1, 1)
        else:
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
