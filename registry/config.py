"""``RegistryConfig`` lives in the leaf package :mod:`osteo_config.registry`; re-exported here."""
from osteo_config.registry import RegistryConfig  # noqa: F401
