"""Texture engine vs pyradiomics voxel-based GLCM: speed and agreement (not a test).

    python benchmarks/texture.py [--repeats N] [--rois B] [--voxel-batch V]

Per repeat r (a different synthetic 64x64x32 vertebra ROI each time, bin width
25 HU, kernel radius 2):

* engine: ``glcm_maps_batch`` on B full ROIs (discretisation, checks and
  kernels all included), throughput = mask voxels / wall seconds;
* pyradiomics: ``RadiomicsFeatureExtractor.execute(..., voxelBased=True)`` with
  ``voxelBatch=V`` on the SAME image with the mask restricted to the x-slab
  28..35 (8 of 64 slices, ~10k voxels; a full ROI takes minutes), throughput =
  slab mask voxels / wall seconds; the engine is run on that identical input
  and the max relative error / NaN-pattern agreement is measured on it.

Prints medians over repeats, a cost table vs ROI size and kernel radius, and
the CUDA figure when a GPU is present.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from features.texture import GLCMSettings, glcm_maps, glcm_maps_batch
from features.texture_reference import pyradiomics_maps, synthetic_vertebra


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _rel_err(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    fin = ~np.isnan(b) & ~np.isnan(a)
    err = np.abs(a[fin] - b[fin]) / np.maximum(np.abs(b[fin]), 1e-300)
    return float(err.max(initial=0.0)), same_nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rois", type=int, default=4, help="ROIs per engine call")
    ap.add_argument("--voxel-batch", type=int, default=250, help="pyradiomics voxelBatch")
    args = ap.parse_args()
    shape = (64, 64, 32)
    s = GLCMSettings(kernel_radius=2, bin_width=25.0)
    s_ref = GLCMSettings(kernel_radius=2, bin_width=25.0, voxel_batch=args.voxel_batch)
    glcm_maps(*synthetic_vertebra((16, 16, 8)), s)  # compile / warm up

    rows = []
    for r in range(args.repeats):
        rois = [synthetic_vertebra(shape, seed=100 * r + i) for i in range(args.rois)]
        _, t_eng = _timed(glcm_maps_batch, [h for h, _ in rois], [b for _, b in rois], s, "cpu")
        eng_vps = sum(int(b.sum()) for _, b in rois) / t_eng
        _, t_one = _timed(glcm_maps, *rois[0], s, "cpu")
        hu, body = rois[0]
        slab = np.zeros_like(body)
        slab[28:36] = body[28:36]
        ref, t_ref = _timed(pyradiomics_maps, hu, slab, s_ref)
        ref_vps = int(slab.sum()) / t_ref
        err, same_nan = _rel_err(glcm_maps(hu, slab, s_ref, "cpu"), ref)
        rows.append((eng_vps, int(body.sum()) / t_one, ref_vps, eng_vps / ref_vps, err, same_nan))
        print(f"repeat {r}: engine {eng_vps:,.0f} vox/s, pyradiomics {ref_vps:,.0f} vox/s "
              f"({int(slab.sum())} voxels in {t_ref:.1f} s), ratio {eng_vps / ref_vps:,.0f}x, "
              f"max rel err {err:.2e}, NaN pattern identical: {same_nan}")
    med = [statistics.median(c) for c in list(zip(*rows))[:4]]
    print("\n| metric (median of %d repeats) | value |\n|---|---|" % args.repeats)
    print(f"| engine, batched ({args.rois} ROIs/call), mask voxels/s | {med[0]:,.0f} |")
    print(f"| engine, one ROI per call, mask voxels/s | {med[1]:,.0f} |")
    print(f"| pyradiomics (voxelBatch={args.voxel_batch}), mask voxels/s | {med[2]:,.0f} |")
    print(f"| speed-up (batched engine / pyradiomics) | {med[3]:,.0f}x |")
    print(f"| max relative error (all repeats) | {max(r[4] for r in rows):.2e} |")
    print(f"| NaN pattern identical (all repeats) | {all(r[5] for r in rows)} |")

    print("\n| ROI shape | kernel radius | ms / ROI | mask voxels/s | ROI voxels/s |\n|---|---|---|---|---|")
    for shp, rad in (((32, 32, 16), 2), ((64, 64, 32), 1), ((64, 64, 32), 2), ((64, 64, 32), 3),
                     ((96, 96, 48), 2)):
        rois = [synthetic_vertebra(shp, seed=7 + i) for i in range(args.rois)]
        st = GLCMSettings(kernel_radius=rad)
        ts = [_timed(glcm_maps_batch, [h for h, _ in rois], [b for _, b in rois], st, "cpu")[1]
              for _ in range(max(1, args.repeats))]
        t = statistics.median(ts) / len(rois)
        nvox = statistics.mean(int(b.sum()) for _, b in rois)
        print(f"| {shp} | {rad} | {1e3 * t:.1f} | {nvox / t:,.0f} | {np.prod(shp) / t:,.0f} |")

    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("\nCUDA: not available on this machine (GPU figure not measured).")
        return
    rois = [synthetic_vertebra(shape, seed=i) for i in range(64)]
    hs, bs = [h for h, _ in rois], [b for _, b in rois]
    glcm_maps_batch(hs[:2], bs[:2], s, "cuda")
    ts = []
    for _ in range(max(1, args.repeats)):
        torch.cuda.synchronize()
        ts.append(_timed(glcm_maps_batch, hs, bs, s, "cuda")[1])
    t = statistics.median(ts)
    err, same = _rel_err(glcm_maps(*rois[0], s, "cuda"), glcm_maps(*rois[0], s, "cpu"))
    print(f"\nCUDA ({torch.cuda.get_device_name()}): 64 ROIs of {shape} in {t:.3f} s -> "
          f"{64 * np.prod(shape) / t:,.0f} ROI voxels/s, {sum(int(b.sum()) for b in bs) / t:,.0f} mask voxels/s; "
          f"vs CPU engine max rel err {err:.1e}, NaN identical {same}")


if __name__ == "__main__":
    main()
