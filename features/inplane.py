"""In-plane (per axial slice) Euclidean distance transform: numba, exact, one pass per axis.

:func:`inplane_edt` gives, for every True voxel of an (x, y, z) mask, the distance (mm) in its
own axial slice to the nearest False voxel, i.e. what
``scipy.ndimage.distance_transform_edt(mask, sampling=(sx, sy, huge))`` gives when every slice
holds a False voxel. The scipy call computes a full 3-D feature transform (an int32 index
volume per axis) only to discard the z axis; here two 1-D passes per slice do the work:

1. along y, per (x, z) column: the index distance ``dy`` to the nearest False voxel (two sweeps);
2. along x, per (y, z) row: the lower envelope of the parabolas ``(dy_q sy)^2 + (sx (p - q))^2``
   over q (Felzenszwalb and Huttenlocher, Theory of Computing 8:415, 2012), which finds the
   nearest False voxel of each voxel exactly.

The distance is then evaluated as scipy evaluates it, ``sqrt((dx sx)^2 + (dy sy)^2)`` in float64,
cast to float32, so the result equals scipy's array (``tests/features/test_inplane.py`` compares
them on random masks, several spacings and simulator CTs). A slice with no False voxel has no
in-plane distance: its voxels get ``inf`` (scipy would reach into another slice, >= 1e4 mm away).
"""
from __future__ import annotations

import numba as nb
import numpy as np

_NONE = np.int32(1 << 30)        # "no False voxel in this column"


@nb.njit(cache=True)
def _column_distance(mask: np.ndarray) -> np.ndarray:
    """(x, y, z) int32: index distance along y to the nearest False voxel of the same (x, z) column."""
    nx, ny, nz = mask.shape
    d = np.empty((nx, ny, nz), np.int32)
    for x in range(nx):
        for z in range(nz):
            d[x, 0, z] = _NONE if mask[x, 0, z] else 0
        for y in range(1, ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    d[x, y, z] = 0
                else:
                    prev = d[x, y - 1, z]
                    d[x, y, z] = prev + 1 if prev < _NONE else _NONE
        for y in range(ny - 2, -1, -1):
            for z in range(nz):
                nxt = d[x, y + 1, z]
                if nxt < _NONE and nxt + 1 < d[x, y, z]:
                    d[x, y, z] = nxt + 1
    return d


@nb.njit(cache=True)
def _row_envelope(dy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(x, y, z) float32 in-plane distance from the column distances (the parabola envelope along x)."""
    nx, ny, nz = dy.shape
    out = np.empty((nx, ny, nz), np.float32)
    f = np.empty(nx, np.float64)
    v = np.empty(nx, np.int64)
    zb = np.empty(nx + 1, np.float64)
    w = sx * sx
    for y in range(ny):
        for z in range(nz):
            k = -1
            for q in range(nx):
                dq = dy[q, y, z]
                if dq >= _NONE:
                    f[q] = np.inf
                    continue
                f[q] = (dq * sy) * (dq * sy)
                if k < 0:
                    k = 0
                    v[0] = q
                    zb[0] = -np.inf
                    zb[1] = np.inf
                    continue
                while True:
                    r = v[k]
                    s = ((f[q] + w * q * q) - (f[r] + w * r * r)) / (2.0 * w * (q - r))
                    if s <= zb[k]:
                        k -= 1
                        if k < 0:
                            break
                    else:
                        break
                if k < 0:
                    k = 0
                    v[0] = q
                    zb[0] = -np.inf
                    zb[1] = np.inf
                else:
                    k += 1
                    v[k] = q
                    zb[k] = s
                    zb[k + 1] = np.inf
            if k < 0:                       # no False voxel in this row's whole slice reachable: none at all
                for p in range(nx):
                    out[p, y, z] = np.inf
                continue
            j = 0
            for p in range(nx):
                while zb[j + 1] < p:
                    j += 1
                q = v[j]
                ex = (p - q) * sx
                ey = dy[q, y, z] * sy
                out[p, y, z] = np.float32(np.sqrt(ex * ex + ey * ey + 0.0))
    return out


def inplane_edt(mask: np.ndarray, spacing) -> np.ndarray:
    """Per axial slice, the distance (mm) of each voxel to the nearest False voxel (0 on False voxels).

    Args:
        mask: (x, y, z) bool.
        spacing: voxel size (mm); only x and y are used.

    Returns:
        (x, y, z) float32; ``inf`` in a slice without any False voxel.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    if m.ndim != 3:
        raise ValueError(f"inplane_edt needs an (x, y, z) mask, got {m.ndim}-D")
    if m.size == 0:
        return np.zeros(m.shape, np.float32)
    sx, sy = float(spacing[0]), float(spacing[1])
    if not (sx > 0 and sy > 0):
        raise ValueError(f"in-plane spacing must be > 0 mm, got {sx}, {sy}")
    return _row_envelope(_column_distance(m), sx, sy)


@nb.njit(cache=True)
def _fill_holes_slices(mask: np.ndarray) -> np.ndarray:
    nx, ny, nz = mask.shape
    out = mask.copy()
    seen = np.zeros((nx, ny), np.bool_)
    stack = np.empty((nx * ny, 2), np.int64)
    for z in range(nz):
        seen[:, :] = False
        top = 0
        for x in range(nx):                       # every background voxel on the slice's border
            for y in range(ny):
                if (x == 0 or y == 0 or x == nx - 1 or y == ny - 1) and not mask[x, y, z]:
                    seen[x, y] = True
                    stack[top, 0] = x
                    stack[top, 1] = y
                    top += 1
        while top > 0:                            # 4-connected flood of the background from the border
            top -= 1
            x = stack[top, 0]
            y = stack[top, 1]
            for k in range(4):
                a = x + (1 if k == 0 else -1 if k == 1 else 0)
                b = y + (1 if k == 2 else -1 if k == 3 else 0)
                if 0 <= a < nx and 0 <= b < ny and not seen[a, b] and not mask[a, b, z]:
                    seen[a, b] = True
                    stack[top, 0] = a
                    stack[top, 1] = b
                    top += 1
        for x in range(nx):
            for y in range(ny):
                if not mask[x, y, z] and not seen[x, y]:
                    out[x, y, z] = True           # background not reachable from the border: a hole
    return out


def fill_holes_inplane(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every axial slice: exactly ``binary_fill_holes`` applied to each ``mask[:, :, k]``
    (background 4-connected within its slice to the slice's border stays background).

    Args:
        mask: (x, y, z) bool.

    Returns:
        (x, y, z) bool, a new array.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    if m.ndim != 3:
        raise ValueError(f"fill_holes_inplane needs an (x, y, z) mask, got {m.ndim}-D")
    if m.size == 0:
        return m.copy()
    return _fill_holes_slices(m)
