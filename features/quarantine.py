"""Quarantine records: every item that ingestion refused, with the reason.

``quarantine.parquet`` (``docs/data_contract.md`` §2) has one row per refused
item: ``item`` (pseudonymous id), ``kind`` (``study`` | ``vertebra`` | ``dxa``),
``reason`` (the error class name), ``detail`` (the error message: no PHI),
``stage`` (where it failed: read, geometry, intensity, labels, roi, patients, dxa).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import pandas as pd

from features.errors import IngestError

KINDS = ("study", "vertebra", "dxa")
COLUMNS = ("item", "kind", "reason", "detail", "stage")


@dataclass(frozen=True)
class QuarantineRecord:
    """One refused item."""

    item: str
    kind: str
    reason: str
    detail: str
    stage: str

    @classmethod
    def from_error(cls, err: IngestError, kind: str) -> "QuarantineRecord":
        """Record for a typed ingestion error."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} not in {KINDS}")
        return cls(item=err.item, kind=kind, reason=type(err).__name__, detail=str(err), stage=err.stage)


def to_frame(records: list[QuarantineRecord]) -> pd.DataFrame:
    """Records as the contract's table, sorted (kind, item, reason, detail) for reproducibility."""
    df = pd.DataFrame([asdict(r) for r in records], columns=list(COLUMNS)).astype(str)
    return df.sort_values(list(COLUMNS), kind="stable").reset_index(drop=True)


def counts_by_reason(records: list[QuarantineRecord], kind: str) -> dict[str, int]:
    """``{reason: count}`` of one kind, sorted by reason."""
    c = Counter(r.reason for r in records if r.kind == kind)
    return dict(sorted(c.items()))
