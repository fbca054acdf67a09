"""A real MLflow tracking server for tests: PostgreSQL backend, proxied artifacts, basic auth.

The production set-up the registry must work against (issue 13): clients speak
``http://`` to ``mlflow server``, never to the database; artifacts go through the
server (``--serve-artifacts``) into its own artifact store, not the client's disk.

* :func:`temporary_database` creates a fresh PostgreSQL database (``osteo_test_<hex>``)
  on the admin URL ``$OSTEO_TEST_POSTGRES_ADMIN`` (default trust-auth ``postgres`` on
  127.0.0.1:5432) and drops it afterwards.
* :func:`mlflow_server` starts ``mlflow server`` on a free loopback port with that
  backend, ``--serve-artifacts`` into a temporary folder and ``--app-name basic-auth``
  where its extra (Flask-WTF) is installed, waits for ``/health`` (the machine may be
  loaded: up to ``startup_timeout_s``) and stops it afterwards.

Tests use the ``mlflow_server`` session fixture of ``tests/registry/conftest.py``;
where PostgreSQL is unreachable they skip with the reason.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from osteo_testing.processes import free_port

PG_ADMIN = os.environ.get("OSTEO_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_USER = "admin"
ADMIN_PASSWORD = "osteo-test-" + "a1" * 8          # test-only admin of a throw-away auth database


class ServiceUnavailable(RuntimeError):
    """A service the test needs is absent (the caller turns it into pytest.skip with this message)."""


@dataclass(frozen=True)
class MlflowServer:
    """A running server: its URL, backend database, artifact folder and (with auth) credentials."""

    url: str
    backend_uri: str
    artifacts: Path
    auth: bool
    username: str | None
    password: str | None
    log: Path

    def client_env(self) -> dict[str, str]:
        """Environment a client process needs (``MLFLOW_TRACKING_USERNAME/PASSWORD`` with auth)."""
        if not self.auth:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": str(self.username), "MLFLOW_TRACKING_PASSWORD": str(self.password)}


def _admin_connection():
    try:
        import psycopg2

        conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except Exception as exc:                                           # no server, no driver, no auth
        raise ServiceUnavailable(f"PostgreSQL not reachable at {PG_ADMIN} ({type(exc).__name__}: "
                                 f"{str(exc).strip()}); start it (trust auth, user postgres) or set "
                                 "OSTEO_TEST_POSTGRES_ADMIN") from exc
    conn.autocommit = True
    return conn


@contextmanager
def temporary_database(prefix: str = "osteo_test") -> Iterator[str]:
    """A fresh PostgreSQL database; yields its SQLAlchemy URL (psycopg2 driver); dropped afterwards."""
    admin = _admin_connection()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def basic_auth_available() -> bool:
    """MLflow's basic-auth app needs Flask-WTF (the ``mlflow[auth]`` extra)."""
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def mlflow_server(workdir: Path, *, auth: bool | None = None, startup_timeout_s: float = 120.0) -> Iterator[MlflowServer]:
    """Run ``mlflow server`` (PostgreSQL backend, proxied artifacts, basic auth where installed) for the body.

    Args:
        workdir: folder for the artifact store, the auth database and the server log.
        auth: force basic auth on/off; None = on where Flask-WTF is installed.
        startup_timeout_s: seconds to wait for ``/health``.

    Raises:
        ServiceUnavailable: PostgreSQL unreachable.
        RuntimeError: the server did not become healthy (its log tail is in the message).
    """
    auth = basic_auth_available() if auth is None else auth
    workdir = Path(workdir)
    artifacts = workdir / "server-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = workdir / "mlflow-server.log"
    with temporary_database("osteo_mlflow") as backend:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(artifacts),
               "--workers", "1"]
        if auth:
            ini = workdir / "basic_auth.ini"
            ini.write_text("[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
                           f"admin_username = {ADMIN_USER}\nadmin_password = {ADMIN_PASSWORD}\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                           # PBKDF2 check once per minute, not per request (seconds each on a loaded machine)
                           "auth_cache_ttl_seconds = 60\n")
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = uuid.uuid4().hex      # CSRF secret of this one server
            cmd += ["--app-name", "basic-auth"]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"mlflow server on {url} not healthy after "
                                       f"{startup_timeout_s:.0f} s (exit {proc.poll()}):\n{tail}")
                time.sleep(0.5)
            yield MlflowServer(url, backend, artifacts, auth, ADMIN_USER if auth else None,
                               ADMIN_PASSWORD if auth else None, log)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)                     # the server and its workers
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    shutil.rmtree(artifacts, ignore_errors=True)
