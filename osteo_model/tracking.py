"""MLflow tracking, a thin layer: runs, params, data/code versions, logged figures and the pyfunc model.

One **parent run** per training pipeline, one **child run** per stage
(``pretrain``, ``finetune``, ``evaluate-valid``, and ``evaluate``: the test-split
evaluation of ``osteo evaluate``, which reopens the parent). Everything MLflow-specific
lives here; :mod:`osteo_model.experiment` only calls :class:`Tracker`, which
turns into a no-op when tracking is off (so the pipeline has no ``if``s).

What a parent run carries (for filtering and comparing runs in the MLflow UI):

* tags ``method``, ``backbone``, ``pretrain``, ``moe``, ``loss``, ``profile``,
  ``data_version`` (plus ``git_commit``, ``git_dirty``);
* params flattened from params.yaml (``model.*``, ``train.*``, ``texture.*``,
  ``ingest.spacing_mm``, ``ingest.roi_shape``, ``profile``) and the data
  version (training-table SHA-256, split-table SHA-256, texture-params hash,
  the ``dvc.lock`` md5 of the texture stage when present);
* system metrics (``log_system_metrics``; needs psutil).

The model is logged as the pyfunc of :mod:`osteo_model.serving` (its inputs, outputs and
I/O contract are documented there); figures come from :mod:`osteo_model.figures`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from osteo_config.root import flatten  # noqa: F401  (re-exported: MLflow params are flattened sections)
from osteo_config.tracking import TrackingConfig

PARAM_SECTIONS = ("model", "train", "texture")
INGEST_KEYS = ("spacing_mm", "roi_shape")
# MLflow 3 keeps an experiment's kind in this tag. The 3.17 UI picks its landing view from a per-browser
# "workflow type" (URL parameter `workflowType`, else local storage, default GenAI), not from the tag:
# the links the platform prints carry workflowType=machine_learning (:func:`experiment_ui_link`).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_KEYS = ("method", "backbone", "pretrain", "moe", "loss", "profile", "data_version")


# --------------------------------------------------------------------------- versions (pure-ish helpers)

def experiment_ui_link(base_url: str, experiment_id: str) -> str:
    """The MLflow UI link that opens an experiment on its training runs (not the GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_version(texture_digest: str, training_table: Path, splits_table: Path,
                 dvc_lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """Hashes that pin the data a model saw; ``data_version`` (16 hex) combines them.

    Args:
        texture_digest: hash of the ``texture:`` section (:attr:`osteo_config.ExperimentSpec.texture_digest`).
        training_table: the training-table parquet (its bytes are hashed).
        splits_table: the split parquet; its ``<stem>.sha256.json`` sidecar holds the split hash.
        dvc_lock: ``dvc.lock``; the md5 of the texture stage's output is used when present.
    """
    out = {"training_table_sha256": file_sha256(training_table) if Path(training_table).is_file() else "missing",
           "texture_params_hash": texture_digest}
    sidecar = Path(splits_table).with_suffix(".sha256.json")
    out["splits_sha256"] = json.loads(sidecar.read_text()).get("sha256", "missing") if sidecar.is_file() else "missing"
    out["dvc_texture_md5"] = _dvc_texture_md5(Path(dvc_lock))
    out["data_version"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _dvc_texture_md5(lock: Path) -> str:
    if not lock.is_file():
        return "absent"
    import yaml
    stage = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get("texture") or {}
    md5s = [o.get("md5", "") for o in stage.get("outs") or [] if isinstance(o, Mapping)]
    return md5s[0] if md5s else "absent"


def code_version(repo: Path = Path(".")) -> dict[str, str]:
    """Git commit and whether the working tree differs from it (read-only git calls)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- the tracker

class Tracker:
    """MLflow runs for one training pipeline; every method is a no-op when ``enabled`` is False.

    Args:
        cfg: the ``tracking:`` section.
        enabled: False turns every call into a no-op (``tracking=False`` of the pipeline).
    """

    def __init__(self, cfg: TrackingConfig, enabled: bool = True) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.history: dict[str, list[tuple[int, dict[str, float]]]] = {}
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None

    def _experiment_id(self) -> str:
        """The experiment's id (created on first use), marked as classic model development so the MLflow UI
        opens it on its training runs, not on the GenAI views (traces, sessions)."""
        import mlflow
        mlflow.set_tracking_uri(self.cfg.active_uri)
        exp = mlflow.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            location = Path(self.cfg.artifact_location).expanduser().resolve().as_uri()
            return mlflow.create_experiment(self.cfg.experiment, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    @contextlib.contextmanager
    def parent(self, run_name: str, tags: Mapping[str, str], run_params: Mapping[str, str],
               run_id: str | None = None) -> Iterator[str | None]:
        """The pipeline's parent run (system metrics on); yields its run id (None when disabled).

        Started while another run is active (the ablation's), it nests under that run. With
        ``run_id`` an existing parent is reopened (the DVC ``finetune`` stage continues the
        run its ``pretrain`` stage opened, so one pipeline = one parent run); its params are
        not logged again.
        """
        if not self.enabled:
            yield None
            return
        import mlflow
        exp_id = self.experiment_id = self._experiment_id()
        system = self.cfg.log_system_metrics and _has_psutil()
        if system:
            mlflow.set_system_metrics_sampling_interval(self.cfg.system_metrics_interval_s)
        if run_id is not None:
            with mlflow.start_run(run_id=run_id, log_system_metrics=system) as run:
                self.parent_run_id = run.info.run_id
                mlflow.set_tags(dict(tags))
                yield run.info.run_id
            return
        nested = mlflow.active_run() is not None                                   # e.g. one arm of the ablation
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags), nested=nested,
                              log_system_metrics=system) as run:
            self.parent_run_id = run.info.run_id
            self.log_params(run_params)
            yield run.info.run_id

    @contextlib.contextmanager
    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
        """A nested stage run under the parent (tags inherited from the parent, plus ``stage``)."""
        if not self.enabled:
            yield None
            return
        import mlflow
        parent_tags = mlflow.get_run(self.parent_run_id).data.tags if self.parent_run_id else {}
        inherited = {k: v for k, v in parent_tags.items() if k in TAG_KEYS}
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=True, tags={**inherited, "stage": name, **(tags or {})}) as run:
            try:
                yield run.info.run_id
            finally:
                mlflow.flush_async_logging()          # the training curves are in before the run ends

    def log_params(self, run_params: Mapping[str, Any]) -> None:
        if self.enabled and run_params:
            import mlflow
            mlflow.log_params({k: str(v)[:6000] for k, v in run_params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and tags:
            import mlflow
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, values: Mapping[str, float], step: int | None = None, synchronous: bool = True) -> None:
        """Finite numbers only (NaN/None are skipped: an undefined metric is absent, not 0).

        ``synchronous=False`` queues them on MLflow's async logger (the per-step training curves: one
        SQLite commit per step cost ~13 ms, ~6 s of a demo fine-tuning); :meth:`child` flushes the
        queue before its run ends.
        """
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)}
        if self.enabled and clean:
            import mlflow
            mlflow.log_metrics(clean, step=step, synchronous=synchronous)

    def callback(self, stage: str):
        """A ``log_metrics(step, dict)`` callback for :func:`osteo_model.train.fit` (also kept for loss plots)."""
        rows = self.history.setdefault(stage, [])

        def log(step: int, values: dict[str, float]) -> None:
            rows.append((step, dict(values)))
            self.log_metrics(values, step=step, synchronous=False)
        return log

    def log_figure(self, fig: Any, name: str) -> None:
        import matplotlib.pyplot as plt
        if self.enabled:
            import mlflow
            mlflow.log_figure(fig, name)
        plt.close(fig)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            import mlflow
            mlflow.log_artifact(str(path), artifact_path)

    def log_pyfunc(self, bundle: Path, name: str = "model") -> str | None:
        """Log ``model.pt`` and its operating point as an MLflow pyfunc (signature, synthetic input example,
        I/O contract as model metadata ``io_contract``); returns the model URI."""
        if not (self.enabled and self.cfg.log_model):
            return None
        import mlflow

        from osteo_model.references import serving_files
        from osteo_model.serving import ScreeningPyfunc, pyfunc_code_paths, pyfunc_requirements, pyfunc_signature
        signature, example, contract = pyfunc_signature(bundle)
        artifacts = serving_files(bundle)                # bundle + operating point, BMD interval, drift reference
        info = mlflow.pyfunc.log_model(name=name, python_model=ScreeningPyfunc(), artifacts=artifacts,
                                       signature=signature, input_example=(example, {"device_vendor": "Hologic"}),
                                       pip_requirements=pyfunc_requirements(), metadata={"io_contract": contract},
                                       code_paths=pyfunc_code_paths())     # loads without this repo on the path
        return info.model_uri

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (a report with its plots) into the active run."""
        if self.enabled and Path(folder).is_dir():
            import mlflow
            mlflow.log_artifacts(str(folder), artifact_path)


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- pyfunc model


