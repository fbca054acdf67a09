"""Reading the raw export's CSV tables (``docs/data_contract.md`` §1).

Every column is read as text (MRNs and accession numbers keep their leading
zeros); values are parsed and validated later, item by item, so that a bad
value quarantines one row instead of failing the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.errors import RawExportError

PATIENT_COLUMNS = ("mrn", "patient_name", "birth_date", "sex", "site")
CT_COLUMNS = ("mrn", "site", "scanner", "accession_number", "study_instance_uid", "study_date", "contrast",
              "ct_path", "ct_format", "mask_path", "mask_format")
DXA_COLUMNS = ("mrn", "patient_name", "site", "device_vendor", "device_model", "exam_date", "region",
               "bmd_g_cm2", "t_score", "accession_number")


@dataclass(frozen=True)
class RawExport:
    """The three raw tables, all columns as ``str`` ("" for empty cells)."""

    patients: pd.DataFrame
    ct_studies: pd.DataFrame
    dxa: pd.DataFrame


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise RawExportError(f"{path.name} is missing from the raw export directory: "
                             f"run `osteo cohort` or place your export there (see docs/data_contract.md §1)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:
        raise RawExportError(f"{path.name} is not a readable CSV ({type(exc).__name__}): re-export it") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RawExportError(f"{path.name} lacks columns {missing}: see docs/data_contract.md §1")
    return df.reset_index(drop=True)


def read_raw_export(raw_dir: Path, require_dxa: bool = True) -> RawExport:
    """Read ``patients.csv``, ``ct_studies.csv`` and ``dxa.csv`` from ``raw_dir``.

    Args:
        require_dxa: training needs ``dxa.csv``; screening new studies (``osteo screen``) passes False,
            and an export without it reads as one with no DXA row.

    Raises:
        RawExportError: a table is missing, unreadable, or lacks a contract column.
    """
    raw_dir = Path(raw_dir)
    dxa = (_read(raw_dir / "dxa.csv", DXA_COLUMNS) if require_dxa or (raw_dir / "dxa.csv").is_file()
           else pd.DataFrame({c: pd.Series(dtype=str) for c in DXA_COLUMNS}))
    return RawExport(patients=_read(raw_dir / "patients.csv", PATIENT_COLUMNS),
                     ct_studies=_read(raw_dir / "ct_studies.csv", CT_COLUMNS), dxa=dxa)


def parse_date(text: str):
    """``YYYY-MM-DD`` -> ``datetime.date``, or None when unparsable."""
    try:
        return pd.Timestamp(str(text).strip()).date() if str(text).strip() else None
    except (ValueError, TypeError):
        return None
