"""Screening throughput: studies per minute with 1 and 2 workers on this machine (a script, not a test).

    python benchmarks/screen.py [--studies 10] [--workers 1 2] [--flow] [--keep DIR]

What runs: the tiny champion of the screening tests (pools shaped like the model's I/O contract, trained
once, registered in a private SQLite MLflow) and an export of ``--studies`` synthetic studies (the
geometry phantom of tests/features, NIfTI CT + TotalSegmentator-style mask, no DXA), or with
``--cohort N`` the demo simulator's export (N patients per site, real-sized CTs, its planted faults,
``dxa.csv`` removed; the tiny champion's ingest settings: calibration off). For each worker
count, :func:`screening.batch.screen_folder` screens the whole export into a fresh output folder,
its per-study work (ingestion + texture of one study: :func:`screening.batch.screen_study`) in
that many spawned processes (:mod:`features.parallel`; 1 = in-process). With ``--flow`` the Prefect
flow ``screen`` runs too, its studies as tasks on a ``distributed.LocalCluster`` of each worker count.

Printed per row: wall seconds of the batch, of its per-study phase (the part that is parallel:
``features.parallel.map_items``), studies/min (every study read: screened + quarantined) over the batch
and over the per-study phase, and the
1-minute load average before and after (the machine is shared: other work only ever adds time).
A pool's start-up (spawning processes that import the project) is part of the per-study phase.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY = "5f1c9e0a7b3d42c8a61e9f07d2b4c83e1a5f6d7092b3c4e8f1a2b3c4d5e6f708"   # the tests' pseudonymisation key


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def champion(root: Path) -> tuple[dict, str]:
    """(params, tracking URI) of a tiny model trained on contract-shaped pools, registered as champion."""
    import pandas as pd
    from mlflow import MlflowClient

    from osteo_config import Config
    from osteo_model.stages import run_finetune_stage, run_pretrain_stage
    from registry.registry import _source

    tsb = _load("_screen_batch", "tests/screening/test_screen_batch.py")
    train = tsb._train
    params = train.write_inputs(root)
    params["ingest"].update(copy.deepcopy(tsb.INGEST))
    vpath = root / "interim" / "ingest" / "vertebrae.parquet"
    pd.read_parquet(vpath).assign(cal_version="none").to_parquet(vpath)
    spec = Config.from_params(params).experiment()
    run_pretrain_stage(spec, "tp_swav", root / "models")
    rec = run_finetune_stage(spec, "tp_swav", root / "models", root / "metrics" / "train.json")
    uri = params["tracking"]["uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(tsb.NAME)
    source, run_id, model_id = _source(client, rec["model_uri"])
    mv = client.create_model_version(tsb.NAME, source, run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(tsb.NAME, "champion", mv.version)
    return params, uri


def write_cohort_export(raw: Path, root: Path, per_site: int) -> None:
    """The demo profile's simulator (real-sized CTs, 4 sites, its planted faults), DXA removed: a screening export."""
    import cohort.simulate
    from osteo_config import load_config

    cfg = load_config(profile="demo", overrides={"cohort": {"workers": 1}})
    cohort.simulate.run_cohort(cfg.cohort, raw, root / "truth", n_patients=per_site, progress=False)
    (raw / "dxa.csv").unlink(missing_ok=True)


def write_export(raw: Path, n: int) -> None:
    tsb = _load("_screen_batch_export", "tests/screening/test_screen_batch.py")
    people = {f"B{i:03d}": dict(mrn=f"MRN55{i:05d}", name=f"BENCH^PATIENT{i}", acc=f"ACC55{i:05d}", fmt="nifti")
              for i in range(n)}
    tsb.write_export(raw, people=people)


def load1() -> float:
    return os.getloadavg()[0]


def timed_map():
    """Wrap ``features.parallel.map_items`` to time the per-study phase; returns (restore, seconds list)."""
    import features.parallel as par

    orig, spent = par.map_items, []

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    par.map_items = wrapper
    return (lambda: setattr(par, "map_items", orig)), spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--flow", action="store_true", help="also the Prefect flow on a LocalCluster")
    ap.add_argument("--cohort", type=int, default=0, metavar="N",
                    help="screen the demo simulator's export (N patients per site, real-sized CTs) instead of "
                         "--studies phantoms")
    ap.add_argument("--keep", type=Path, default=None, help="keep the working folder here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["OSTEO_SCREEN_TEST_KEY"] = KEY

    from osteo_config import Config
    from screening.batch import ScreenRequest, screen_folder

    root = Path(args.keep or tempfile.mkdtemp(prefix="osteo-bench-screen-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    params, uri = champion(root / "champion")
    if args.cohort:
        write_cohort_export(root / "export", root, args.cohort)
    else:
        write_export(root / "export", args.studies)
    import pandas as pd
    n_studies = len(pd.read_csv(root / "export" / "ct_studies.csv"))
    what = f"{n_studies} {'simulator' if args.cohort else 'phantom'} studies"
    print(f"setup (train tiny champion + write {what}): {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = Config.from_params(params)

    rows = []
    for w in args.workers:
        restore, spent = timed_map()
        la0, t0 = load1(), time.perf_counter()
        try:
            s = screen_folder(ScreenRequest(input_dir=root / "export", out_dir=root / f"out-lib-{w}"),
                              screen=cfg.screen, ingest=cfg.ingest, texture=cfg.texture, geometry=cfg.io_geometry(),
                              model_name=cfg.registry.model_name, tracking_uri=uri, profile="tiny", workers=w)
        finally:
            restore()
        wall = time.perf_counter() - t0
        rows.append(("screen_folder (processes)", w, s.screened, s.quarantined, wall, sum(spent), la0, load1()))
        print(f"  library, {w} worker(s): {wall:.1f} s", flush=True)
    if args.flow:
        import yaml

        from flows.runtime import configure_prefect
        configure_prefect({"flows": {"prefect_home": str(root / ".prefect"), "ephemeral_startup_timeout_s": 300}})
        from flows.screen import screen
        p = copy.deepcopy(params)
        p.pop("profiles", None)
        p["profile"] = "demo"
        pfile = root / "params.yaml"
        pfile.write_text(yaml.safe_dump(p))
        for w in args.workers:
            la0, t0 = load1(), time.perf_counter()
            summary = screen(str(pfile), str(root / "export"), str(root / f"out-flow-{w}"), workers=w)
            wall = time.perf_counter() - t0
            rows.append(("flow screen (Dask LocalCluster)", w, summary["screened"], summary["quarantined"], wall,
                         float("nan"), la0, load1()))
            print(f"  flow, {w} worker(s): {wall:.1f} s", flush=True)

    print(f"\nscreening throughput, {what}, {os.cpu_count()} CPUs")
    print("studies/min counts every study read (screened + quarantined); per-study phase = features.parallel.map_items")
    print(f"{'path':<33} {'workers':>7} {'screened':>8} {'quarant.':>8} {'batch s':>8} {'phase s':>8} "
          f"{'studies/min':>11} {'(phase)':>8} {'load1 before/after':>19}")
    for path, w, n, q, wall, phase, la0, la1 in rows:
        per_phase = f"{60 * (n + q) / phase:.1f}" if phase == phase and phase > 0 else "-"
        print(f"{path:<33} {w:>7} {n:>8} {q:>8} {wall:>8.1f} {phase:>8.1f} {60 * (n + q) / wall:>11.1f} "
              f"{per_phase:>8} {la0:>9.2f} / {la1:<7.2f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
