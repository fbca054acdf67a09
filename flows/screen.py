"""Prefect flow ``screen``: one batch of new studies through :func:`screening.batch.screen_folder`.

The same entry point as ``osteo screen run`` (no second code path): the flow adds Prefect's states and
retries around it. A drift alert is not a failure: the outputs are written, and the flow ends
Completed with a warning message naming the drifted features (counts and names only, no identifier).
Call :func:`flows.runtime.configure_prefect` before importing this module.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from osteo_config import load_config


@task(name="screen-batch", cache_policy=NO_CACHE)
def screen_batch(params_file: str, profile: str | None, input_dir: str, out_dir: str, model_uri: str | None,
                 segmenter: str | None, rescreen: bool) -> dict[str, Any]:
    from screening.batch import ScreenRequest, screen_folder

    cfg = load_config(params_file, profile)
    request = ScreenRequest(input_dir=Path(input_dir), out_dir=Path(out_dir), model_uri=model_uri,
                            segmenter=segmenter, rescreen=rescreen)
    return asdict(screen_folder(request, screen=cfg.screen, ingest=cfg.ingest, texture=cfg.texture,
                                geometry=cfg.io_geometry(), model_name=cfg.registry.model_name,
                                tracking_uri=cfg.tracking.active_uri, profile=cfg.profile,
                                artifact_location=cfg.tracking.artifact_location))


@flow(name="screen")
def screen(params_file: str, input_dir: str, out_dir: str, profile: str | None = None, model_uri: str | None = None,
           segmenter: str | None = None, rescreen: bool = False):
    """Screen one folder; returns the batch summary (a Completed state with a warning on drift)."""
    summary = screen_batch(params_file, profile, input_dir, out_dir, model_uri, segmenter, rescreen)
    get_run_logger().info("batch %s: %d screened, %d quarantined", summary["batch_id"], summary["screened"],
                          summary["quarantined"])
    if summary["drift_alert"]:
        return Completed(message=f"WARNING drift alert in batch {summary['batch_id']}: "
                                 f"{', '.join(summary['drifted_features'])} differ from the training distribution",
                         data=summary)
    return summary
