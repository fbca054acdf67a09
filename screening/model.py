"""The model a batch is screened with: resolved from the registry, loaded once, checked against this run.

``models:/<registry.model_name>@champion`` by default; any MLflow model URI otherwise. The registered
pyfunc carries what screening needs besides its weights (:mod:`osteo_model.references`): the stored
operating threshold, the split-conformal BMD interval (``conformal.json``), the training drift summary
(``drift_reference.json``) and the I/O contract (model metadata ``io_contract``).

Train/serve skew (:func:`check_skew`): the contract records how the training pools were made (ingest
grid ``spacing_mm`` / ``roi_shape``, ``hu_window``, the GLCM settings ``texture`` and the engine version
``texture_engine``, the HU calibration versions ``cal_version``). Screening produces its pools with the
active configuration; any difference, or a contract that does not record one of them, is
:class:`TrainServeSkewError` (a model cannot be trusted on inputs it never saw).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from screening.errors import ModelNotFoundError, TrainServeSkewError

SKEW_KEYS = ("spacing_mm", "roi_shape", "hu_window", "texture", "texture_engine")


@dataclass
class ServingModel:
    """A loaded model version and its serving references."""

    uri: str
    name: str
    version: str                 # registered version, else the logged model / run id
    pyfunc: Any                  # mlflow.pyfunc.PyFuncModel around osteo_model.serving.ScreeningPyfunc
    contract: dict[str, Any]
    threshold: float
    interval: Any | None         # osteo_model.conformal.ConformalInterval
    drift: Any | None            # osteo_model.drift.DriftReference


def resolve(model_name: str, model_uri: str | None, tracking_uri: str) -> tuple[str, str]:
    """(URI, version label) of ``model_uri`` or, when None, of ``models:/<model_name>@champion``.

    Raises:
        ModelNotFoundError: the registered model, version or alias does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = model_uri or f"models:/{model_name}@champion"
    if not uri.startswith("models:/"):
        return uri, uri.rstrip("/").split("/")[-2 if uri.endswith("/model") else -1]
    ref = uri[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if ref.startswith("m-"):
            client.get_logged_model(ref)
            return uri, ref
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return uri, str(client.get_model_version_by_alias(name, alias).version)
        name, version = ref.rsplit("/", 1)
        return uri, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        fix = ("promote a model first (`osteo evaluate`, then `osteo registry promote`) or pass --model-uri"
               if model_uri is None else "check the URI (`osteo registry status` lists versions and aliases)")
        raise ModelNotFoundError(f"{uri} does not resolve in {tracking_uri} ({exc.error_code}): {fix}") from None


def load(model_name: str, model_uri: str | None, tracking_uri: str, work_dir: Path) -> ServingModel:
    """Download and load the model (into ``work_dir``) with its contract, threshold, interval and drift reference."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    from osteo_model.conformal import ConformalInterval
    from osteo_model.drift import DriftReference
    from osteo_model.evaluate_stage import artifact_location
    from osteo_model.references import CONFORMAL_FILE, DRIFT_FILE

    uri, version = resolve(model_name, model_uri, tracking_uri)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    local = Path(download_artifacts(artifact_uri=artifact_location(uri, tracking_uri), dst_path=str(work_dir),
                                    tracking_uri=tracking_uri))
    meta = mlflow.models.Model.load(str(local))
    contract = dict((meta.metadata or {}).get("io_contract") or {})
    pyfunc = mlflow.pyfunc.load_model(str(local))
    threshold = getattr(pyfunc.unwrap_python_model(), "threshold", None)
    if threshold is None or not contract:
        raise ModelNotFoundError(f"{uri} is not an osteo screening pyfunc (no stored threshold or io_contract): "
                                 "register a model logged by `osteo train finetune`")

    def companion(name: str) -> dict | None:
        found = sorted(local.rglob(name))
        return json.loads(found[0].read_text()) if found else None

    conf, drift = companion(CONFORMAL_FILE), companion(DRIFT_FILE)
    name = uri[len("models:/"):].split("@")[0].split("/")[0] if uri.startswith("models:/") else model_name
    return ServingModel(uri=uri, name=name, version=version, pyfunc=pyfunc, contract=contract,
                        threshold=float(threshold), interval=ConformalInterval.from_dict(conf) if conf else None,
                        drift=DriftReference.from_dict(drift) if drift else None)


def _norm(v: Any) -> Any:
    """Contract values compared as plain JSON (tuples -> lists, ints and floats as floats)."""
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    return float(v)


def check_skew(contract: Mapping[str, Any], expected: Mapping[str, Any], cal_versions: Iterable[str] | None,
               uri: str = "the model") -> None:
    """Refuse a model whose training-time pool settings differ from this run's.

    Args:
        contract: the model's ``io_contract``.
        expected: this run's :meth:`osteo_config.Config.io_geometry`.
        cal_versions: the ``cal_version`` values of the batch's vertebrae (None: not known yet).

    Raises:
        TrainServeSkewError: naming every differing setting, the model's and this run's value.
    """
    diffs = []
    for key in SKEW_KEYS:
        if key not in contract:
            diffs.append(f"{key}: the model records none (this run: {_norm(expected.get(key))!r})")
        elif _norm(contract[key]) != _norm(expected.get(key)):
            diffs.append(f"{key}: model {_norm(contract[key])!r} vs this run {_norm(expected.get(key))!r}")
    if cal_versions is not None:
        batch = sorted(set(map(str, cal_versions)))
        trained = contract.get("cal_version")
        if trained is None:
            diffs.append(f"cal_version: the model records none (this batch: {batch})")
        elif set(batch) - set(map(str, trained)):
            diffs.append(f"cal_version: model trained on {sorted(map(str, trained))}, this batch has {batch}")
    if diffs:
        raise TrainServeSkewError(f"{uri} was trained on pools made differently (train/serve skew): "
                                  + "; ".join(diffs) + ". Screen with the params the model was trained with "
                                  "(same profile), or retrain and promote a model on the current settings")
