"""The configuration edge: the one leaf package that reads ``params.yaml``.

It imports no project package. Entry points (CLI commands, DVC stages, Prefect
tasks) call :func:`load_config` once; library packages receive the typed,
frozen section configs it returns (``cfg.ingest``, ``cfg.model``, ...) and
explicit paths / URIs, never the merged dictionary.
"""
from osteo_config.errors import ConfigError
from osteo_config.experiment import DataPaths, ExperimentSpec
from osteo_config.params import DEFAULT_PARAMS, ParamsError, deep_merge, load_params, params_hash
from osteo_config.root import Config, Paths, flatten, load_config
from osteo_config.tracking import DEFAULT_TRACKING_URI, TRACKING_PROFILES, TrackingConfig, resolve_tracking_uri

__all__ = ["Config", "ConfigError", "DEFAULT_PARAMS", "DEFAULT_TRACKING_URI", "DataPaths", "ExperimentSpec",
           "ParamsError", "Paths", "TRACKING_PROFILES", "TrackingConfig", "deep_merge", "flatten", "load_config",
           "load_params", "params_hash", "resolve_tracking_uri"]
