"""The ``model:`` / ``train:`` configuration lives in the leaf package :mod:`osteo_config.model`; re-exported here."""
from osteo_config.model import (  # noqa: F401
    ModelConfigError, BackboneConfig, device_index, SwAVConfig, MoEConfig, CompanionConfig, BaselineConfig, ModelConfig, TrainConfig, POOL_CHANNELS,
)
