"""The ``osteo evaluate`` stage: the candidate's test predictions (and the champion, re-scored) -> files + MLflow.

Reads what ``osteo train finetune`` wrote under ``models_dir``:

* ``finetune/finetune.json``: method, bundle path, MLflow ``run_id`` and ``model_uri`` of the candidate;
* ``finetune/model.pt``: its ``threshold`` (chosen on the validation split) is the operating point,
  never re-tuned here;
* ``predictions.parquet``: only the ``split == "test"`` rows are evaluated.

Champion comparison (when the registry has a ``champion``): its logged pyfunc is loaded from
MLflow and screens the SAME test vertebrae (the test frame is rebuilt with
:func:`osteo_model.experiment.assemble_frames` and restricted to the candidate's test
``vertebra_id`` s), each with its own DXA vendor as in training; the champion keeps its own
stored threshold. :func:`osteo_model.evaluate.evaluate_predictions` then adds the paired
bootstrap differences and McNemar test per scope.

Writes:

* ``<metrics_dir>/evaluate.json``: DVC metrics, :func:`~osteo_model.evaluate.headline_metrics` plus
  provenance (candidate run/model, champion version, path and SHA-256 of the full metrics file);
* ``<metrics_dir>/plots/``: DVC plot data (ROC per scope, reliability, confusion; patient ids never);
* ``<report_dir>/``: ``metrics.json`` (the full dict the promotion gates read), PNG plots, ``report.html``;
* MLflow: a child run ``evaluate`` of the training parent run with the test metrics and these files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from osteo_model import evaluate as E
from osteo_config.evaluate import EvaluateConfig
from osteo_config.experiment import DataPaths
from osteo_config.tracking import TrackingConfig
from osteo_model import report
from osteo_model.evaluate import EvaluationError
from osteo_model.operating_point import OperatingPoint, OperatingPointError, operating_point_path
from osteo_model.tracking import Tracker


@dataclass(frozen=True)
class Candidate:
    """The model ``osteo train finetune`` produced (its ``finetune.json``)."""

    method: str
    bundle: Path
    run_id: str | None
    model_uri: str | None

    @classmethod
    def read(cls, models_dir: Path) -> "Candidate":
        path = Path(models_dir) / "finetune" / "finetune.json"
        if not path.is_file():
            raise EvaluationError(f"{path} not found: run `osteo train pretrain` and `osteo train finetune` first")
        rec = json.loads(path.read_text())
        return cls(str(rec.get("method")), Path(rec["model"]), rec.get("run_id"), rec.get("model_uri"))


def stored_threshold(bundle: Path) -> float:
    """The operating threshold stored beside ``model.pt`` (chosen on validation data)."""
    if not Path(bundle).is_file():
        raise EvaluationError(f"model bundle {bundle} not found: run `osteo train finetune` again")
    try:
        return OperatingPoint.load(operating_point_path(bundle)).threshold
    except OperatingPointError as exc:
        raise EvaluationError(f"{bundle} has no stored operating threshold ({exc})") from exc


def read_test_predictions(path: Path) -> pd.DataFrame:
    """The ``split == "test"`` rows of ``predictions.parquet``."""
    if not Path(path).is_file():
        raise EvaluationError(f"{path} not found: run `osteo train finetune` first")
    pred = pd.read_parquet(path)
    test = pred[pred["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise EvaluationError(f"{path} holds no test predictions: rebuild the splits with test patients")
    return test


def vertebra_table(pred: pd.DataFrame, test_frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """``pool_uri`` (absolute) + ``device_vendor``, ``contrast`` and the descriptor columns
    (:data:`features.roi.DESCRIPTOR_CHOICES` present in the frame; a champion reads those it was trained with)
    of each predicted test vertebra, in ``pred``'s row order: the champion is scored on the inputs the
    candidate was scored on.

    Raises:
        EvaluationError: a predicted vertebra is not in the current test frame (the data changed since training).
    """
    frame = test_frame.drop_duplicates("vertebra_id").set_index("vertebra_id")
    missing = ~pred["vertebra_id"].isin(frame.index)
    if missing.any():
        raise EvaluationError(f"{int(missing.sum())} test vertebrae of predictions.parquet are not in the current "
                              "test frame: the data changed since training; retrain (`osteo train finetune`)")
    rows = frame.loc[pred["vertebra_id"]]
    vendor = rows["device_vendor"] if "device_vendor" in rows.columns else pd.Series(None, index=rows.index)
    from features.roi import DESCRIPTOR_CHOICES
    extra = {c: rows[c].to_numpy() for c in ("contrast", *DESCRIPTOR_CHOICES) if c in rows.columns}
    return pd.DataFrame({"pool_uri": [str((Path(root) / p).resolve()) for p in rows["pool_path"]],
                         "device_vendor": vendor.to_numpy(), **extra}, index=pred.index)


def artifact_location(model_uri: str, tracking_uri: str) -> str:
    """Where the files of ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or ``models:/m-<id>`` live.

    Resolved with a client on ``tracking_uri``: MLflow itself resolves ``models:/`` URIs through the
    process-global registry URI, which need not be this project's database.
    """
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return model_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = model_uri[len("models:/"):].strip("/")
    if ref.startswith("m-"):
        return client.get_logged_model(ref).artifact_location
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_download_uri(name, client.get_model_version_by_alias(name, alias).version)
    name, version = ref.rsplit("/", 1)
    return client.get_model_version_download_uri(name, version)


def champion_predictions(pred: pd.DataFrame, table: pd.DataFrame, model_uri: str,
                         tracking_uri: str) -> tuple[pd.DataFrame, float]:
    """Score ``table`` with the champion's logged pyfunc; ``pred`` with the champion's scores, and its threshold."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="osteo-champion-") as tmp:
        local = download_artifacts(artifact_uri=artifact_location(model_uri, tracking_uri), dst_path=tmp,
                                   tracking_uri=tracking_uri)
        model = mlflow.pyfunc.load_model(local)
        out = model.predict(table)
    threshold = getattr(model.unwrap_python_model(), "threshold", None)
    if threshold is None:
        raise EvaluationError(f"{model_uri} is not an osteo ScreeningPyfunc (no stored threshold): register "
                              "models logged by `osteo train finetune` only")
    return pred.assign(score=out["score"].to_numpy(), bmd_pred=out["bmd_g_cm2"].to_numpy()), float(threshold)


def _fresh(folder: Path) -> Path:
    """Empty a folder this stage owns (stale plots of a scope that no longer exists must not linger)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _paired_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``vs_champion.<scope>.<metric>_diff`` / ``_p_perm`` (paired permutation p-value) for MLflow."""
    out: dict[str, float] = {}
    for scope, block in (metrics.get("vs_champion") or {}).items():
        for k, v in ((block or {}).get("patient") or {}).items() if isinstance(block, Mapping) else ():
            if k != "mcnemar":
                out.update({f"vs_champion.{scope}.{k}_diff": v.get("diff"), f"vs_champion.{scope}.{k}_p_perm": v.get("p_perm")})
    return {k: v for k, v in out.items() if v is not None}


def run_evaluate_stage(ecfg: EvaluateConfig, tcfg: TrackingConfig, data: DataPaths, models_dir: Path,
                       metrics_dir: Path, report_dir: Path, champion: tuple[str, str] | None = None,
                       tracking: bool = True) -> dict[str, Any]:
    """Evaluate the candidate on the test split, compare it with the champion, write and log the results.

    Args:
        ecfg: the ``evaluate:`` section.
        tcfg: the ``tracking:`` section (the champion's model URI resolves against it).
        data: the training inputs (the champion is re-scored on the same test vertebrae).
        models_dir: the training outputs (``paths.models``).
        metrics_dir: DVC metrics folder (``paths.metrics``): ``evaluate.json`` and ``plots/``.
        report_dir: the human-readable report folder (``<paths.reports>/evaluation``).
        champion: ``(version, model URI)`` of the registry's champion, or None.
        tracking: log a child run ``evaluate`` under the training parent run.

    Returns:
        ``{"per_site": site_table rows, "threshold", "champion_version", "n_patients_common",
        "evaluate_json", "metrics_file", "report", "plots", "run_id", "parent_run_id"}``.

    Raises:
        EvaluationError: missing training outputs, no stored threshold, no test rows, or test
            vertebrae that the current data no longer has.
    """
    from osteo_model.frames import assemble_frames

    cand = Candidate.read(models_dir)
    threshold = stored_threshold(cand.bundle)
    pred = read_test_predictions(Path(models_dir) / "predictions.parquet")
    champ_pred, champ_t = None, None
    if champion is not None:
        frames = assemble_frames(data)
        champ_pred, champ_t = champion_predictions(pred, vertebra_table(pred, frames.test, frames.root),
                                                   champion[1], tcfg.active_uri)
    metrics = E.evaluate_predictions(pred, ecfg, threshold, champ_pred, champ_t)
    if champion is not None:
        metrics["vs_champion"]["champion_version"] = champion[0]

    metrics_dir, report_dir = Path(metrics_dir), Path(report_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    plots = _fresh(metrics_dir / "plots")
    report.write_evaluation(metrics, pred, _fresh(report_dir), ecfg.reliability_bins, plots_dir=plots)
    full = report_dir / "metrics.json"
    record = {**E.headline_metrics(metrics), "n_test_vertebrae": int(len(pred)),
              "champion_version": None if champion is None else champion[0],
              "candidate": {"method": cand.method, "run_id": cand.run_id, "model_uri": cand.model_uri},
              "metrics_file": str(full), "metrics_sha256": hashlib.sha256(full.read_bytes()).hexdigest(),
              "report": str(report_dir / "report.html")}
    evaluate_json = metrics_dir / "evaluate.json"
    evaluate_json.write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")

    tracker = Tracker(tcfg, enabled=tracking and cand.run_id is not None)
    with tracker.parent(cand.method, {}, {}, run_id=cand.run_id):
        with tracker.child("evaluate", {"champion_version": str(record["champion_version"] or "none")}) as run_id:
            tracker.log_metrics({"threshold": threshold, **E.scalar_metrics(metrics, "test"),
                                 **_paired_scalars(metrics)})
            tracker.log_artifact(evaluate_json, "evaluation")
            tracker.log_artifacts(report_dir, "evaluation/report")
            tracker.log_artifacts(plots, "evaluation/plots")
    comp = metrics.get("vs_champion") or {}
    return {"per_site": E.site_table(metrics), "threshold": threshold, "champion_version": record["champion_version"],
            "n_patients_common": comp.get("n_patients_common"), "n_test_patients": int(pred["patient_id"].nunique()),
            "evaluate_json": str(evaluate_json), "metrics_file": str(full), "report": record["report"],
            "plots": str(plots), "run_id": run_id, "parent_run_id": cand.run_id}
