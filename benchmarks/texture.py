"""Texture engine vs pyradiomics voxel-based GLCM: speed and agreement (not a test).

    python benchmarks/texture.py [--repeats N] [--rois DIR] [--batch B] [--voxel-batches V,V,...]

ROI sources (each timed separately):

* ``synthetic``: 64x64x32 vertebra-like ROIs (``synthetic_vertebra``, a different seed per
  ROI and repeat);
* ``ingest`` (with ``--rois DIR``, e.g. ``data/interim/ingest``): the ROIs the real pipeline
  wrote (``vertebrae.parquet`` + ``rois/*.npz``, data contract §2).

Settings: bin width 25 HU, kernel radius 2. What is timed, per repeat and source, both
sides in the same run, interleaved:

* engine: ``glcm_maps_batch`` on B full ROIs (checks, discretisation, kernels, output
  assembly all included); rate = mask voxels / wall seconds (median of 3 calls);
* pyradiomics: ``RadiomicsFeatureExtractor.execute(..., voxelBased=True)`` on the SAME image
  with the mask restricted to an 8-slice x-slab through the middle of the mask (a full ROI
  takes minutes); rate = slab mask voxels / wall seconds. Its ``voxelBatch`` is the fastest
  of ``--voxel-batches`` in a calibration run before the repeats. The engine runs on that
  identical slab input and the max relative error / NaN-pattern agreement is measured.

The ratio is taken per repeat (engine rate / pyradiomics rate) and the median reported with
the 1-minute load average seen during the run. Then a cost table vs ROI size and kernel
radius (engine only) and the CUDA figure when a GPU is present.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from features.texture import GLCMSettings, discretize, glcm_maps, glcm_maps_batch
from osteo_testing.texture_reference import pyradiomics_maps, synthetic_vertebra

SHAPE = (64, 64, 32)
SETTINGS = GLCMSettings(kernel_radius=2, bin_width=25.0)


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _rel_err(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    fin = ~np.isnan(b) & ~np.isnan(a)
    err = np.abs(a[fin] - b[fin]) / np.maximum(np.abs(b[fin]), 1e-300)
    return float(err.max(initial=0.0)), same_nan


def _slab(body: np.ndarray, width: int = 8) -> np.ndarray:
    """The mask restricted to ``width`` x-slices through the middle of its x extent."""
    xs = np.flatnonzero(body.any(axis=(1, 2)))
    c = (int(xs[0]) + int(xs[-1]) + 1) // 2
    out = np.zeros_like(body)
    out[c - width // 2:c + width - width // 2] = body[c - width // 2:c + width - width // 2]
    return out


def _ingest_rois(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(hu, body) of every ROI listed in ``root/vertebrae.parquet``."""
    import pandas as pd

    table = pd.read_parquet(root / "vertebrae.parquet")
    rois = []
    for rel in table["roi_path"]:
        with np.load(root / rel) as z:
            rois.append((z["hu"], z["body"]))
    return rois


def _describe(name: str, rois) -> str:
    ng = [int(discretize(h, b > 0, SETTINGS).max()) for h, b in rois]
    nv = [int((b > 0).sum()) for _, b in rois]
    shapes = sorted({h.shape for h, _ in rois})
    return (f"{name}: {len(rois)} ROIs, shape(s) {shapes}, mask voxels {min(nv):,}-{max(nv):,}, "
            f"gray levels {min(ng)}-{max(ng)} (bin width {SETTINGS.bin_width:g}, radius {SETTINGS.kernel_radius})")


def _calibrate_voxel_batch(hu, body, candidates: list[int]) -> tuple[int, dict[int, float]]:
    """pyradiomics rate (slab voxels/s) per voxelBatch; returns the fastest and all rates."""
    slab = _slab(body)
    rates = {}
    for vb in candidates:
        _, t = _timed(pyradiomics_maps, hu, slab, GLCMSettings(kernel_radius=2, bin_width=25.0, voxel_batch=vb))
        rates[vb] = int(slab.sum()) / t
    return max(rates, key=rates.get), rates


def _compare(name: str, pick, repeats: int, batch: int, vb: int) -> list[tuple]:
    """Interleaved engine / pyradiomics timings, one row per repeat."""
    s_ref = GLCMSettings(kernel_radius=2, bin_width=25.0, voxel_batch=vb)
    rows = []
    for r in range(repeats):
        rois = pick(r)
        hs, bs = [h for h, _ in rois], [b for _, b in rois]
        nvox = sum(int((b > 0).sum()) for b in bs)
        load0 = os.getloadavg()[0]
        t_eng = statistics.median(_timed(glcm_maps_batch, hs, bs, SETTINGS, "cpu")[1] for _ in range(3))
        hu, body = rois[0]
        slab = _slab(body)
        ref, t_ref = _timed(pyradiomics_maps, hu, slab, s_ref)
        err, same_nan = _rel_err(glcm_maps(hu, slab, s_ref, "cpu"), ref)
        load = max(load0, os.getloadavg()[0])
        eng, pyr = nvox / t_eng, int(slab.sum()) / t_ref
        rows.append((eng, pyr, eng / pyr, err, same_nan, load))
        print(f"  {name} repeat {r}: engine {eng:,.0f} vox/s ({len(rois)} ROIs), pyradiomics {pyr:,.0f} vox/s "
              f"({int(slab.sum())} voxels in {t_ref:.1f} s), ratio {eng / pyr:,.0f}x, max rel err {err:.2e}, "
              f"NaN identical {same_nan}, load {load:.1f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rois", type=Path, default=None, help="ingest folder (vertebrae.parquet + rois/)")
    ap.add_argument("--batch", type=int, default=4, help="ROIs per engine call")
    ap.add_argument("--voxel-batches", default="250,1000,4000,-1", help="pyradiomics voxelBatch candidates")
    args = ap.parse_args()
    glcm_maps(*synthetic_vertebra((16, 16, 8)), SETTINGS)  # compile / warm up

    sources = {"synthetic": lambda r: [synthetic_vertebra(SHAPE, seed=100 * r + i) for i in range(args.batch)]}
    print(_describe("synthetic", sources["synthetic"](0)))
    if args.rois is not None:
        real = _ingest_rois(args.rois)
        print(_describe(f"ingest ({args.rois})", real))
        # repeat r: a rotating window of B real ROIs (all of them when there are fewer)
        sources["ingest"] = lambda r: [real[(r + i) % len(real)] for i in range(min(args.batch, len(real)))]

    cands = [int(v) for v in args.voxel_batches.split(",")]
    vb, rates = _calibrate_voxel_batch(*sources["synthetic"](0)[0], cands)
    print("pyradiomics voxelBatch calibration (slab voxels/s): "
          + ", ".join(f"{k}: {v:,.0f}" for k, v in rates.items()) + f" -> using {vb}", flush=True)

    table = []
    for name, pick in sources.items():
        rows = _compare(name, pick, args.repeats, args.batch, vb)
        ratios = [r[2] for r in rows]
        table.append(f"| {name} | {statistics.median(r[0] for r in rows):,.0f} | "
                     f"{statistics.median(r[1] for r in rows):,.0f} | {statistics.median(ratios):,.0f}x "
                     f"({min(ratios):,.0f}-{max(ratios):,.0f}) | {max(r[3] for r in rows):.1e} | "
                     f"{all(r[4] for r in rows)} | {min(r[5] for r in rows):.1f}-{max(r[5] for r in rows):.1f} |")
    print("\n| ROIs | engine mask vox/s | pyradiomics vox/s (voxelBatch=%d) | ratio (median, per-repeat range) "
          "| max rel err | NaN identical | load avg |\n|---|---|---|---|---|---|---|" % vb)
    print("\n".join(table))

    print(f"\n| ROI shape | kernel radius | ms / ROI | mask voxels/s | ROI voxels/s |\n|---|---|---|---|---|")
    for shp, rad in (((32, 32, 16), 2), ((64, 64, 32), 1), ((64, 64, 32), 2), ((64, 64, 32), 3),
                     ((96, 96, 48), 2)):
        rois = [synthetic_vertebra(shp, seed=7 + i) for i in range(args.batch)]
        st = GLCMSettings(kernel_radius=rad)
        ts = [_timed(glcm_maps_batch, [h for h, _ in rois], [b for _, b in rois], st, "cpu")[1]
              for _ in range(max(3, args.repeats))]
        t = statistics.median(ts) / len(rois)
        nvox = statistics.mean(int(b.sum()) for _, b in rois)
        print(f"| {shp} | {rad} | {1e3 * t:.1f} | {nvox / t:,.0f} | {np.prod(shp) / t:,.0f} |")
    print(f"(load average {os.getloadavg()[0]:.1f})")

    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("\nCUDA: not available on this machine (GPU figure not measured).")
        return
    rois = [synthetic_vertebra(SHAPE, seed=i) for i in range(64)]
    hs, bs = [h for h, _ in rois], [b for _, b in rois]
    glcm_maps_batch(hs[:2], bs[:2], SETTINGS, "cuda")
    ts = []
    for _ in range(max(1, args.repeats)):
        torch.cuda.synchronize()
        ts.append(_timed(glcm_maps_batch, hs, bs, SETTINGS, "cuda")[1])
    t = statistics.median(ts)
    err, same = _rel_err(glcm_maps(*rois[0], SETTINGS, "cuda"), glcm_maps(*rois[0], SETTINGS, "cpu"))
    print(f"\nCUDA ({torch.cuda.get_device_name()}): 64 ROIs of {SHAPE} in {t:.3f} s -> "
          f"{64 * np.prod(SHAPE) / t:,.0f} ROI voxels/s, {sum(int(b.sum()) for b in bs) / t:,.0f} mask voxels/s; "
          f"vs CPU engine max rel err {err:.1e}, NaN identical {same}")


if __name__ == "__main__":
    main()
