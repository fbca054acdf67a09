"""The registry against a real MLflow tracking server: http://, basic auth, proxied artifacts, PostgreSQL.

The production set-up of issue 13: clients reach MLflow only over HTTP (no database
credentials), artifacts go through the server into its own store, and the promotion lock,
keyed audit log and intents live in a registry store of their own (``registry.lock_uri``, a
PostgreSQL database here). Skipped, with the reason, where PostgreSQL is unreachable.
"""
from __future__ import annotations

import secrets
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from registry import audit
from registry.config import RegistryConfig
from registry.errors import PendingIntentError, RegistryError
from registry.gates import evaluate_gates
from registry.lock import registry_lock
from registry.registry import (CHALLENGER, CHAMPION, PREVIOUS, aliases, champion_metrics, promote, register_candidate,
                               repair, rollback)

from .conftest import LINEAGE, Tracking, fake_metrics, with_paired
from .test_crash import EXIT_CRASHED, assert_consistent, crash


pytestmark = [pytest.mark.services, pytest.mark.slow]    # a server start: ~30-90 s on 2 loaded cores
NAME = "osteo-crash"                                     # the crash worker's model name


class ServerTracking(Tracking):
    """An experiment on the server with the server's default (proxied) artifact root."""

    def __init__(self, url: str) -> None:                # noqa: D107 - no artifact_location: the server picks it
        from mlflow import MlflowClient

        self.uri, self.artifacts = url, None
        self.client = MlflowClient(tracking_uri=url, registry_uri=url)
        self.experiment_id = self.client.create_experiment(f"models-{uuid.uuid4().hex[:6]}")


def test_register_promote_rollback_through_an_authenticated_server(mlflow_server, registry_store, tmp_path,
                                                                   gates_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)                          # nothing may land in the client's working directory
    key = secrets.token_bytes(32)
    tracking = ServerTracking(mlflow_server.url)
    kw = {"tracking_uri": mlflow_server.url, "store_uri": registry_store, "audit_key": key}
    # a server URI alone has nowhere for the lock and the log
    with pytest.raises(RegistryError, match="store_uri"):
        rollback(NAME, "x", "y", tracking_uri=mlflow_server.url)
    with pytest.raises(Exception, match="lock_uri"):
        RegistryConfig(uri=mlflow_server.url)

    r1 = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), NAME, LINEAGE, fake_metrics(), r1, actor="ci", **kw)
    source = tracking.client.get_model_version(NAME, v1).source
    assert not source.startswith(("file:", "/")), source                     # proxied, not the client's disk
    served = [p for p in Path(mlflow_server.artifacts).rglob("MLmodel")]
    assert served, "the model files are in the server's artifact store"
    assert not list(tmp_path.rglob("MLmodel")) and not (tmp_path / "mlartifacts").exists()
    assert promote(NAME, v1, r1, "alice", "first", gates=gates_cfg, **kw).promoted
    cv, cm = champion_metrics(NAME, mlflow_server.url, registry_store)
    assert cv == v1 and cm == fake_metrics()
    m2 = fake_metrics(f1=72.0)
    r2 = evaluate_gates(with_paired(m2, cm, cv), cm, gates_cfg, cv)
    v2 = register_candidate(tracking.log_model(1.0), NAME, LINEAGE, m2, r2, actor="ci", **kw)
    assert promote(NAME, v2, r2, "bob", "better", gates=gates_cfg, **kw).promoted
    assert aliases(NAME, mlflow_server.url) == {CHAMPION: v2, PREVIOUS: v1}
    assert rollback(NAME, "carol", "drift alarm", **kw).version == v1
    assert aliases(NAME, mlflow_server.url) == {CHAMPION: v1}
    events = assert_consistent(tracking, key, registry_store)
    assert [e.event for e in events if e.event != "intent"] == ["register", "promote", "register", "promote",
                                                                  "rollback"]
    # the log is in the registry store, not in MLflow's database
    assert audit.read_log(mlflow_server.backend_uri) == []
    with registry_lock(registry_store, 5):                                   # the advisory lock of the store
        with pytest.raises(Exception, match="advisory lock"):
            with registry_lock(registry_store, 0.3):
                pass


def test_basic_auth_refuses_a_wrong_password(mlflow_server):
    if not mlflow_server.auth:
        pytest.skip("MLflow's basic-auth app needs Flask-WTF (pip install flask-wtf): server started without auth")
    request = urllib.request.Request(f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 401
    import base64

    token = base64.b64encode(f"{mlflow_server.username}:{mlflow_server.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200


def test_promotion_killed_midway_on_the_server_is_repaired(mlflow_server, registry_store, tmp_path, gates_cfg):
    key = secrets.token_bytes(32)
    tracking = ServerTracking(mlflow_server.url)
    kw = {"tracking_uri": mlflow_server.url, "store_uri": registry_store, "audit_key": key}
    name_kw = {"gates": gates_cfg, **kw}
    # a model name of its own on the shared server: the crash worker uses NAME, so clear it first
    from mlflow.exceptions import MlflowException

    try:
        tracking.client.delete_registered_model(NAME)
    except MlflowException:
        pass
    r1 = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), NAME, LINEAGE, fake_metrics(), r1, **kw)
    assert promote(NAME, v1, r1, "setup", "first", **name_kw).promoted
    cv, cm = champion_metrics(NAME, mlflow_server.url, registry_store)
    m2 = fake_metrics(f1=72.0)
    r2 = evaluate_gates(with_paired(m2, cm, cv), cm, gates_cfg, cv)
    v2 = register_candidate(tracking.log_model(1.0), NAME, LINEAGE, m2, r2, **kw)
    done = crash(tracking, gates_cfg, tmp_path, key, "promote", v2, r2, crash_after=1, store_uri=registry_store,
                 env=mlflow_server.client_env())
    assert done.returncode == EXIT_CRASHED, done.stderr[-2000:]
    assert aliases(NAME, mlflow_server.url) == {CHAMPION: v1, PREVIOUS: v1, CHALLENGER: v2}
    with pytest.raises(PendingIntentError):
        promote(NAME, v2, r2, "bob", "retry", **name_kw)
    assert [e.event for e in repair(NAME, "oncall", **kw)] == ["promote"]
    assert aliases(NAME, mlflow_server.url) == {CHAMPION: v2, PREVIOUS: v1}
    assert_consistent(tracking, key, registry_store)
