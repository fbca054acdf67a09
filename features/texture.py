"""Voxel-wise GLCM maps with pyradiomics' voxel-based semantics (paper §2.1, Fig. 1C).

For every voxel ``v`` of the mask, pyradiomics builds, per direction ``a`` of the
13 3-D directions at distance 1, a symmetric GLCM from the voxel pairs
``(x, x + a)`` whose two voxels both lie in the mask AND in the kernel box
``[v - r, v + r]`` (clipped to the image), normalises it per direction,
computes each feature per direction and averages over directions. The four
features of the texture pool only need moments of that pair distribution:

    n_a(v)   = number of ordered pairs        Autocorrelation   = S_ij  / n
    S_ij     = sum g(x) g(x+a)                JointAverage      = S_i+j / 2n
    S_i+j    = sum g(x) + g(x+a)              Contrast          = S_d2  / n
    S_d2     = sum (g(x) - g(x+a))^2          DifferenceAverage = S_|d| / n
    S_|d|    = sum |g(x) - g(x+a)|

(the symmetric matrix doubles every count and every sum; the ratios do not
change). So the engine never builds a GLCM: per direction it forms the five
pair moments at every pair origin and box-sums them over the kernel (the
origins ``x`` with both ``x`` and ``x + a`` in the box form a box of side
``2r + 1 - |a_d|`` per axis). Sums are exact integers; ratios are float64.

pyradiomics details reproduced here (read from its ``glcm.py``, ``base.py``,
``imageoperations.py``, ``featureextractor.py`` and checked against its output):

* Discretisation over the mask only: fixed bin width with edges
  ``arange(min - min % W, max + 2W, W)`` (one bin of +-0.5 around a flat
  region) or ``binCount`` equal-width bins with the top edge raised by 1;
  ``digitize`` gives levels 1..Ng. Gray values used in the features are the
  levels themselves.
* Directions with no pair anywhere in a voxel batch (``voxelBatch``; default:
  the whole mask) are dropped for that batch. A kept direction with no pair in
  one voxel's kernel is NaN for that voxel: Autocorrelation, Contrast and
  DifferenceAverage take the ``nanmean`` over directions (NaN only when every
  kept direction is empty) while JointAverage takes a plain ``mean`` (NaN as
  soon as one kept direction is empty in the voxel's kernel).
* Output grid: pyradiomics returns maps cropped to the mask bounding box
  padded by ``kernelRadius``; values outside the mask are ``initValue`` (0).
  This engine returns maps on the input grid, with ``fill_value`` (default 0,
  pyradiomics' ``initValue``) at every voxel outside the mask.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from osteo_config.texture import TextureInputError, InvalidSettingsError, GLCMSettings  # noqa: F401  (configuration lives in the leaf package)

FEATURES: tuple[str, ...] = ("Autocorrelation", "JointAverage", "Contrast", "DifferenceAverage")
"""Map order of the engine's output channel axis (pyradiomics names, class ``glcm``)."""

# The 13 unique directions at infinity-norm distance 1 in 3-D (one of each +-a pair).
DIRECTIONS: np.ndarray = np.array(
    [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)], dtype=np.int64
)  # (13, 3)


class ShapeMismatchError(TextureInputError):
    """Image and mask arrays differ in shape, or are not 3-D."""


class EmptyMaskError(TextureInputError):
    """The mask selects no voxel."""


class MaskTooSmallError(TextureInputError):
    """The mask is a single voxel or spans fewer dimensions than required."""


class NonFiniteImageError(TextureInputError):
    """The image holds NaN or infinite values inside the mask."""


class TooManyGrayLevelsError(TextureInputError):
    """The bin width yields more gray levels than ``max_gray_levels``."""


# --- discretisation and checks -------------------------------------------------
def check_pair(image: np.ndarray, mask: np.ndarray, settings: GLCMSettings) -> np.ndarray:
    """Validate one image/mask pair; return the boolean mask.

    Raises:
        ShapeMismatchError, EmptyMaskError, MaskTooSmallError, NonFiniteImageError.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape != mask.shape:
        raise ShapeMismatchError(
            f"image shape {image.shape} vs mask shape {mask.shape}: pass two 3-D arrays of the same shape")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise TextureInputError(f"image dtype {image.dtype}: pass a real numeric array (HU)")
    m = mask.astype(bool) if mask.dtype != bool else mask
    if not m.any():
        raise EmptyMaskError("the mask selects no voxel: check the ROI/body mask before texture")
    extent = [sl.stop - sl.start for sl in mask_bbox(m)]
    dims = sum(e > 1 for e in extent)
    if dims == 0:
        raise MaskTooSmallError("the mask holds a single voxel: GLCM maps need at least two neighbouring voxels")
    if dims < settings.min_roi_dimensions:
        raise MaskTooSmallError(
            f"the mask spans {dims} dimension(s) (bounding box {extent}); at least "
            f"{settings.min_roi_dimensions} are required (pyradiomics minimumROIDimensions)")
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image[m])
        if not finite.all():
            raise NonFiniteImageError(f"{int((~finite).sum())} NaN/inf image value(s) inside the mask: "
                                      "repair or mask them out")
    return m


def mask_bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of a non-empty 3-D boolean mask, as slices.

    Every pair lies inside it and pyradiomics only fills mask voxels, so the engine
    computes on this box alone (padded with zeros by the kernels).
    """
    box = []
    for ax in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def discretize(image: np.ndarray, mask: np.ndarray, settings: GLCMSettings) -> np.ndarray:
    """Gray levels 1..Ng inside the mask, 0 outside (pyradiomics binning rule over the mask).

    Args:
        image: (X, Y, Z) intensities; the dtype is kept (pyradiomics bins in the image's dtype).
        mask: (X, Y, Z) boolean.
        settings: bin width / bin count and ``max_gray_levels``.

    Returns:
        (X, Y, Z) int32 levels.

    Raises:
        TooManyGrayLevelsError: more than ``settings.max_gray_levels`` levels.
    """
    from features import texture_kernels as K

    image = np.asarray(image)
    values = image[mask]
    lo, hi = values.min(), values.max()
    if settings.bin_count is not None:
        edges = np.histogram(values, int(settings.bin_count))[1]
        edges[-1] += 1  # the maximum falls in the top bin under digitize's half-open rule
    else:
        w = settings.bin_width
        edges = np.arange(lo - lo % w, hi + 2 * w, w)  # edges are multiples of w, first <= min
        if len(edges) == 1:  # flat region exactly on an edge: one bin around it
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    ng = int(np.searchsorted(edges, hi, side="right"))  # digitize(max): the top level
    if ng > settings.max_gray_levels:
        raise TooManyGrayLevelsError(
            f"{ng} gray levels in the ROI (range {float(lo):g}..{float(hi):g}) exceed "
            f"max_gray_levels={settings.max_gray_levels}: raise texture.bin_width or max_gray_levels")
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN/inf: numpy's digitize rules
        out = np.zeros(mask.shape, dtype=np.int32)
        out[mask] = np.digitize(values, edges)
        return out
    # digitize(v, edges) = number of edges <= v (increasing edges); the numba helper finds it
    # from an equal-spacing guess and corrects it against the actual edges, so it is exact.
    return K.digitize_masked(np.ascontiguousarray(image), np.ascontiguousarray(mask), edges.astype(np.float64))


def _box_count(pairs: np.ndarray, radius: int, d: np.ndarray) -> np.ndarray:
    """n_a(v): pair origins in the kernel of every voxel (numpy, used for voxel batches)."""
    out = pairs.astype(np.int64)
    for ax in range(3):
        s = radius - max(0, -int(d[ax]))  # steps back from v
        e = radius - max(0, int(d[ax]))   # steps forward from v
        n = out.shape[ax]
        c = np.concatenate([np.zeros_like(out.take([0], axis=ax)), np.cumsum(out, axis=ax)], axis=ax)
        hi = np.clip(np.arange(n) + e + 1, 0, n)
        lo = np.clip(np.arange(n) - s, 0, n)
        out = c.take(hi, axis=ax) - c.take(lo, axis=ax)
    return out


def dropped_directions(mask: np.ndarray, settings: GLCMSettings) -> tuple[np.ndarray, np.ndarray]:
    """Which directions pyradiomics deletes as empty, per voxel batch.

    Returns:
        drop: (13, n_batches) uint8, 1 = direction dropped for that batch.
        batch_id: (X, Y, Z) int32 batch index of every mask voxel (C order), 0 elsewhere.
    """
    from features import texture_kernels as K

    n_vox = int(mask.sum())
    batch = n_vox if settings.voxel_batch < 0 else int(settings.voxel_batch)
    n_batches = -(-n_vox // batch)
    if n_batches == 1:  # only whether a direction has a pair anywhere matters
        drop = K.empty_directions(np.ascontiguousarray(mask, dtype=bool), DIRECTIONS)
        return drop[:, None], np.zeros(mask.shape, dtype=np.int32)
    shape = np.array(mask.shape)
    pair_maps = []
    for d in DIRECTIONS:
        src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, shape))
        dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, shape))
        p = np.zeros(mask.shape, dtype=bool)
        p[src] = mask[src] & mask[dst]  # p[x] = 1 when x and x + a are both in the mask
        pair_maps.append(p)
    batch_id = np.zeros(mask.shape, dtype=np.int32)
    rank = np.arange(n_vox) // batch
    batch_id[mask] = rank
    starts = np.arange(0, n_vox, batch)
    drop = np.zeros((len(DIRECTIONS), n_batches), dtype=np.uint8)
    for a, (d, p) in enumerate(zip(DIRECTIONS, pair_maps)):
        n = _box_count(p, int(settings.kernel_radius), d)[mask]
        drop[a] = np.add.reduceat(n, starts) == 0
    return drop, batch_id


# --- public API -----------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``/``cuda`` pass through."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise InvalidSettingsError(f"device={device!r}: use auto, cpu or cuda")
    if device == "auto":
        try:
            import torch
            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover - torch is a project dependency
            return "cpu"
    return device


def glcm_maps_batch(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    settings: GLCMSettings = GLCMSettings(),
    device: str = "auto",
    backend: str = "auto",
) -> list[np.ndarray]:
    """GLCM maps of many ROIs in one engine call.

    Args:
        images: 3-D intensity arrays (HU); shapes may differ between ROIs.
        masks: matching 3-D masks (nonzero = ROI).
        settings: discretisation / kernel settings.
        device: ``auto`` | ``cpu`` | ``cuda``.
        backend: ``auto`` (numba on CPU, torch on CUDA) | ``numba`` | ``torch``.

    Returns:
        One float64 array (4, X, Y, Z) per ROI, channels in :data:`FEATURES` order;
        ``settings.fill_value`` outside the mask, NaN where pyradiomics gives NaN.

    Raises:
        TextureInputError: (a subclass) for the first ROI that cannot be processed.
    """
    from features import texture_kernels as K

    if len(images) != len(masks):
        raise ShapeMismatchError(f"{len(images)} images but {len(masks)} masks")
    dev = resolve_device(device)
    if backend == "auto":
        backend = "numba" if dev == "cpu" else "torch"
    if backend not in ("numba", "torch"):
        raise InvalidSettingsError(f"backend={backend!r}: use auto, numba or torch")
    if backend == "numba" and dev != "cpu":
        raise InvalidSettingsError("the numba backend runs on the CPU only: use backend='torch' for CUDA")
    if not len(images):
        return []
    prepared, boxes = [], []
    for img, msk in zip(images, masks):
        m = check_pair(img, msk, settings)
        box = mask_bbox(m)  # crop: no pair and no output outside the mask's bounding box
        m = m[box]
        levels = discretize(np.asarray(img)[box], m, settings)
        drop, batch_id = dropped_directions(m, settings)
        prepared.append((levels, drop, batch_id))
        boxes.append(box)
    run = K.numba_glcm_maps if backend == "numba" else K.torch_glcm_maps
    maps = run(prepared, int(settings.kernel_radius), float(settings.fill_value), device=dev)
    out = []
    for img, box, crop in zip(images, boxes, maps):
        full = np.full((len(FEATURES), *np.shape(img)), settings.fill_value, dtype=np.float64)
        full[(slice(None), *box)] = crop  # (4, X, Y, Z): fill outside the box
        out.append(full)
    return out


def glcm_maps(
    image: np.ndarray, mask: np.ndarray, settings: GLCMSettings = GLCMSettings(),
    device: str = "auto", backend: str = "auto",
) -> np.ndarray:
    """GLCM maps of one ROI: float64 (4, X, Y, Z); see :func:`glcm_maps_batch`."""
    return glcm_maps_batch([image], [mask], settings, device=device, backend=backend)[0]
