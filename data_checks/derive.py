"""Derived check columns: cross-row and file-system facts computed in pandas, fed to GE as columns.

Great Expectations checks one row (or one column) at a time. Facts that span
rows (how many splits a patient falls in, each site's row count, each WHO
class's share) or leave the table (does the texture file exist, does its
SHA-256 match) are computed here, pure and vectorised, into ``chk_*`` columns
that the suites then bound with ordinary expectations. The derived values are
counts, shares, day gaps and booleans: never an identifier.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from data_checks.config import ChecksConfig

DATE_COLUMNS: tuple[str, ...] = ("ct_date", "dxa_date")


def who_class_from_t_score(t_score: pd.Series, thresholds: tuple[float, float]) -> pd.Series:
    """WHO category from a T-score: 0 normal (T > -1), 1 osteopenia, 2 osteoporosis (T <= -2.5).

    The cut-offs follow METHOD.md §1 (normal > -1; osteopenia -1..-2.5), as ingestion does.

    Args:
        t_score: T-scores in SD; NaN stays NaN.
        thresholds: (osteopenia, osteoporosis) cut-offs, e.g. (-1.0, -2.5).

    Returns:
        Float series (NaN where the T-score is missing) of classes 0/1/2.
    """
    osteopenia, osteoporosis = thresholds
    t = pd.to_numeric(t_score, errors="coerce")
    cls = np.where(t <= osteoporosis, 2.0, np.where(t <= osteopenia, 1.0, 0.0))
    return pd.Series(np.where(t.isna(), np.nan, cls), index=t_score.index)


def is_utc_datetime(series: pd.Series) -> bool:
    """True when the column is tz-aware and in UTC (the contract's ``datetime64[ns, UTC]``, any unit)."""
    dtype = series.dtype
    return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"


def _npy_c_bytes(blob: bytes) -> bytes | memoryview | None:
    """The C-order bytes of the array an ``.npy`` file holds; None when it does not parse.

    A native, C-order array is stored verbatim after the header: its bytes are a view of the
    file's, with no array copy. Any other layout (Fortran order, byte-swapped, a header version
    without a public reader) is loaded and laid out in C order.
    """
    fh = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is not None:
            shape, fortran, dtype = read_header(fh)
            body = memoryview(blob)[fh.tell():]
            if (not fortran and dtype.isnative and not dtype.hasobject
                    and body.nbytes == int(np.prod(shape, dtype=np.int64)) * dtype.itemsize):
                return body
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError):
        return None
    return np.ascontiguousarray(array).tobytes()


def file_sha256_matches(path: Path, recorded: str) -> bool:
    """Whether ``recorded`` is the SHA-256 of the file's bytes or, for ``.npy``, of its array's bytes.

    The contract names texture files by "SHA-256 of the array bytes"; hashing the
    file bytes as well keeps the check valid for writers that hash the file. The array's
    bytes are read past the ``.npy`` header (:func:`_npy_c_bytes`): one pass over a pool, not
    a hash, a parse and a second hash (the demo's 5.2 GB of pools).
    """
    blob = path.read_bytes()
    if path.suffix == ".npy":
        array_bytes = _npy_c_bytes(blob)
        if array_bytes is not None and hashlib.sha256(array_bytes).hexdigest() == recorded:
            return True
    return hashlib.sha256(blob).hexdigest() == recorded


def pool_file_checks(df: pd.DataFrame, root: Path) -> tuple[pd.Series, pd.Series]:
    """Existence and hash agreement of each row's texture-map file (``pool_path`` under ``root``).

    Returns:
        (exists, hash_ok): booleans per row; ``hash_ok`` is None where the file is
        missing so that a missing file is reported once, by ``exists``.
    """
    exists, hash_ok = [], []
    for rel, recorded in zip(df["pool_path"], df["pool_sha256"]):
        if not isinstance(rel, str) or not rel:
            exists.append(False)
            hash_ok.append(None)
            continue
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        found = path.is_file()
        exists.append(found)
        if not found:
            hash_ok.append(None)
        elif not isinstance(recorded, str):
            hash_ok.append(False)  # a file with no recorded hash cannot be trusted
        else:
            hash_ok.append(file_sha256_matches(path, recorded))
    return (pd.Series(exists, index=df.index, dtype=bool),
            pd.Series(hash_ok, index=df.index, dtype=object))


def normalise_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Copy with pandas ``string`` columns as ``object`` (GE's pandas type check knows only the latter)."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def derive(table: str, df: pd.DataFrame, cfg: ChecksConfig) -> pd.DataFrame:
    """Return ``df`` (copied) with the ``chk_*`` columns its suite bounds.

    Derivations whose source columns are absent are skipped: the suite's
    expectation on the missing ``chk_*`` column then fails, so a schema break is
    never silently passed.

    Args:
        table: one of :data:`data_checks.config.TABLES`.
        df: the table as written by its stage.
        cfg: bounds and roots.

    Returns:
        A new frame: the original columns plus the derived ones.
    """
    out = normalise_dtypes(df)
    for col in DATE_COLUMNS:
        if col in out:
            out[f"chk_{col}_utc"] = is_utc_datetime(out[col])  # constant per table: the column's dtype
    if table in ("dxa", "training") and "t_score" in out:
        out["chk_who_class_expected"] = who_class_from_t_score(out["t_score"], cfg.who_thresholds)
    if table in ("texture", "training") and {"pool_path", "pool_sha256"} <= set(out.columns):
        out["chk_pool_exists"], out["chk_pool_hash_ok"] = pool_file_checks(out, cfg.artifact_root)
    if table != "training":
        return out
    if {"ct_date", "dxa_date"} <= set(out.columns):
        try:
            gap = (pd.to_datetime(out["ct_date"]) - pd.to_datetime(out["dxa_date"])).abs()
            out["chk_ct_dxa_days"] = gap.dt.total_seconds() / 86400.0  # |Δt| in days
        except (TypeError, ValueError):  # mixed tz-aware/naive: the UTC-dtype expectations report it
            pass
    if {"patient_id", "split"} <= set(out.columns):
        out["chk_patient_splits"] = out.groupby("patient_id")["split"].transform("nunique")
    if "site" in out:
        out["chk_site_rows"] = out.groupby("site", dropna=False)["site"].transform("size")
    if "who_class" in out and len(out):
        share = out["who_class"].value_counts(normalize=True, dropna=False)
        out["chk_who_class_share"] = out["who_class"].map(share).astype(float)
    return out
