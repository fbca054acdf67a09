"""Registry test fixtures: a migrated MLflow SQLite DB (built once, copied per test) and a tiny pyfunc model."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pandas as pd
import pytest

from registry.gates import CalibrationRule, DropRule, GateRule, GatesConfig, SubgroupRule


def tiny_model_class():
    import mlflow.pyfunc

    class Tiny(mlflow.pyfunc.PythonModel):
        """Scores a vertebra from its L1 HU: a logistic map, enough to be a loadable model."""

        def __init__(self, offset: float = 0.0) -> None:
            self.offset = offset

        def predict(self, context, model_input: pd.DataFrame, params=None):
            return 1.0 / (1.0 + (2.718281828 ** ((model_input["hu"] - 130.0 - self.offset) / 20.0)))

    return Tiny


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An empty MLflow tracking DB with the schema migrated (migrations take seconds: do them once)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


class Tracking:
    """A per-test tracking URI, an experiment with artifacts under tmp_path, and a model logger."""

    def __init__(self, uri: str, artifacts: Path) -> None:
        from mlflow import MlflowClient

        self.uri, self.artifacts = uri, artifacts
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self.client.create_experiment(f"models-{uuid.uuid4().hex[:6]}",
                                                           artifact_location=artifacts.as_uri())

    def log_model(self, offset: float = 0.0) -> str:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(experiment_id=self.experiment_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=tiny_model_class()(offset),
                                           input_example=pd.DataFrame({"hu": [100.0, 180.0]}),
                                           pip_requirements=["mlflow"])
        return info.model_uri


@pytest.fixture
def tracking(template_db, tmp_path) -> Tracking:
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db, db)
    return Tracking(f"sqlite:///{db}", tmp_path / "artifacts")


LINEAGE = {"data_version": "dvc:abc123", "split_hash": "f00d", "params_hash": "1234abcd"}


@pytest.fixture
def gates_cfg() -> GatesConfig:
    return GatesConfig(
        internal_sites=("A", "B", "C"), external_sites=("D",),
        rules=(GateRule("site", "patient", "sen", min=60.0), GateRule("external", "patient", "f1", min=50.0),
               GateRule("pooled", "vertebra", "auroc", min=0.7)),
        max_drop=(DropRule("site", "patient", "f1", max=5.0),),
        subgroup_sensitivity=SubgroupRule(("sex",), min=50.0, min_positives=3),
        calibration=CalibrationRule("pooled", "vertebra", (0.5, 2.0)))


def fake_metrics(sen: float = 80.0, f1: float = 70.0, auroc: float = 0.9, slope: float = 1.0,
                 half_width: float = 0.0, n_pos: int = 20, n_patients: int = 50, **site_overrides: dict) -> dict:
    """A metrics dict in the evaluate_predictions layout with chosen values.

    Every metric gets a CI ``<k>_lo`` / ``<k>_hi`` of +- ``half_width`` around its (possibly
    overridden) value unless the override sets the ends; every scope counts ``n_pos``
    osteoporotic of ``n_patients`` patients.
    """
    def block(values: dict) -> dict:
        out = dict(values)
        for k, v in values.items():
            if k.endswith(("_lo", "_hi")) or k in ("n_pos", "n_patients", "n") or v is None:
                continue
            out.setdefault(f"{k}_lo", v - half_width)
            out.setdefault(f"{k}_hi", v + half_width)
        out.setdefault("n_pos", n_pos)
        out.setdefault("n_patients", n_patients)
        out.setdefault("n", out["n_patients"])
        return out

    m: dict = {}
    for s in "ABCD":
        pat = {"sen": sen, "spe": 80.0, "f1": f1, "acc": 80.0, "auroc": auroc}
        pat.update(site_overrides.get(s, {}))
        m[f"site_{s}"] = {"patient": block(pat), "vertebra": block(dict(pat, cal_slope=slope))}
    for scope in ("internal", "external", "pooled"):
        m[scope] = {"patient": block({"sen": sen, "f1": f1, "auroc": auroc}),
                    "vertebra": block({"sen": sen, "f1": f1, "auroc": auroc, "cal_slope": slope})}
    m["subgroups"] = {"sex": {"F": {"n": 30, "n_pos": 10, "sen": sen}, "M": {"n": 20, "n_pos": 5, "sen": sen}}}
    return m


def with_paired(candidate: dict, champion: dict | None, champion_version: str | None,
                half_width: float = 0.0) -> dict:
    """``candidate`` plus ``vs_champion`` as ``osteo evaluate`` writes it: candidate - champion per scope
    and patient-level metric (both scored on the same patients), CI +- ``half_width``."""
    if champion is None:
        return candidate
    comp: dict = {"champion_version": champion_version}
    for scope, levels in candidate.items():
        if not scope.startswith(("site_", "internal", "external", "pooled")):
            continue
        paired = {}
        for k, v in levels["patient"].items():
            c = (champion.get(scope) or {}).get("patient", {}).get(k)
            if k.endswith(("_lo", "_hi")) or k.startswith("n") or v is None or c is None:
                continue
            paired[k] = {"diff": v - c, "lo": v - c - half_width, "hi": v - c + half_width, "p": 0.5}
        comp[scope] = {"patient": paired}
    return {**candidate, "vs_champion": comp}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (PostgreSQL backend, proxied artifacts, basic auth where installed) for the
    session; its client credentials are in the environment meanwhile (subprocesses inherit them)."""
    import os

    from osteo_testing.mlflow_server import ServiceUnavailable, mlflow_server as start

    try:
        with start(tmp_path_factory.mktemp("mlflow-server")) as server:
            saved = {k: os.environ.get(k) for k in server.client_env()}
            os.environ.update(server.client_env())
            try:
                yield server
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def registry_store():
    """A fresh PostgreSQL database as the registry store (``registry.lock_uri``), dropped afterwards."""
    from osteo_testing.mlflow_server import ServiceUnavailable, temporary_database

    try:
        with temporary_database("osteo_registry") as uri:
            yield uri
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
