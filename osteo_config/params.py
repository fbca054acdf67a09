"""Loading ``params.yaml``: the single configuration source.

``params.yaml`` holds the base values (the ``demo`` profile) and a ``profiles``
mapping of overlays (``tiny``, ``paper``, ...). A profile is picked by, in
order: an explicit argument, the ``OSTEO_PROFILE`` environment variable, the
file's top-level ``profile`` key. Overlays merge recursively: mappings merge
key by key, every other value (lists included) replaces the base value.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from osteo_config.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ConfigError):
    """params.yaml is missing, malformed or names an unknown profile."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in (mappings recursively, the rest replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` and apply the selected profile overlay.

    Args:
        path: the params file.
        profile: profile name; ``None`` uses ``$OSTEO_PROFILE`` or the file's ``profile`` key.

    Returns:
        The merged parameters, with ``profile`` set to the profile used.

    Raises:
        ParamsError: file missing/unparsable or the profile is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    profiles = raw.pop("profiles", {}) or {}
    name = profile or os.environ.get("OSTEO_PROFILE") or raw.get("profile", "demo")
    if name not in profiles and name != "demo":
        raise ParamsError(f"unknown profile {name!r}: choose one of {sorted(['demo', *profiles])}")
    merged = deep_merge(raw, profiles.get(name, {}) or {})
    merged["profile"] = name
    return merged


def params_hash(params: Mapping[str, Any], sections: tuple[str, ...] | None = None) -> str:
    """A stable SHA-256 (hex, 16 chars) of the given sections (all when ``None``)."""
    picked = {k: params[k] for k in sorted(params) if sections is None or k in sections}
    blob = json.dumps(picked, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


