"""The ``compute:`` section: where per-study work runs (this machine, or an existing Dask cluster).

Read by ``osteo ingest`` / ``osteo texture`` (their per-item work, :mod:`features.parallel`) and by
``osteo screen`` (the flow's DaskTaskRunner). Not a DVC stage parameter: it changes where the work
runs, never what it computes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from osteo_config.errors import ConfigError


class ComputeConfigError(ConfigError):
    """The ``compute:`` section of params.yaml is malformed (the message names the key and the fix)."""


@dataclass(frozen=True)
class ComputeConfig:
    """Executor settings (units and ranges are commented in params.yaml)."""

    dask_address: str | None = None       # tcp://HOST:8786 of a running Dask scheduler; None = this machine
    local_workers: int = 2                # worker processes of the local Dask cluster `osteo screen` starts
    connect_timeout_s: float = 30.0       # seconds to wait for the scheduler at dask_address

    def __post_init__(self) -> None:
        if self.dask_address is not None and "://" not in self.dask_address:
            raise ComputeConfigError(f"compute.dask_address={self.dask_address!r} needs a scheme, e.g. "
                                     f"tcp://host:8786 (or null to run on this machine): fix params.yaml")
        if self.local_workers < 1:
            raise ComputeConfigError(f"compute.local_workers={self.local_workers} must be >= 1: fix params.yaml")
        if self.connect_timeout_s <= 0:
            raise ComputeConfigError(f"compute.connect_timeout_s={self.connect_timeout_s} must be > 0: fix params.yaml")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ComputeConfig":
        sec = dict(params.get("compute") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(sec) - known)
        if unknown:
            raise ComputeConfigError(f"compute: unknown keys {unknown}; valid keys are {sorted(known)}")
        address = sec.get("dask_address")
        return cls(dask_address=str(address) if address else None,
                   local_workers=int(sec.get("local_workers", cls.local_workers)),
                   connect_timeout_s=float(sec.get("connect_timeout_s", cls.connect_timeout_s)))
