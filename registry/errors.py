"""Typed errors of the registry package: each message says what to do next."""
from __future__ import annotations

from osteo_config.registry import RegistryConfigError  # noqa: F401  (raised by the config package)


class RegistryError(Exception):
    """Base class of every error raised by :mod:`registry`."""


class CandidateTagsError(RegistryError, ValueError):
    """A candidate lacks a required lineage tag (data version, split hash, params hash)."""


class RegistryLockError(RegistryError, TimeoutError):
    """The promotion lock was not acquired in time (another promotion or rollback holds it)."""


class NoPreviousChampionError(RegistryError):
    """A rollback was asked for but no version carries the ``previous-champion`` alias."""


class AuditLogError(RegistryError):
    """The append-only audit log is unreadable or its hash chain is broken."""


class ArtifactDigestError(RegistryError):
    """A registered version's artifacts differ from the digest recorded at registration."""

    def __init__(self, name: str, version: str, recorded: str, found: str) -> None:
        self.name, self.version, self.recorded, self.found = name, version, recorded, found
        super().__init__(
            f"{name} v{version}: artifact sha256 {found[:16]}... differs from {recorded[:16]}... recorded at "
            "registration; the model files changed after registration - register the new files as a new version"
        )


class EvaluationMissingError(RegistryError):
    """No complete evaluation of the candidate (``evaluate.json`` or its metrics file is missing)."""


class StaleEvaluationError(RegistryError):
    """The evaluation on disk belongs to another candidate, or its metrics file changed after it was written."""


class AuditKeyError(RegistryError):
    """No usable HMAC key for the audit chain (missing, short, readable by others, or the demo key off SQLite)."""


class PendingIntentError(RegistryError):
    """A promotion was cut short (an ``intent`` without its completion): run ``osteo registry repair`` first."""


class ApprovalError(RegistryError):
    """An approval or rejection cannot be recorded (no approver named, nothing awaiting approval, stale gates)."""
