"""Expectation suites, one per table: one expectation per line, its ``notes`` say why it exists.

Tables and columns follow docs/data_contract.md §2-3; the training set is one
row per labelled vertebra (vertebra keys + CT features + DXA labels + split).
Cross-row and file facts arrive as ``chk_*`` columns (see :mod:`data_checks.derive`).
The suites never apply an aggregate expectation (distinct values, most common
value, ...) to an identifying column: those would echo identifiers as the
"observed value" whatever the result format says.
"""
from __future__ import annotations

import sys
from typing import Callable

import great_expectations as gx
import pandas as pd

from data_checks.config import ChecksConfig

E = gx.expectations

KEYS: list[str] = ["patient_id", "study_id", "level"]
INT_TYPES: list[str] = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOAT_TYPES: list[str] = ["float32", "float64"]
STR_TYPES: list[str] = ["str"]  # object columns are checked value by value
SHA256_REGEX = r"^[0-9a-f]{64}$"
LEVEL_NAMES: list[tuple[int, str]] = (
    [(i, f"T{i}") for i in range(1, 13)] + [(12 + i, f"L{i}") for i in range(1, 7)]
)
DXA_REGIONS: list[tuple[str, int]] = [("L1", 13), ("L2", 14), ("L3", 15), ("L4", 16), ("L1-L4", 0)]
FLOAT_MAX = sys.float_info.max  # bound that only ±inf exceeds

VERTEBRA_COLUMNS: list[str] = [
    *KEYS, "level_name", "site", "scanner", "contrast", "ct_date", "sex", "age_at_ct", "roi_path",
    "roi_sha256", "roi_shape", "spacing_mm", "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95", "body_voxels",
]
DXA_COLUMNS: list[str] = [
    "patient_id", "dxa_id", "site", "device_vendor", "device_model", "dxa_date", "region", "level",
    "bmd_g_cm2", "t_score", "who_class",
]
TEXTURE_COLUMNS: list[str] = [*KEYS, "pool_path", "pool_sha256", "pool_shape"]
TRAINING_COLUMNS: list[str] = [
    *KEYS, "site", "device_vendor", "bmd_g_cm2", "t_score", "who_class", "ct_date", "dxa_date", "split",
    "pool_path", "pool_sha256",
]


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _texture_refs() -> list:
    return [
        E.ExpectColumnValuesToNotBeNull(column="pool_path", notes="every row must point at its texture map"),
        E.ExpectColumnValuesToMatchRegex(column="pool_sha256", regex=SHA256_REGEX, notes="recorded hash is a lowercase hex SHA-256"),
        E.ExpectColumnValuesToBeInSet(column="chk_pool_exists", value_set=[True], notes="texture map file exists under paths.interim"),
        E.ExpectColumnValuesToBeInSet(column="chk_pool_hash_ok", value_set=[True], notes="file content matches the recorded SHA-256 (no stale or corrupt map)"),
    ]


def vertebra_suite(cfg: ChecksConfig, df: pd.DataFrame | None = None) -> gx.ExpectationSuite:
    """Suite of ``vertebrae.parquet``: schema, keys, level ids, sites/scanners, HU statistics."""
    lo, hi = cfg.hu_window
    scanner_set = (
        [E.ExpectColumnValuesToBeInSet(column="scanner", value_set=list(cfg.scanners), notes="scanner ids come from params (cohort.sites / checks.scanners)")]
        if cfg.scanners else []
    )
    return _suite("vertebrae", [
        E.ExpectTableRowCountToBeBetween(min_value=1, notes="an empty table means ingestion wrote nothing"),
        E.ExpectTableColumnsToMatchSet(column_set=VERTEBRA_COLUMNS, exact_match=False, notes="data contract §2 columns are all present"),
        *[E.ExpectColumnValuesToNotBeNull(column=c, notes="vertebra key: a null key orphans the row") for c in KEYS],
        E.ExpectCompoundColumnsToBeUnique(column_list=KEYS, notes="one row per patient x study x level"),
        E.ExpectColumnValuesToBeInTypeList(column="level", type_list=INT_TYPES, notes="level is an integer id"),
        E.ExpectColumnValuesToBeBetween(column="level", min_value=1, max_value=18, notes="T1..T12 = 1..12, L1..L6 = 13..18"),
        E.ExpectColumnPairValuesToBeInSet(column_A="level", column_B="level_name", value_pairs_set=LEVEL_NAMES, notes="level name agrees with the level id"),
        E.ExpectColumnValuesToBeInTypeList(column="patient_id", type_list=STR_TYPES, notes="pseudonymous ids are strings (HMAC hex)"),
        E.ExpectColumnValuesToBeInSet(column="site", value_set=list(cfg.sites), notes="only configured sites (checks.sites)"),
        *scanner_set,
        E.ExpectColumnValuesToNotBeNull(column="scanner", notes="harmonisation needs the scanner of every CT"),
        E.ExpectColumnValuesToBeInSet(column="contrast", value_set=[0, 1], notes="contrast flag is 0/1"),
        E.ExpectColumnValuesToBeInSet(column="chk_ct_date_utc", value_set=[True], notes="ct_date is datetime64[*, UTC] (GE's type check cannot match tz-aware dtypes)"),
        E.ExpectColumnValuesToNotBeNull(column="ct_date", notes="CT/DXA pairing needs every CT date"),
        E.ExpectColumnValuesToBeInSet(column="sex", value_set=["F", "M"], notes="T-score references are sex-specific"),
        E.ExpectColumnValuesToBeBetween(column="age_at_ct", min_value=cfg.age_range[0], max_value=cfg.age_range[1], notes="adult screening cohort; outside = date error"),
        E.ExpectColumnValuesToNotBeNull(column="roi_path", notes="every vertebra has its ROI file"),
        E.ExpectColumnValuesToMatchRegex(column="roi_sha256", regex=SHA256_REGEX, notes="ROI hash is a lowercase hex SHA-256"),
        *[E.ExpectColumnValuesToBeInTypeList(column=c, type_list=FLOAT_TYPES, notes="HU statistics are floats") for c in ("hu_mean", "hu_p05", "hu_p50", "hu_p95")],
        *[E.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, notes="ROIs are clipped to ingest.hu_window") for c in ("hu_mean", "hu_p05", "hu_p50", "hu_p95")],
        E.ExpectColumnValuesToBeBetween(column="hu_std", min_value=0.0, max_value=hi - lo, notes="a spread cannot exceed the clip window's width"),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="hu_p95", column_B="hu_p05", or_equal=True, notes="percentiles are ordered"),
        E.ExpectColumnValuesToBeBetween(column="body_voxels", min_value=cfg.min_body_voxels, notes="smaller bodies are rejected by ingestion (ingest.min_body_voxels)"),
    ])


def dxa_suite(cfg: ChecksConfig, df: pd.DataFrame | None = None) -> gx.ExpectationSuite:
    """Suite of ``dxa.parquet``: ranges, WHO consistency, vendors, regions, duplicates."""
    return _suite("dxa", [
        E.ExpectTableRowCountToBeBetween(min_value=1, notes="an empty table means no labels"),
        E.ExpectTableColumnsToMatchSet(column_set=DXA_COLUMNS, exact_match=False, notes="data contract §2 columns are all present"),
        E.ExpectColumnValuesToNotBeNull(column="patient_id", notes="a DXA without patient cannot be paired"),
        E.ExpectColumnValuesToNotBeNull(column="dxa_id", notes="every exam region has an id"),
        E.ExpectColumnValuesToBeUnique(column="dxa_id", notes="dxa_id = HMAC(accession + region) is a key"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["patient_id", "dxa_date", "region"], notes="duplicate exports were resolved to one row"),
        E.ExpectColumnValuesToBeInSet(column="site", value_set=list(cfg.sites), notes="only configured sites (checks.sites)"),
        E.ExpectColumnValuesToBeInSet(column="device_vendor", value_set=list(cfg.vendors), notes="vendor decides the T-score reference: unknown = unharmonisable"),
        E.ExpectColumnValuesToNotBeNull(column="device_vendor", notes="vendor is needed for cross-calibration"),
        E.ExpectColumnValuesToBeInSet(column="chk_dxa_date_utc", value_set=[True], notes="dxa_date is datetime64[*, UTC]"),
        E.ExpectColumnValuesToNotBeNull(column="dxa_date", notes="CT/DXA pairing needs every DXA date"),
        E.ExpectColumnValuesToBeInSet(column="region", value_set=[r for r, _ in DXA_REGIONS], notes="lumbar regions only"),
        E.ExpectColumnValuesToBeInSet(column="level", value_set=[0, 13, 14, 15, 16], notes="L1..L4 = 13..16, 0 = the L1-L4 total"),
        E.ExpectColumnPairValuesToBeInSet(column_A="region", column_B="level", value_pairs_set=DXA_REGIONS, notes="region and level agree"),
        E.ExpectColumnValuesToNotBeNull(column="bmd_g_cm2", notes="a label without BMD is no label"),
        E.ExpectColumnValuesToBeBetween(column="bmd_g_cm2", min_value=cfg.bmd_range[0], max_value=cfg.bmd_range[1], notes="plausible areal BMD; outside = unit or parsing error"),
        E.ExpectColumnValuesToNotBeNull(column="t_score", notes="the WHO class derives from the T-score"),
        E.ExpectColumnValuesToBeBetween(column="t_score", min_value=cfg.t_score_range[0], max_value=cfg.t_score_range[1], notes="plausible T-score; outside = Z-score/BMD swapped in"),
        E.ExpectColumnValuesToBeInSet(column="who_class", value_set=[0, 1, 2], notes="0 normal, 1 osteopenia, 2 osteoporosis"),
        E.ExpectColumnPairValuesToBeEqual(column_A="who_class", column_B="chk_who_class_expected", notes="WHO class follows the T-score thresholds (checks.who_thresholds)"),
    ])


def radiomics_suite(cfg: ChecksConfig, df: pd.DataFrame | None = None) -> gx.ExpectationSuite:
    """Suite of ``radiomics.parquet``: unique keys and finite ``original_*`` features (one pair per feature)."""
    features = [c for c in (df.columns if df is not None else []) if str(c).startswith("original_")]
    return _suite("radiomics", [
        E.ExpectTableRowCountToBeBetween(min_value=1, notes="an empty table means texture extraction wrote nothing"),
        E.ExpectTableColumnCountToBeBetween(min_value=len(KEYS) + 1, notes="at least one feature besides the keys"),
        *[E.ExpectColumnValuesToNotBeNull(column=c, notes="vertebra key: a null key orphans the row") for c in KEYS],
        E.ExpectCompoundColumnsToBeUnique(column_list=KEYS, notes="one feature row per vertebra"),
        *[E.ExpectColumnValuesToNotBeNull(column=c, notes="NaN feature: failed extraction (models need finite inputs)") for c in features],
        *[E.ExpectColumnValuesToBeBetween(column=c, min_value=-FLOAT_MAX, max_value=FLOAT_MAX, notes="±inf feature: degenerate ROI (models need finite inputs)") for c in features],
    ])


def texture_suite(cfg: ChecksConfig, df: pd.DataFrame | None = None) -> gx.ExpectationSuite:
    """Suite of ``texture.parquet``: unique keys, and each map file present with its recorded hash."""
    return _suite("texture", [
        E.ExpectTableRowCountToBeBetween(min_value=1, notes="an empty table means no texture maps"),
        E.ExpectTableColumnsToMatchSet(column_set=TEXTURE_COLUMNS, exact_match=False, notes="data contract §3 columns are all present"),
        *[E.ExpectColumnValuesToNotBeNull(column=c, notes="vertebra key: a null key orphans the row") for c in KEYS],
        E.ExpectCompoundColumnsToBeUnique(column_list=KEYS, notes="one texture map per vertebra"),
        *_texture_refs(),
    ])


def training_suite(cfg: ChecksConfig, df: pd.DataFrame | None = None) -> gx.ExpectationSuite:
    """Suite of the assembled training set: labels, pairing window, leakage, site hold-out, balance, files."""
    from great_expectations.expectations.row_conditions import Column

    development = Column("split").is_in([s for s in cfg.splits if s != "test"])
    lv_lo, lv_hi = cfg.labeled_levels
    share_lo, share_hi = cfg.class_share
    every_class = (
        [E.ExpectColumnDistinctValuesToContainSet(column="who_class", value_set=[0, 1, 2], notes="a class share > 0 is required, so every class must be present")]
        if share_lo > 0 else []
    )
    return _suite("training", [
        E.ExpectTableRowCountToBeBetween(min_value=1, notes="an empty training set trains nothing"),
        E.ExpectTableColumnsToMatchSet(column_set=TRAINING_COLUMNS, exact_match=False, notes="keys, labels, dates, split and texture references are all present"),
        *[E.ExpectColumnValuesToNotBeNull(column=c, notes="vertebra key: a null key orphans the row") for c in KEYS],
        E.ExpectCompoundColumnsToBeUnique(column_list=KEYS, notes="one row per labelled vertebra"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(cfg.splits), notes="only the configured splits"),
        E.ExpectColumnValuesToBeBetween(column="chk_patient_splits", min_value=1, max_value=1, notes="a patient in two splits leaks labels between them"),
        E.ExpectColumnValuesToBeInSet(column="site", value_set=list(cfg.sites), notes="only configured sites (checks.sites)"),
        E.ExpectColumnValuesToNotBeInSet(column="site", value_set=list(cfg.external_sites), row_condition=development, notes="external sites are held out for testing only"),
        E.ExpectColumnValuesToBeBetween(column="chk_site_rows", min_value=cfg.rows_per_site[0], max_value=cfg.rows_per_site[1], notes="per-site row count within checks.rows_per_site"),
        E.ExpectColumnValuesToBeInSet(column="device_vendor", value_set=list(cfg.vendors), notes="labels from known DXA vendors only"),
        E.ExpectColumnValuesToBeInTypeList(column="level", type_list=INT_TYPES, notes="level is an integer id"),
        E.ExpectColumnValuesToBeBetween(column="level", min_value=lv_lo, max_value=lv_hi, notes="only L1-L4 carry DXA labels (checks.labeled_levels)"),
        E.ExpectColumnValuesToNotBeNull(column="bmd_g_cm2", notes="every training row is labelled"),
        E.ExpectColumnValuesToBeBetween(column="bmd_g_cm2", min_value=cfg.bmd_range[0], max_value=cfg.bmd_range[1], notes="plausible areal BMD"),
        E.ExpectColumnValuesToBeBetween(column="t_score", min_value=cfg.t_score_range[0], max_value=cfg.t_score_range[1], notes="plausible T-score"),
        E.ExpectColumnValuesToBeInSet(column="who_class", value_set=[0, 1, 2], notes="0 normal, 1 osteopenia, 2 osteoporosis"),
        E.ExpectColumnPairValuesToBeEqual(column_A="who_class", column_B="chk_who_class_expected", notes="WHO class follows the T-score thresholds"),
        E.ExpectColumnValuesToBeBetween(column="chk_who_class_share", min_value=share_lo, max_value=share_hi, notes="class balance within checks.class_share"),
        *every_class,
        E.ExpectColumnValuesToNotBeNull(column="ct_date", notes="pairing window needs both dates"),
        E.ExpectColumnValuesToNotBeNull(column="dxa_date", notes="pairing window needs both dates"),
        E.ExpectColumnValuesToBeBetween(column="chk_ct_dxa_days", min_value=0, max_value=cfg.window_days, notes="CT and DXA at most ingest.dxa_window_days apart"),
        *_texture_refs(),
    ])


SUITES: dict[str, Callable[[ChecksConfig, pd.DataFrame | None], gx.ExpectationSuite]] = {
    "vertebrae": vertebra_suite,
    "dxa": dxa_suite,
    "radiomics": radiomics_suite,
    "texture": texture_suite,
    "training": training_suite,
}
