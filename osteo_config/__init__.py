"""The configuration edge: the one leaf package that reads ``params.yaml``.

It imports no project package. Entry points (CLI commands, DVC stages, Prefect
tasks) call :func:`osteo_config.load_config` once; library packages receive the
typed, frozen section configs it returns (and explicit paths / URIs), never the
merged dictionary.
"""
from osteo_config.params import (DEFAULT_PARAMS, DEFAULT_TRACKING_URI, TRACKING_PROFILES, ParamsError, deep_merge,
                                 load_params, params_hash, resolve_tracking_uri)

__all__ = ["DEFAULT_PARAMS", "DEFAULT_TRACKING_URI", "TRACKING_PROFILES", "ParamsError", "deep_merge",
           "load_params", "params_hash", "resolve_tracking_uri"]
