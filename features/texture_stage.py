"""The texture stage: vertebra ROIs -> texture pools + scalar radiomics (data contract §3).

Reads ``<ingest_dir>/vertebrae.parquet`` (contract §2), and per vertebra writes
the texture pool ``<out_dir>/pools/<sha[:2]>/<sha>.npy``: float32 (5, x, y, z) = HU, Autocorrelation,
JointAverage, Contrast, DifferenceAverage. Outside the body mask the maps hold
pyradiomics' fill value (``initValue`` = 0, ``texture.fill_value``); inside
they are pyradiomics' values, NaN included (JointAverage is NaN at a voxel
whose kernel has no pair along some direction that has pairs elsewhere; the
count is reported as ``nan_voxels``). Then ``texture.parquet`` (every vertebra) and
``radiomics.parquet`` (scalar pyradiomics features of the levels in ``texture.scalar_levels``,
by default L1-L4: the DXA-labelled levels the radiomics baseline trains and is scored on; the
other levels would cost ~50 ms of pyradiomics each for columns nothing reads) in ``out_dir``.
Resumable: ``<out_dir>/manifest.json`` remembers, per vertebra, the ROI hash and the params
hash it was computed with; a re-run skips unchanged vertebrae. Crash-safe: every file is written atomically
(:mod:`features.atomic`), each finished batch is recorded in ``<out_dir>/journal/``
once its pyradiomics results are in (collected after the next batch's jobs are queued, so at
most two batches are unrecorded at any time; a killed run resumes after its last recorded batch), an
unreadable record is ignored with a warning (its vertebrae are recomputed), and
the data folder's lock (:mod:`features.workspace`) keeps a second run out. A failing ROI goes to
``<out_dir>/quarantine.parquet`` (the stage's own file: ingestion's quarantine
is another stage's output and is never rewritten here).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from features import atomic
from features.radiomics_scalar import scalar_features
from features.texture import GLCMSettings, TextureInputError, glcm_maps_batch, glcm_maps
from features.parallel import open_executor
from features.workspace import workspace_lock
from osteo_config.compute import ComputeConfig
from osteo_config.texture import ENGINE_VERSION, TextureConfig  # noqa: F401  (configuration lives in the leaf package)

log = logging.getLogger(__name__)

KEYS = ("patient_id", "study_id", "level", "level_name")  # vertebra keys copied to the output tables
MANIFEST = "manifest.json"    # item -> entry, the state of the last complete run
JOURNAL = "journal"           # batch-*.json: entries recorded as batches finish (an interrupted run's progress)
ENTRY_KEYS = {"roi_sha256", "params_hash", "pool_path", "pool_sha256", "pool_shape", "radiomics"}


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
    discarded_records: int = 0  # unreadable manifest / batch records ignored (their vertebrae recomputed)


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
    if not path.exists():   # content-addressed: an existing file already holds these bytes
        atomic.write_npy(path, pool)
    return rel, sha


def _append_quarantine(out_dir: Path, rows: list[dict[str, str]], retried: set[str]) -> None:
    path = out_dir / "quarantine.parquet"
    old = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["item", "kind", "reason", "detail", "stage"])
    # a retried item's earlier texture verdict is replaced, never duplicated
    old = old[~((old["stage"] == "texture") & old["item"].isin(retried))]
    new = pd.DataFrame(rows, columns=["item", "kind", "reason", "detail", "stage"])
    atomic.write_parquet(path, pd.concat([old, new], ignore_index=True), index=False)


def _valid_entry(e: Any) -> bool:
    return isinstance(e, dict) and ENTRY_KEYS <= set(e) and isinstance(e["pool_path"], str)


def _read_record(path: Path, what: str) -> dict[str, dict] | None:
    """Entries of the manifest or of one batch record; None (with a warning) when it is unreadable."""
    try:
        obj = json.loads(path.read_text())
        entries = obj.get("entries") if what == "batch" else obj
        if not isinstance(entries, dict) or not all(_valid_entry(e) for e in entries.values()):
            raise ValueError("entries missing or malformed")
        return entries
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("texture %s record %s is unreadable (%s: %s): ignored, its vertebrae are recomputed",
                    what, path.name, type(exc).__name__, exc)
        return None


def load_manifest(out_dir: Path) -> tuple[dict[str, dict], int]:
    """The stage's manifest merged with the batch records of an interrupted run.

    Returns:
        (item -> entry, number of unreadable records ignored). An unreadable record (truncated by a
        crash, edited by hand) is removed and its vertebrae are recomputed, never trusted or fatal.
    """
    manifest: dict[str, dict] = {}
    bad = 0
    man_path = out_dir / MANIFEST
    if man_path.exists():
        got = _read_record(man_path, "manifest")
        if got is None:
            bad += 1
            man_path.unlink()
        else:
            manifest.update(got)
    for rec in sorted((out_dir / JOURNAL).glob("batch-*.json")) if (out_dir / JOURNAL).is_dir() else []:
        got = _read_record(rec, "batch")
        if got is None:
            bad += 1
            rec.unlink()
        else:
            manifest.update(got)
    return manifest, bad


def _record_batch(out_dir: Path, entries: dict[str, dict]) -> Path:
    """Record finished vertebrae atomically: a crash after this loses none of them."""
    name = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:20]
    path = out_dir / JOURNAL / f"batch-{name}.json"
    atomic.write_json(path, {"entries": entries}, sort_keys=True)
    return path


def run_texture(cfg: TextureConfig, ingest_dir: Path, out_dir: Path, progress: bool = True,
                compute: ComputeConfig | None = None) -> TextureSummary:
    """Compute texture pools and scalar radiomics for every vertebra of ``vertebrae.parquet``.

    Crash-safe and resumable: each batch's vertebrae (pools + scalar features) are recorded in
    ``<out_dir>/journal/batch-*.json`` as soon as the batch is done (its pyradiomics results are
    collected once the next batch's jobs are queued); a killed run resumes from the last recorded
    batch. At the end the records are folded into ``manifest.json`` (written atomically) and removed.
    The data folder's lock (:mod:`features.workspace`) is held throughout.

    Args:
        cfg: the texture configuration.
        ingest_dir: ingestion's output folder (``vertebrae.parquet`` + ROIs).
        out_dir: where pools and tables go (``pool_path`` is relative to it).
        progress: show a tqdm progress bar.
        compute: where the per-vertebra scalar radiomics run (``compute.dask_address``: a Dask cluster).

    Returns:
        Counts of the run (see :class:`TextureSummary`).

    Raises:
        WorkspaceBusyError: another run holds the data folder.
    """
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock(out_dir, "texture"):
        return _run_texture(cfg, ingest_dir, out_dir, progress, compute)


def _run_texture(cfg: TextureConfig, ingest_dir: Path, out_dir: Path, progress: bool,
                 compute: ComputeConfig | None) -> TextureSummary:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    vert = pd.read_parquet(ingest_dir / "vertebrae.parquet")
    vert = vert.assign(item=vert["study_id"].astype(str) + ":" + vert["level"].astype(str))
    phash = cfg.params_hash()
    manifest, bad_records = load_manifest(out_dir)

    def fresh(row) -> bool:
        e = manifest.get(row.item)
        return bool(e and e["roi_sha256"] == row.roi_sha256 and e["params_hash"] == phash
                    and e.get("radiomics") is not None and (out_dir / e["pool_path"]).exists())

    todo = [r for r in vert.itertuples(index=False) if not fresh(r)]
    skipped = len(vert) - len(todo)
    failed: dict[str, tuple[str, str]] = {}
    nan_voxels, engine_s, engine_vox = 0, 0.0, 0
    bar = tqdm(total=2 * len(todo), desc="texture", disable=not progress)
    # scalar radiomics per vertebra: serial, processes, or the Dask cluster of compute.dask_address
    stack = contextlib.ExitStack()
    scalar_ex = stack.enter_context(open_executor(cfg.workers if len(todo) > 1 else 1, compute))
    try:
        inflight: collections.deque = collections.deque()   # batches whose pyradiomics jobs are still running

        def finish(entries: dict[str, dict], pending, done: int) -> None:
            """Collect a batch's scalar radiomics, then record the batch (a crash after this loses none of it)."""
            for item, feats, reason, detail in pending.results():
                if item not in entries:    # its maps failed: already quarantined with the engine's reason
                    continue
                bar.update(1)
                if feats is None:
                    failed[item] = (reason, detail)
                    entries.pop(item)
                else:
                    entries[item]["radiomics"] = feats
            if entries:
                _record_batch(out_dir, entries)
                manifest.update(entries)
                log.info("texture: batch of %d vertebrae recorded (%d/%d to do)", len(entries), done, len(todo))

        for start in range(0, len(todo), cfg.batch_size):
            batch, rois = [], []
            for r in todo[start:start + cfg.batch_size]:
                try:
                    rois.append(_load_roi(ingest_dir, r.roi_path))
                    batch.append(r)
                except TextureInputError as exc:
                    failed[r.item] = (type(exc).__name__, str(exc))
                    bar.update(2)
            if not batch:
                continue
            # scalar radiomics (pyradiomics, processes) start first and run while the engine computes the
            # maps in this process: they read the ROI files, not the pools; only the levels of
            # texture.scalar_levels (the ones a model or report reads them for)
            jobs = [(r.item, str(ingest_dir / r.roi_path), [float(s) for s in np.asarray(r.spacing_mm).ravel()],
                     {k: list(v) for k, v in cfg.scalar_features.items()}, cfg.glcm.bin_width) for r in batch
                    if cfg.wants_scalar(r.level)]
            pending = scalar_ex.submit(_scalar_job, jobs)
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
            entries: dict[str, dict] = {}
            for r, (h, b), m in zip(batch, rois, maps):
                bar.update(1)
                if m is None:
                    bar.update(1)
                    continue
                engine_vox += int(b.sum())
                pool = np.concatenate([h[None], m.astype(np.float32)], axis=0)  # (5, x, y, z)
                nan_voxels += int(np.isnan(pool).sum())
                rel, sha = _write_pool(out_dir, pool)
                scalar = cfg.wants_scalar(r.level)
                entries[r.item] = {"roi_sha256": r.roi_sha256, "params_hash": phash, "pool_path": rel,
                                   "pool_sha256": sha, "pool_shape": list(pool.shape),
                                   "radiomics": None if scalar else {}}   # {}: none wanted for this level
                if not scalar:
                    bar.update(1)
            # the previous batch is collected only now, with this batch's jobs already queued: the workers
            # never wait for this process between batches (at most two batches are unrecorded at a crash)
            inflight.append((entries, pending, min(start + cfg.batch_size, len(todo))))
            if len(inflight) > 1:
                finish(*inflight.popleft())
        while inflight:
            finish(*inflight.popleft())
    finally:
        stack.close()
    bar.close()
    for item in failed:
        manifest.pop(item, None)
    # fold the batch records into the manifest, then drop them (a crash in between only repeats the fold)
    atomic.write_json(out_dir / MANIFEST, manifest, sort_keys=True)
    # temp files a killed run left anywhere in the folder (a pool cut short, a batch record, a table):
    # safe only because run_texture holds the folder's lock, so no other run is writing here
    for stray in atomic.stray_temp_files(out_dir):
        stray.unlink()
    if (out_dir / JOURNAL).is_dir():
        for rec in (out_dir / JOURNAL).glob("batch-*.json"):
            rec.unlink()
        (out_dir / JOURNAL).rmdir()

    done = vert[vert["item"].isin([k for k, v in manifest.items() if v.get("params_hash") == phash])]
    keys = [k for k in KEYS if k in done.columns]
    tex = done[keys + ["item", "roi_sha256"]].copy()
    tex["pool_path"] = [manifest[i]["pool_path"] for i in done["item"]]
    tex["pool_sha256"] = [manifest[i]["pool_sha256"] for i in done["item"]]
    tex["pool_shape"] = [manifest[i]["pool_shape"] for i in done["item"]]
    tex["texture_params_hash"] = phash
    atomic.write_parquet(out_dir / "texture.parquet", tex.drop(columns="item"), index=False)
    scalar = done[[bool(manifest[i]["radiomics"]) for i in done["item"]]]     # the texture.scalar_levels rows
    rad = pd.DataFrame([manifest[i]["radiomics"] for i in scalar["item"]], index=scalar.index)
    atomic.write_parquet(out_dir / "radiomics.parquet", pd.concat([scalar[keys], rad], axis=1), index=False)

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
        mask_voxels_per_s=engine_vox / engine_s if engine_s > 0 else 0.0, discarded_records=bad_records)
