"""The texture stage: vertebra ROIs -> texture pools + scalar radiomics (data contract §3).

Reads ``<ingest_dir>/vertebrae.parquet`` (contract §2), and per vertebra writes
the texture pool ``<out_dir>/pools/<sha[:2]>/<sha>.npy``: float32 (5, x, y, z) = HU, Autocorrelation,
JointAverage, Contrast, DifferenceAverage. Outside the body mask the maps hold
pyradiomics' fill value (``initValue`` = 0, ``texture.fill_value``); inside
they are pyradiomics' values, NaN included (JointAverage is NaN at a voxel
whose kernel has no pair along some direction that has pairs elsewhere; the
count is reported as ``nan_voxels``). Then ``texture.parquet`` and
``radiomics.parquet`` in ``out_dir``. Resumable: ``<out_dir>/manifest.json``
remembers, per vertebra, the ROI hash and the params hash it was computed with;
a re-run skips unchanged vertebrae. A failing ROI goes to
``<out_dir>/quarantine.parquet`` (the stage's own file: ingestion's quarantine
is another stage's output and is never rewritten here).
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from features.radiomics_scalar import scalar_features
from features.texture import GLCMSettings, TextureInputError, glcm_maps_batch, glcm_maps
from osteo_config.texture import ENGINE_VERSION, TextureConfig  # noqa: F401  (configuration lives in the leaf package)

KEYS = ("patient_id", "study_id", "level", "level_name")  # vertebra keys copied to the output tables


class RoiUnreadableError(TextureInputError):
    """The ROI file is missing, corrupt or lacks the ``hu`` / ``body`` arrays."""


@dataclass(frozen=True)
class TextureSummary:
    """Counts of one run."""

    seen: int              # vertebrae in vertebrae.parquet
    computed: int          # pools computed in this run
    skipped: int           # unchanged since the last run (manifest hit)
    quarantined: int       # ROIs that failed
    reasons: dict[str, int]  # quarantined count per error class
    nan_voxels: int        # NaN map values inside masks, over the pools computed in this run
    seconds: float         # wall time of the run
    mask_voxels_per_s: float  # engine throughput over computed ROIs (mask voxels / engine seconds)


def _load_roi(ingest_dir: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(ingest_dir / rel) as z:
            return np.asarray(z["hu"], dtype=np.float32), np.asarray(z["body"], dtype=np.uint8)
    except (OSError, KeyError, ValueError) as exc:
        raise RoiUnreadableError(f"ROI {rel} unreadable ({type(exc).__name__}): re-run `osteo ingest`") from exc


def _scalar_job(args: tuple) -> tuple[str, dict[str, float] | None, str | None, str | None]:
    """Process-pool task: (item, features or None, error class, message)."""
    item, path, spacing, classes, bin_width = args
    try:
        with np.load(path) as z:
            hu, body = z["hu"], z["body"]
        return item, scalar_features(hu, body, spacing, classes, bin_width), None, None
    except Exception as exc:  # reported as quarantine, never silently dropped
        return item, None, type(exc).__name__, str(exc)


def _write_pool(out_dir: Path, pool: np.ndarray) -> tuple[str, str]:
    sha = hashlib.sha256(pool.tobytes()).hexdigest()
    rel = f"pools/{sha[:2]}/{sha}.npy"
    path = out_dir / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, pool)
        tmp.replace(path)
    return rel, sha


def _append_quarantine(out_dir: Path, rows: list[dict[str, str]], retried: set[str]) -> None:
    path = out_dir / "quarantine.parquet"
    old = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["item", "kind", "reason", "detail", "stage"])
    # a retried item's earlier texture verdict is replaced, never duplicated
    old = old[~((old["stage"] == "texture") & old["item"].isin(retried))]
    new = pd.DataFrame(rows, columns=["item", "kind", "reason", "detail", "stage"])
    pd.concat([old, new], ignore_index=True).to_parquet(path, index=False)


def run_texture(cfg: TextureConfig, ingest_dir: Path, out_dir: Path, progress: bool = True) -> TextureSummary:
    """Compute texture pools and scalar radiomics for every vertebra of ``vertebrae.parquet``.

    Args:
        cfg: the texture configuration.
        ingest_dir: ingestion's output folder (``vertebrae.parquet`` + ROIs).
        out_dir: where pools and tables go (``pool_path`` is relative to it).
        progress: show a tqdm progress bar.

    Returns:
        Counts of the run (see :class:`TextureSummary`).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    vert = pd.read_parquet(ingest_dir / "vertebrae.parquet")
    vert = vert.assign(item=vert["study_id"].astype(str) + ":" + vert["level"].astype(str))
    phash = cfg.params_hash()
    man_path = out_dir / "manifest.json"
    manifest: dict[str, dict] = json.loads(man_path.read_text()) if man_path.exists() else {}

    def fresh(row) -> bool:
        e = manifest.get(row.item)
        return bool(e and e["roi_sha256"] == row.roi_sha256 and e["params_hash"] == phash
                    and (out_dir / e["pool_path"]).exists())

    todo = [r for r in vert.itertuples(index=False) if not fresh(r)]
    skipped = len(vert) - len(todo)
    failed: dict[str, tuple[str, str]] = {}
    nan_voxels, engine_s, engine_vox = 0, 0.0, 0
    bar = tqdm(total=2 * len(todo), desc="texture", disable=not progress)
    for start in range(0, len(todo), cfg.batch_size):
        batch, rois = [], []
        for r in todo[start:start + cfg.batch_size]:
            try:
                rois.append(_load_roi(ingest_dir, r.roi_path))
                batch.append(r)
            except TextureInputError as exc:
                failed[r.item] = (type(exc).__name__, str(exc))
                bar.update(1)
        if not batch:
            continue
        t0 = time.perf_counter()
        try:
            maps = glcm_maps_batch([h for h, _ in rois], [b for _, b in rois], cfg.glcm, device=cfg.device)
        except TextureInputError:  # isolate the faulty ROI(s): one engine call each
            maps = []
            for r, (h, b) in zip(batch, rois):
                try:
                    maps.append(glcm_maps(h, b, cfg.glcm, device=cfg.device))
                except TextureInputError as exc:
                    failed[r.item] = (type(exc).__name__, str(exc))
                    maps.append(None)
        engine_s += time.perf_counter() - t0
        for r, (h, b), m in zip(batch, rois, maps):
            bar.update(1)
            if m is None:
                continue
            engine_vox += int(b.sum())
            pool = np.concatenate([h[None], m.astype(np.float32)], axis=0)  # (5, x, y, z)
            nan_voxels += int(np.isnan(pool).sum())
            rel, sha = _write_pool(out_dir, pool)
            manifest[r.item] = {"roi_sha256": r.roi_sha256, "params_hash": phash, "pool_path": rel,
                                "pool_sha256": sha, "pool_shape": list(pool.shape), "radiomics": None}

    # scalar radiomics (pyradiomics, processes) for the pools computed above
    jobs = [(r.item, str(ingest_dir / r.roi_path), [float(s) for s in np.asarray(r.spacing_mm).ravel()],
             {k: list(v) for k, v in cfg.scalar_features.items()}, cfg.glcm.bin_width)
            for r in todo if r.item in manifest and r.item not in failed]
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool_ex:
            results = list(pool_ex.map(_scalar_job, jobs, chunksize=1))
    else:
        results = [_scalar_job(j) for j in jobs]
    for item, feats, reason, detail in results:
        bar.update(1)
        if feats is None:
            failed[item] = (reason, detail)
            manifest.pop(item, None)
        else:
            manifest[item]["radiomics"] = feats
    bar.close()
    for item in failed:
        manifest.pop(item, None)
    man_path.parent.mkdir(parents=True, exist_ok=True)
    man_path.write_text(json.dumps(manifest))

    done = vert[vert["item"].isin([k for k, v in manifest.items() if v.get("params_hash") == phash])]
    keys = [k for k in KEYS if k in done.columns]
    tex = done[keys + ["item", "roi_sha256"]].copy()
    tex["pool_path"] = [manifest[i]["pool_path"] for i in done["item"]]
    tex["pool_sha256"] = [manifest[i]["pool_sha256"] for i in done["item"]]
    tex["pool_shape"] = [manifest[i]["pool_shape"] for i in done["item"]]
    tex["texture_params_hash"] = phash
    tex.drop(columns="item").to_parquet(out_dir / "texture.parquet", index=False)
    rad = pd.DataFrame([manifest[i]["radiomics"] for i in done["item"]], index=done.index)
    pd.concat([done[keys], rad], axis=1).to_parquet(out_dir / "radiomics.parquet", index=False)

    rows = [{"item": i, "kind": "vertebra", "reason": rs, "detail": d, "stage": "texture"}
            for i, (rs, d) in failed.items()]
    if rows or (out_dir / "quarantine.parquet").exists():
        _append_quarantine(out_dir, rows, {r.item for r in todo})
    reasons: dict[str, int] = {}
    for rs, _ in failed.values():
        reasons[rs] = reasons.get(rs, 0) + 1
    return TextureSummary(
        seen=len(vert), computed=len(todo) - len(failed), skipped=skipped, quarantined=len(failed),
        reasons=reasons, nan_voxels=nan_voxels, seconds=time.perf_counter() - t_start,
        mask_voxels_per_s=engine_vox / engine_s if engine_s > 0 else 0.0)
