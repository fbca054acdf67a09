"""The ``cohort:`` configuration lives in the leaf package :mod:`osteo_config.cohort`; re-exported here."""
from osteo_config.cohort import *  # noqa: F401,F403
from osteo_config.cohort import (  # noqa: F401
    CohortConfigError, ScannerConfig, DxaDeviceConfig, SiteConfig, BoneConfig, CtPhysicsConfig, TimingConfig, CohortConfig, DXA_REGIONS, FAULT_KINDS, ORIENTATIONS,
)
