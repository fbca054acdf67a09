"""Typed configuration errors: each message names the params.yaml key and what to write there."""
from __future__ import annotations


class ConfigError(ValueError):
    """Base class: a section of params.yaml is missing, malformed or out of range."""
