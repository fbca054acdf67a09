"""The data path per stage: seconds per study and per vertebra, one run (not a test).

    python benchmarks/pipeline.py [--patients N] [--repeats R] [--profile demo] [--keep DIR]

What runs: the demo profile's configuration (``params.yaml`` + ``--profile``) with every
path moved into a temporary folder, ``N`` patients per site (``cohort.simulate.run_cohort``'s
``n_patients``; 4 sites), then the features flow's stages through the library entry points
the CLI calls (``osteo/steps.py``): ``run_cohort`` -> ``run_ingest`` -> ``run_texture`` ->
``read_tables`` + ``run_checks`` -> ``features.store.materialize``. Everything runs in this
one process (``cohort.workers``, ``ingest.workers``, ``texture.workers`` set to 1), so a
stage's figure is its cost on one core, independent of the pool sizes.

How a stage is split: the named library functions below are wrapped with a timer for the
run (module attributes, restored afterwards; no logic is re-implemented). Times are
*exclusive*: a nested timed call is charged to its own row, not to its caller's, so the
rows add up to the wall time of the run. A function a version of the code does not have is
simply absent from the table (e.g. ``calibration`` before phantomless calibration).

With ``--repeats R`` the whole run is repeated on fresh folders (the cohort is
byte-identical each time) and each row reports the minimum over repeats (other work on the
machine only ever adds time), in wall seconds and in CPU seconds of this process (per study
and per vertebra from CPU: on a shared machine the wall clock also counts waiting for a
core); the 1-minute load average is printed beside the table.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# (row, module, attribute): the function whose exclusive time is charged to the row.
# Several attributes may share a row. Order = order of the printed table.
TIMED: tuple[tuple[str, str, str], ...] = (
    ("cohort: render (physics)", "cohort.simulate", "render_study"),
    ("cohort: render (physics)", "cohort.simulate", "body_network"),
    ("cohort: write NIfTI / masks", "cohort.simulate", "save_nifti"),
    ("cohort: write NIfTI / masks", "cohort.simulate", "write_mask"),
    ("cohort: write DICOM", "cohort.simulate", "write_dicom_series"),
    ("cohort: other (plans, truth, CSV)", "cohort.simulate", "run_cohort"),
    ("ingest: read CT + mask", "features.study", "read_ct_study"),
    ("ingest: read CT + mask", "features.study", "read_mask"),
    ("ingest: reorient (to_ras)", "features.study", "to_ras"),
    ("ingest: geometry + HU checks", "features.study", "check_alignment"),
    ("ingest: geometry + HU checks", "features.study", "check_hu"),
    ("ingest: geometry + HU checks", "features.study", "_levels_present"),
    ("ingest: calibration", "features.study", "calibrate_study"),
    ("ingest: resampling (labels + CT)", "features.roi", "sample_grid"),
    ("ingest: body mask morphology", "features.roi", "body_mask"),
    ("ingest: ROI extraction (other)", "features.study", "extract_rois"),
    ("ingest: write ROI .npz", "features.study", "write_roi"),
    ("ingest: other (tables, DXA, pseudonyms)", "features.ingest", "run_ingest"),
    ("texture: read ROI", "features.texture_stage", "_load_roi"),
    ("texture: maps (engine)", "features.texture_stage", "glcm_maps_batch"),
    ("texture: maps (engine)", "features.texture_stage", "glcm_maps"),
    ("texture: write pools", "features.texture_stage", "_write_pool"),
    ("texture: scalar pyradiomics", "features.texture_stage", "scalar_features"),
    ("texture: other (manifest, tables)", "features.texture_stage", "run_texture"),
    ("validation (Great Expectations)", "data_checks", "read_tables"),
    ("validation (Great Expectations)", "data_checks", "run_checks"),
    ("Feast materialisation", "features.store", "materialize"),
)
DATA_PATH_PREFIXES = ("ingest", "texture", "validation", "Feast")   # the features flow (not the simulator)


class Clock:
    """Exclusive wall and CPU time per row: a timed call inside another is charged to itself only.

    CPU = ``time.process_time`` (all threads of this process): the figure that other work on a
    shared machine barely changes; wall time is what a user waits.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}             # wall s
        self.cpu: dict[str, float] = {}                # CPU s
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []           # per open call: [child wall s, child CPU s]

    def wrap(self, row: str, fn):
        def timed(*args, **kwargs):
            self._stack.append([0.0, 0.0])
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                child = self._stack.pop()
                self.totals[row] = self.totals.get(row, 0.0) + dt - child[0]
                self.cpu[row] = self.cpu.get(row, 0.0) + dc - child[1]
                self.calls[row] = self.calls.get(row, 0) + 1
                if self._stack:
                    self._stack[-1][0] += dt
                    self._stack[-1][1] += dc
        timed.__wrapped__ = fn
        return timed


@contextmanager
def instrumented(clock: Clock):
    """Patch every :data:`TIMED` attribute that exists with a timer; restore them on exit."""
    saved = []
    for row, mod_name, attr in TIMED:
        mod = importlib.import_module(mod_name)
        if not hasattr(mod, attr):
            continue
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, clock.wrap(row, getattr(mod, attr)))
    try:
        yield
    finally:
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)


def run_once(cfg, root: Path, patients: int) -> tuple[Clock, dict]:
    """One cohort + features-flow run under ``root``; returns the clock and the counts."""
    import pandas as pd

    import cohort.simulate
    import data_checks
    import features.ingest
    import features.store
    import features.texture_stage

    clock = Clock()
    p = cfg.paths
    with instrumented(clock):
        t0 = time.perf_counter()
        cs = cohort.simulate.run_cohort(cfg.cohort, p.raw, p.truth, n_patients=patients, progress=False)
        ing = features.ingest.run_ingest(cfg.ingest, p.raw, p.ingest_dir, profile=cfg.profile, progress=False)
        tex = features.texture_stage.run_texture(cfg.texture, p.ingest_dir, p.texture_dir, progress=False)
        tables = data_checks.read_tables(p.interim)
        report = data_checks.run_checks(tables, cfg.checks, docs_dir=root / "reports" / "data_docs")
        mat = features.store.materialize(cfg.store, p.ingest_dir, p.texture_dir, Path(cfg.store.repo_dir))
        wall = time.perf_counter() - t0
    vert = pd.read_parquet(p.ingest_dir / "vertebrae.parquet")
    counts = dict(patients=cs.patients, studies=cs.studies, studies_ingested=ing.studies.ingested,
                  vertebrae=len(vert), pools=tex.computed + tex.skipped, checks_ok=bool(report.success),
                  materialized=str(mat), wall=wall)
    return clock, counts


def configure(profile: str, root: Path):
    """The profile's configuration with every output under ``root`` and one process per stage."""
    from osteo_config import load_config

    return load_config(profile=profile, overrides={
        "paths": {"data": str(root / "data"), "raw": str(root / "data/raw"), "truth": str(root / "data/truth"),
                  "interim": str(root / "data/interim"), "reports": str(root / "reports"),
                  "models": str(root / "models"), "metrics": str(root / "metrics")},
        "cohort": {"workers": 1}, "ingest": {"workers": 1}, "texture": {"workers": 1},
        "features_store": {"repo_dir": str(root / "data/feature_repo")}})


def table(clocks: list[Clock], counts: dict) -> str:
    """Markdown: per row the minimum over repeats of wall and CPU seconds; per study / vertebra from CPU."""
    rows = [r for r in dict.fromkeys(r for r, _, _ in TIMED) if any(r in c.totals for c in clocks)]
    wall = {r: min(c.totals.get(r, float("inf")) for c in clocks) for r in rows}
    cpu = {r: min(c.cpu.get(r, float("inf")) for c in clocks) for r in rows}
    n_st, n_v = counts["studies"], max(counts["vertebrae"], 1)
    total = sum(cpu.values())
    lines = [f"| stage | wall s (min of {len(clocks)}) | CPU s (min of {len(clocks)}) | CPU s / study "
             "| CPU ms / vertebra | share of CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r} | {wall[r]:.2f} | {cpu[r]:.2f} | {cpu[r] / n_st:.3f} | {1e3 * cpu[r] / n_v:.1f} | "
                     f"{100 * cpu[r] / total:.1f} % |")
    groups = (("cohort (simulator)", lambda r: not r.startswith(DATA_PATH_PREFIXES)),
              ("data path (ingest -> Feast)", lambda r: r.startswith(DATA_PATH_PREFIXES)),
              ("data path without calibration", lambda r: r.startswith(DATA_PATH_PREFIXES) and "calibration" not in r))
    for name, keep in groups:
        w = sum(t for r, t in wall.items() if keep(r))
        c = sum(t for r, t in cpu.items() if keep(r))
        lines.append(f"| **{name}** | {w:.2f} | {c:.2f} | **{c / n_st:.3f}** | {1e3 * c / n_v:.1f} | "
                     f"{100 * c / total:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=3, help="patients per site (4 sites); the demo has ~235 in all")
    ap.add_argument("--repeats", type=int, default=1, help="whole runs; each row reports the minimum")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from features.texture import GLCMSettings, glcm_maps
    from osteo_testing.texture_reference import synthetic_vertebra

    t0 = time.perf_counter()
    glcm_maps(*synthetic_vertebra((16, 16, 8)), GLCMSettings())   # numba: load/compile once, outside the rows
    print(f"texture engine warm-up (once per process, not in the table): {time.perf_counter() - t0:.1f} s")
    clocks, loads, counts = [], [], {}
    for r in range(args.repeats):
        root = (args.keep / f"run{r}") if args.keep else Path(tempfile.mkdtemp(prefix="osteo-bench-"))
        if root.exists() and args.keep:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        try:
            load0 = os.getloadavg()[0]
            clock, counts = run_once(configure(args.profile, root), root, args.patients)
            loads.append(max(load0, os.getloadavg()[0]))
            clocks.append(clock)
            print(f"repeat {r}: {counts['studies']} studies ({counts['studies_ingested']} ingested), "
                  f"{counts['vertebrae']} vertebrae, {counts['pools']} pools, checks ok {counts['checks_ok']}, "
                  f"wall {counts['wall']:.1f} s, load {loads[-1]:.2f}", flush=True)
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    print(f"\nprofile {args.profile}, {args.patients} patients per site -> {counts['patients']} patients, "
          f"{counts['studies']} studies, {counts['vertebrae']} vertebrae; one process; "
          f"load average (1 min) {min(loads):.2f}-{max(loads):.2f}\n")
    print(table(clocks, counts))


if __name__ == "__main__":
    main()
