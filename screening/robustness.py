"""Robustness to scanner shift (``osteo experiments robustness``): held-out sites simulated by cohort overlays,
screened by the champion, evaluated against their DXA exactly like the external site D.

Per site (first the reference = the base site re-simulated unshifted, then each shift of ``robustness.shifts``),
in ``<work>/<site>/``:

1. simulate: :func:`cohort.simulate.run_cohort` on :func:`osteo_config.robustness.shift_cohort`'s
   configuration (the base site's patients, the shifted scanners, no injected faults);
2. ingest: :func:`features.ingest.run_ingest`, the training's own ingestion (pseudonyms, geometry and HU
   checks, phantomless HU calibration, ROIs; every refused item quarantined with its typed reason);
3. texture: :func:`features.texture_stage.run_texture`;
4. pair: :func:`features.store.materialize` + :func:`features.store.training_set` on the site's own local Feast
   repository: ``osteo_training_v1`` and the ±window rule of :mod:`features.pit`, the training table's pairing;
5. score: the champion's pyfunc, loaded once (:func:`screening.model.load`) and refused on train/serve skew,
   calibration versions included (:func:`screening.model.check_skew`); each vertebra is scored with its own
   DXA vendor, contrast flag and the descriptor columns its contract lists, as the evaluate stage scores the
   test split; predictions are built by the training's own frame (:func:`osteo_model.experiment._predictions`:
   ``y_true`` = WHO class osteoporosis of the paired DXA);
6. evaluate: :mod:`screening.robustness_report` (:func:`osteo_model.evaluate.evaluate_predictions`, the paired
   difference vs the reference on the same patients, the table, the JSON, the MLflow run).

Without ``keep_work`` only ``predictions.parquet``, ``quarantine.parquet`` and ``site.json`` stay per site
(pseudonymous ids, no image); the export, ROIs, pools and the Feast repository are removed once scored.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from osteo_config.cohort import CohortConfig
from osteo_config.compute import ComputeConfig
from osteo_config.evaluate import EvaluateConfig
from osteo_config.ingest import IngestConfig
from osteo_config.robustness import REFERENCE, RobustnessConfig, ShiftConfig, shift_cohort
from osteo_config.store import FeatureStoreConfig
from osteo_config.texture import TextureConfig
from osteo_config.tracking import TrackingConfig
from screening import model as serving
from screening.errors import ScreeningError

log = logging.getLogger(__name__)

MARKER = ".robustness-site"          # a folder this module wrote (and may therefore empty)
KEPT = ("predictions.parquet", "quarantine.parquet", "site.json", MARKER)


class RobustnessError(ScreeningError):
    """The robustness run cannot proceed (the message says what to fix)."""


@dataclass
class SiteRun:
    """One simulated site after screening: its predictions on the paired vertebrae and what ingestion refused."""

    name: str                                  # REFERENCE or the shift's name
    shift: ShiftConfig | None                  # None: the reference
    predictions: pd.DataFrame                  # experiment.PRED_COLUMNS, one row per paired, scored vertebra
    quarantine: pd.DataFrame                   # features.quarantine.COLUMNS (ingestion + texture)
    counts: dict[str, int] = field(default_factory=dict)    # studies / vertebrae seen, ingested, paired
    seconds: dict[str, float] = field(default_factory=dict)  # per step, wall clock


@dataclass(frozen=True)
class RobustnessInputs:
    """The sections one robustness run reads (typed, from the configuration edge)."""

    robustness: RobustnessConfig
    cohort: CohortConfig
    ingest: IngestConfig
    texture: TextureConfig
    store: FeatureStoreConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    geometry: Mapping[str, Any]                # Config.io_geometry(): compared with the model's I/O contract
    model_name: str                            # registry.model_name (default URI: its @champion)
    profile: str
    compute: ComputeConfig | None = None


def _site_dir(work: Path, name: str) -> Path:
    """``<work>/<name>``, emptied when this module wrote it; a foreign non-empty folder is refused."""
    folder = Path(work) / name
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise RobustnessError(f"{folder} is not empty and was not written by `osteo experiments robustness`: "
                              "choose another --work folder")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("written by screening.robustness; safe to delete\n")
    return folder


def _quarantine(*tables: Path) -> pd.DataFrame:
    from features.quarantine import COLUMNS
    parts = [pd.read_parquet(t) for t in tables if Path(t).is_file()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)] if parts else pd.DataFrame(columns=list(COLUMNS))


def labelled_vertebrae(store: FeatureStoreConfig, ingest_dir: Path, texture_dir: Path, repo_dir: Path) -> pd.DataFrame:
    """The site's vertebrae paired with a DXA label by the training table's own code (local Feast repository)."""
    from features.store import materialize, training_set

    local = replace(store, profile="local", repo_dir=str(repo_dir))   # never the shared production registry
    materialize(local, ingest_dir, texture_dir, repo_dir, full=True)
    return training_set(local, repo_dir)


def score(model: serving.ServingModel, pairs: pd.DataFrame, texture_dir: Path) -> pd.DataFrame:
    """Predictions of ``model`` on the paired vertebrae (the evaluate stage's inputs: own vendor, contrast,
    the contract's descriptors), as the training's prediction frame."""
    from osteo_model.experiment import _predictions

    descriptors = [c for c in model.contract.get("descriptors") or [] if c in pairs.columns]
    table = pd.DataFrame({"pool_uri": [str((Path(texture_dir) / p).resolve()) for p in pairs["pool_path"]],
                          "device_vendor": pairs["device_vendor"].to_numpy(), "contrast": pairs["contrast"].to_numpy(),
                          **{c: pairs[c].to_numpy() for c in descriptors}})
    out = model.pyfunc.predict(table)
    return _predictions(pairs, "test", out["score"].to_numpy(), out["bmd_g_cm2"].to_numpy())


def run_site(inputs: RobustnessInputs, model: serving.ServingModel, shift: ShiftConfig | None, work: Path,
             progress: bool = False) -> SiteRun:
    """Steps 1-5 of the module docstring for one site (``shift`` None: the reference)."""
    from cohort.simulate import run_cohort
    from features.ingest import run_ingest
    from features.texture_stage import run_texture

    rcfg, name = inputs.robustness, REFERENCE if shift is None else shift.name
    folder = _site_dir(work, name)
    seconds: dict[str, float] = {}

    def timed(step: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[step] = round(time.perf_counter() - t0, 1)
        return out

    cohort = shift_cohort(inputs.cohort, rcfg.base_site, rcfg.n_patients, shift)
    timed("simulate", run_cohort, cohort, folder / "raw", folder / "truth", sites=[rcfg.base_site],
          progress=progress)
    ing = timed("ingest", run_ingest, inputs.ingest, folder / "raw", folder / "ingest", inputs.profile,
                progress=progress, compute=inputs.compute)
    counts = {"studies": ing.studies.seen, "studies_ingested": ing.studies.ingested,
              "vertebrae_ingested": ing.vertebrae.ingested, "vertebrae_paired": 0}
    pred = pd.DataFrame()
    if ing.vertebrae.ingested:
        timed("texture", run_texture, inputs.texture, folder / "ingest", folder / "texture", progress=progress,
              compute=inputs.compute)
        pairs = timed("pair", labelled_vertebrae, inputs.store, folder / "ingest", folder / "texture",
                      folder / "feature_repo")
        pairs = pairs[pairs["pool_path"].notna()].reset_index(drop=True)   # no pool: quarantined by texture
        counts["vertebrae_paired"] = len(pairs)
        if len(pairs):
            cal = pairs["cal_version"].astype(str).tolist() if "cal_version" in pairs.columns else None
            serving.check_skew(model.contract, inputs.geometry, cal, model.uri)
            pred = timed("score", score, model, pairs, folder / "texture")
    quarantine = _quarantine(folder / "ingest" / "quarantine.parquet", folder / "texture" / "quarantine.parquet")
    pred.to_parquet(folder / "predictions.parquet", index=False)
    quarantine.to_parquet(folder / "quarantine.parquet", index=False)
    (folder / "site.json").write_text(json.dumps({"site": name, "overlay": shift.values() if shift else {},
                                                  "counts": counts, "seconds": seconds}, indent=2))
    if not rcfg.keep_work:
        for p in folder.iterdir():
            if p.name not in KEPT:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    log.info("robustness site %s: %s in %s", name, counts, seconds)
    return SiteRun(name, shift, pred, quarantine, counts, seconds)


def run_robustness(inputs: RobustnessInputs, work: Path, out_json: Path, out_md: Path | None,
                   model_uri: str | None = None, tracking: bool = True, progress: bool = False) -> dict[str, Any]:
    """Simulate, screen and evaluate the reference and every shift; write the table, the JSON and one MLflow run.

    Args:
        inputs: the sections (``robustness``, ``cohort``, ingestion, texture, store, evaluation, tracking) and
            this run's pool geometry.
        work: per-site folders (``<work>/<site>/``, emptied first; only folders this module wrote).
        out_json: the table as JSON (``metrics/robustness.json``).
        out_md: markdown file whose robustness block is replaced (``docs/results.md``); None = none.
        model_uri: the model to screen with (default ``models:/<model_name>@champion``).
        tracking: log one MLflow run ``robustness`` (metrics per shift, no identifier).
        progress: progress bars of the simulator, ingestion and texture stage.

    Returns:
        The JSON record (:func:`screening.robustness_report.build_record`).

    Raises:
        ModelNotFoundError: no champion (or the URI does not resolve).
        TrainServeSkewError: the model was trained on pools made differently (other profile, calibration).
    """
    from screening import robustness_report as R

    t0 = time.perf_counter()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    model = serving.load(inputs.model_name, model_uri, inputs.tracking.active_uri, work / "model")
    serving.check_skew(model.contract, inputs.geometry, None, model.uri)
    runs = [run_site(inputs, model, None, work, progress)]
    runs += [run_site(inputs, model, s, work, progress) for s in inputs.robustness.shifts]
    if not inputs.robustness.keep_work:
        shutil.rmtree(work / "model", ignore_errors=True)
    record = R.build_record(runs, inputs, model, time.perf_counter() - t0)
    R.write_outputs(record, out_json, out_md)
    record["run_id"] = R.log_run(record, inputs.tracking, out_json, enabled=tracking)
    return record
