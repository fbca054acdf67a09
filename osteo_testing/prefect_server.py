"""One real Prefect API server for a whole test session (``prefect server start`` on 127.0.0.1).

Each in-process flow test used to start Prefect's embedded (ephemeral) server on its own, with whatever
``PREFECT_HOME`` and start-up timeout the first test of the process had left in ``os.environ``; on a busy
machine that start-up timed out. Here the server starts once, its own ``PREFECT_HOME`` in a session
folder, and the wait for ``/api/health`` is generous (a loaded 2-core CI machine), and a slow start is an
error naming the server's log, never a skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from osteo_testing.processes import free_port, stop

START_TIMEOUT_S = 600.0     # a busy 2-core machine (CI) can take minutes to migrate the database and start


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start ``prefect server start`` with ``PREFECT_HOME=home``; yields its API URL (``http://127.0.0.1:N/api``).

    Raises:
        RuntimeError: the server exited or was not healthy within ``timeout_s`` (its log is named).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_UI_ENABLED": "false"}
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-ui"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy on {url} after {timeout_s:.0f} s: see {log}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


@contextmanager
def use_prefect_server(url: str, home: Path) -> Iterator[None]:
    """Point this process's Prefect client at ``url`` (env for :func:`flows.runtime.configure_prefect` and
    for subprocesses, and Prefect's settings context if Prefect is already imported)."""
    keys = {"PREFECT_API_URL": url, "PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
