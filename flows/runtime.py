"""Prefect runtime settings from params, applied before Prefect is imported.

Call :func:`configure_prefect` first, then import the flow modules: Prefect
reads its settings from the environment when it is imported. Values already
set in the environment win (a team pointing ``PREFECT_API_URL`` at its server
keeps it); by default flows run in Prefect's embedded local mode with their
state under ``flows.prefect_home``. The embedded (ephemeral) API server gets
``flows.ephemeral_startup_timeout_s`` to start: Prefect's 20 s default is too
short on a loaded machine ("Timed out while attempting to connect to ephemeral
Prefect API server").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping


def configure_prefect(params: Mapping[str, Any]) -> dict[str, str]:
    """Set Prefect's environment defaults from the ``flows:`` section; returns what was applied."""
    fl = params.get("flows", {}) or {}
    home = Path(fl.get("prefect_home", ".prefect")).resolve()
    wanted = {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),   # persisted task results
        "PREFECT_LOGGING_LEVEL": str(fl.get("log_level", "WARNING")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",   # DVC keeps the results; tasks return small summaries
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(int(fl.get("ephemeral_startup_timeout_s", 120))),
    }
    applied = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
