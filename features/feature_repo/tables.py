"""Preparation step: contract tables -> Feast-ready parquet in ``<repo_dir>/data``.

Reads ``vertebrae.parquet`` + ``dxa.parquet`` (ingestion, data contract §2) and
``texture.parquet`` + ``radiomics.parquet`` (texture stage, §3) and writes

* ``data/ct_vertebra.parquet``: one row per CT vertebra, ``vertebra_id`` key,
  ``event_timestamp`` = CT date, list columns (shapes, spacing) as
  comma-separated strings (portable across online stores);
* ``data/dxa_label.parquet``: one row per (patient, level, DXA date) (the
  smallest ``dxa_id`` kept, :func:`features.pit.dedupe_dxa`),
  ``event_timestamp`` = DXA date and ``mirror_timestamp`` = m(DXA date);
* ``data/prepare_summary.json``: counts and the CT schema hash.

Used through :mod:`features.store` (``features.store.prepare_tables``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features import pit

CT_KEYS = ("vertebra_id", "patient_id", "level", "ct_date")
VERTEBRA_KEYS = ("patient_id", "study_id", "level")
REQUIRED_CT = ("patient_id", "study_id", "level", "site", "scanner", "contrast", "ct_date",
               "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95")
REQUIRED_DXA = ("patient_id", "dxa_id", "site", "device_vendor", "device_model", "dxa_date", "region", "level",
                "bmd_g_cm2", "t_score", "who_class")
REQUIRED_TEXTURE = ("pool_path", "pool_sha256", "pool_shape")
RESERVED = ("event_timestamp", "mirror_timestamp", "created", "created_timestamp")


class TableError(ValueError):
    """An input table is missing or lacks contract columns."""


@dataclass(frozen=True)
class PreparedTables:
    """The prepared tables (also on disk) and what the definitions need from them."""

    ct: pd.DataFrame
    dxa: pd.DataFrame
    dxa_duplicates_dropped: int
    ct_fields: tuple[tuple[str, str], ...]
    ct_schema_sha256: str


def vertebra_id(patient_id, study_id, level) -> str | pd.Series:
    """``"<patient_id>:<study_id>:<level>"``, the vertebra entity's single join key (scalars or Series)."""
    if isinstance(patient_id, pd.Series):
        return patient_id.astype(str) + ":" + pd.Series(study_id, index=patient_id.index).astype(str) + ":" \
            + pd.Series(level, index=patient_id.index).astype("int64").astype(str)
    return f"{patient_id}:{study_id}:{int(level)}"


def _read(path: Path, required: tuple[str, ...], producer: str) -> pd.DataFrame:
    if not path.is_file():
        raise TableError(f"{path} not found: run `{producer}` first")
    df = pd.read_parquet(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(f"{path} lacks contract columns {missing}: re-run `{producer}` (docs/data_contract.md)")
    return df


def _flatten(value) -> object:
    """Lists/arrays (shapes, spacing) -> "a,b,c"; everything else unchanged."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(str(v.item() if hasattr(v, "item") else v) for v in value)
    return value


def feast_type(series: pd.Series) -> str:
    """Feast type name for a prepared column (see definitions.FEAST_TYPES)."""
    dt = series.dtype
    if pd.api.types.is_bool_dtype(dt):
        return "Bool"
    if pd.api.types.is_integer_dtype(dt):
        return "Int64"
    if pd.api.types.is_float_dtype(dt):
        return "Float64"
    if pd.api.types.is_datetime64_any_dtype(dt):
        return "UnixTimestamp"
    return "String"


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            flat = out[c].map(_flatten)
            out[c] = flat.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        elif pd.api.types.is_integer_dtype(out[c].dtype) or pd.api.types.is_bool_dtype(out[c].dtype):
            out[c] = out[c].astype("int64") if not pd.api.types.is_bool_dtype(out[c].dtype) else out[c]
    return out


def prepare_ct(vertebrae: pd.DataFrame, texture: pd.DataFrame | None, radiomics: pd.DataFrame | None
               ) -> pd.DataFrame:
    """One Feast-ready row per vertebra: contract columns + texture reference + scalar radiomics."""
    ct = vertebrae.copy()
    ct["level"] = ct["level"].astype("int64")
    ct["ct_date"] = pit.to_utc(ct["ct_date"])
    for extra, name in ((texture, "texture.parquet"), (radiomics, "radiomics.parquet")):
        if extra is None:
            continue
        extra = extra.copy()
        extra["level"] = extra["level"].astype("int64")
        if extra.duplicated(list(VERTEBRA_KEYS)).any():
            raise TableError(f"{name} has several rows for one vertebra: re-run `osteo texture`")
        cols = [c for c in extra.columns if c in VERTEBRA_KEYS or c not in ct.columns]
        ct = ct.merge(extra[cols], on=list(VERTEBRA_KEYS), how="left", validate="one_to_one")
    ct.insert(0, "vertebra_id", vertebra_id(ct["patient_id"], ct["study_id"], ct["level"]))
    dup = ct["vertebra_id"].duplicated()
    if dup.any():
        raise TableError(f"vertebrae.parquet repeats vertebra {ct.loc[dup, 'vertebra_id'].iloc[0]}: "
                         "re-run `osteo ingest` (one row per study and level)")
    ct = _normalise(ct.drop(columns=[c for c in RESERVED if c in ct.columns]))
    ct["event_timestamp"] = ct["ct_date"]
    return ct.sort_values(["event_timestamp", "vertebra_id"], kind="mergesort").reset_index(drop=True)


def prepare_dxa(dxa: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Feast-ready DXA labels with event and mirrored timestamps; returns ``(rows, duplicates_dropped)``."""
    d = dxa[list(REQUIRED_DXA)].rename(columns={"site": "dxa_site"}).copy()
    d["level"] = d["level"].astype("int64")
    d["who_class"] = d["who_class"].astype("int64")
    d["bmd_g_cm2"] = d["bmd_g_cm2"].astype("float64")
    d["t_score"] = d["t_score"].astype("float64")
    d, dropped = pit.dedupe_dxa(d)
    d["event_timestamp"] = d["dxa_date"]
    d["mirror_timestamp"] = pit.mirror_time(d["dxa_date"])
    return _normalise(d), dropped


def prepare_tables(ingest_dir: str | Path, texture_dir: str | Path | None, repo_dir: str | Path) -> PreparedTables:
    """Write the Feast-ready tables into ``<repo_dir>/data`` and return them.

    Args:
        ingest_dir: folder with ``vertebrae.parquet`` and ``dxa.parquet``.
        texture_dir: folder with ``texture.parquet`` and ``radiomics.parquet``; None = no texture columns.
        repo_dir: the runtime Feast repository.

    Raises:
        TableError: a table is missing, lacks contract columns or repeats a vertebra.
    """
    ingest_dir, repo_dir = Path(ingest_dir), Path(repo_dir)
    vert = _read(ingest_dir / "vertebrae.parquet", REQUIRED_CT, "osteo ingest")
    dxa = _read(ingest_dir / "dxa.parquet", REQUIRED_DXA, "osteo ingest")
    texture = radiomics = None
    if texture_dir is not None:
        keys_and_pool = (*VERTEBRA_KEYS, *REQUIRED_TEXTURE)
        texture = _read(Path(texture_dir) / "texture.parquet", keys_and_pool, "osteo texture")
        radiomics = _read(Path(texture_dir) / "radiomics.parquet", VERTEBRA_KEYS, "osteo texture")
        radiomics = radiomics[[c for c in radiomics.columns if not c.startswith("diagnostics_")]]
    ct = prepare_ct(vert, texture, radiomics)
    labels, dropped = prepare_dxa(dxa)
    fields = tuple((c, feast_type(ct[c])) for c in ct.columns if c not in ("vertebra_id", "event_timestamp"))
    schema_hash = hashlib.sha256(json.dumps(fields).encode()).hexdigest()
    data = repo_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    ct.to_parquet(data / "ct_vertebra.parquet", index=False)
    labels.to_parquet(data / "dxa_label.parquet", index=False)
    (data / "prepare_summary.json").write_text(json.dumps(
        {"ct_rows": len(ct), "dxa_rows": len(labels), "dxa_duplicates_dropped": dropped,
         "ct_schema_sha256": schema_hash, "texture": texture is not None}, indent=2))
    return PreparedTables(ct=ct, dxa=labels, dxa_duplicates_dropped=dropped, ct_fields=fields,
                          ct_schema_sha256=schema_hash)
