"""Prefect flow ``screen``: one batch of new studies, each study a Prefect task on a Dask cluster.

The same library functions as ``osteo screen run`` (no second code path): :func:`screening.batch.plan_batch`
(model, skew, ledger: once, in the flow), :func:`screening.batch.screen_study` mapped as the task
``screen-study`` (segmenter, ingestion, texture of one study) in the subflow ``screen-studies`` whose
task runner is a :class:`prefect_dask.DaskTaskRunner`, then :func:`screening.batch.finish_batch`
(predictions, reports, tables, MLflow run, ledger: once, in the flow). With ``pacs_url`` the batch is
the PACS's new CT series (:mod:`screening.pacs_batch`: export first, reports stored back, then the state).

Where the studies run: a ``distributed.LocalCluster`` of ``compute.local_workers`` processes (one thread
each) started for the run, or the existing cluster at ``dask_address`` / ``compute.dask_address`` (its
workers must see the same files and have the same environment). A study's task is retried
(``flows.retries``, ``flows.retry_delay_s``) on transient errors only: network errors and timeouts
(:func:`flows.stages.is_transient`); a data fault is quarantined inside the study's work and never
raises, and any other exception fails the study (and the flow) at once.

A drift alert is not a failure: the outputs are written, and the flow ends Completed with a warning
message naming the drifted features (counts and names only, no identifier). Task runs are named by
index, never by study. Call :func:`flows.runtime.configure_prefect` before importing this module (it also
sets the embedded server's start-up timeout from ``flows.ephemeral_startup_timeout_s``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.stages import is_transient
from osteo_config import load_config
from osteo_config.compute import ComputeConfig


def transient(task_, task_run, state) -> bool:
    """Prefect retry condition of a study's task: network errors and timeouts only."""
    return is_transient(state.result(raise_on_failure=False))


def dask_runner(compute: ComputeConfig):
    """The task runner of the per-study work: the cluster at ``compute.dask_address``, else a LocalCluster.

    Raises:
        DaskUnreachableError: ``dask_address`` is set and no scheduler answers within ``connect_timeout_s``.
    """
    from prefect_dask import DaskTaskRunner

    if compute.dask_address:
        from features.parallel import open_executor

        with open_executor(1, compute):           # fail fast, typed, naming the address
            pass
        return DaskTaskRunner(address=compute.dask_address,
                              client_kwargs={"timeout": compute.connect_timeout_s})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": compute.local_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


@task(name="screen-study", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=transient)
def study_task(item, context):
    from screening.batch import screen_study

    return screen_study(item, context)


@flow(name="screen-studies", persist_result=False)
def screen_studies(items: list, context, retries: int, retry_delay_s: float) -> list:
    """Every study of the batch as a ``screen-study`` task on this flow's task runner (results in input order)."""
    futures = study_task.with_options(retries=retries, retry_delay_seconds=retry_delay_s).map(items, unmapped(context))
    return [f.result() for f in futures]


@flow(name="screen", persist_result=False)
def screen(params_file: str, input_dir: str | None, out_dir: str, profile: str | None = None,
           model_uri: str | None = None, segmenter: str | None = None, rescreen: bool = False,
           pacs_url: str | None = None, dask_address: str | None = None, workers: int | None = None):
    """Screen one folder (or ``pacs_url``'s new series); returns the batch summary (Completed with a warning on drift).

    Args:
        dask_address: tcp://HOST:8786 of a running scheduler (default ``compute.dask_address``).
        workers: processes of the local cluster (default ``compute.local_workers``).
    """
    from screening.batch import ScreenRequest, finish_batch, new_batch_id, plan_batch

    cfg = load_config(params_file, profile)
    compute = cfg.compute
    if dask_address:
        compute = dataclasses.replace(compute, dask_address=dask_address)
    if workers:
        compute = dataclasses.replace(compute, local_workers=int(workers))
    fl = cfg.as_dict().get("flows") or {}
    retries, delay = int(fl.get("retries", 2)), float(fl.get("retry_delay_s", 5))
    batch_id = new_batch_id()

    def run(folder: Path):
        request = ScreenRequest(input_dir=Path(folder), out_dir=Path(out_dir), model_uri=model_uri,
                                segmenter=segmenter, rescreen=rescreen, batch_id=batch_id)
        plan = plan_batch(request, screen=cfg.screen, ingest=cfg.ingest, texture=cfg.texture,
                          geometry=cfg.io_geometry(), model_name=cfg.registry.model_name,
                          tracking_uri=cfg.tracking.active_uri, profile=cfg.profile)
        outcomes = (screen_studies.with_options(task_runner=dask_runner(compute))(plan.items, plan.context,
                                                                                  retries, delay)
                    if plan.items else [])
        return finish_batch(plan, outcomes, screen=cfg.screen, geometry=cfg.io_geometry(),
                            tracking_uri=cfg.tracking.active_uri, artifact_location=cfg.tracking.artifact_location)

    if pacs_url:
        from screening.pacs_batch import screen_pacs

        res = screen_pacs(pacs_url, Path(out_dir), pacs=cfg.screen.pacs, screen_export=run, batch_id=batch_id,
                          review=cfg.screen.review)
        get_run_logger().info("PACS: %d new series, %d studies exported, stored %s", res.new_series,
                              res.studies_exported, res.stored)
        if res.batch is None:
            return {"batch_id": None, "screened": 0, "quarantined": 0, "drift_alert": False, "pacs": res.stored}
        summary = {**asdict(res.batch), "pacs": res.stored}
    else:
        summary = asdict(run(Path(input_dir)))
    get_run_logger().info("batch %s: %d screened, %d quarantined", summary["batch_id"], summary["screened"],
                          summary["quarantined"])
    if summary["drift_alert"]:
        return Completed(message=f"WARNING drift alert in batch {summary['batch_id']}: "
                                 f"{', '.join(summary['drifted_features'])} differ from the training distribution",
                         data=summary)
    return summary
