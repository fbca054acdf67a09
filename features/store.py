"""The Feast feature store: prepare tables, apply, materialise, training sets, online reads.

Thin shell around Feast; the pairing rule itself is pure code in
:mod:`features.pit` and the definitions are in
:mod:`features.feature_repo.definitions`. Flow::

    prepare_tables   contract parquet (ingest + texture) -> Feast-ready parquet in <repo_dir>/data
    write_feature_store_yaml  params (features_store.profile) -> <repo_dir>/feature_store.yaml
    materialize      apply the definitions, materialise (incrementally) into the online store
    training_set     osteo_training_v1 + the two-sided window rule -> one row per paired vertebra
    online_latency   p50/p99 of single-vertebra look-ups through osteo_screening_v1

Profiles: ``local`` (file registry, SQLite online store) and ``production``
(PostgreSQL SQL registry, Redis online store); the offline store is local
parquet in both.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from features import atomic
from features import pit
from features.feature_repo.tables import (CT_KEYS, PreparedTables, TableError, prepare_tables,
                                         vertebra_id)
from osteo_config.store import PROFILES, FeatureStoreError, FeatureStoreConfig  # noqa: F401  (configuration lives in the leaf package)

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "feature_repo" / "templates"
__all__ = ["FeatureStoreConfig", "FeatureStoreError", "MaterializeSummary", "LatencySummary", "TableError",
           "PreparedTables", "prepare_tables", "vertebra_id", "write_feature_store_yaml", "open_store",
           "apply_repo", "materialize", "training_set", "online_features", "online_latency", "teardown"]


@dataclass(frozen=True)
class MaterializeSummary:
    """What :func:`materialize` did.

    Attributes:
        rows_written: entity rows written to the online store per feature view.
        windows: per view, the [start, end] interval materialised (ISO 8601, UTC).
        ct_rows / dxa_rows: rows in the prepared offline tables.
        dxa_duplicates_dropped: DXA rows sharing (patient, level, date) with a smaller dxa_id.
        ct_schema_sha256: hash of the CT view's schema (tagged on the services).
        profile: ``local`` | ``production``.
    """

    rows_written: dict[str, int]
    windows: dict[str, tuple[str, str]]
    ct_rows: int
    dxa_rows: int
    dxa_duplicates_dropped: int
    ct_schema_sha256: str
    profile: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class LatencySummary:
    """Online read latency of single-vertebra look-ups (milliseconds, wall clock)."""

    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    backend: str
    samples_ms: tuple[float, ...] = field(default=(), repr=False)


# --- configuration ---------------------------------------------------------
def write_feature_store_yaml(cfg: FeatureStoreConfig, repo_dir: str | Path) -> Path:
    """Render ``templates/<profile>.yaml`` into ``<repo_dir>/feature_store.yaml``; returns its path."""
    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    text = Template((TEMPLATES / f"{cfg.profile}.yaml").read_text()).substitute(
        project=cfg.project, registry_path=cfg.registry_path, sqlite_path=cfg.sqlite_path,
        registry_sql=cfg.registry_sql, redis=cfg.redis, cache_ttl_seconds=cfg.cache_ttl_seconds)
    out = repo_dir / "feature_store.yaml"
    atomic.write_text(out, text)
    return out


def _load_feast(cfg: FeatureStoreConfig) -> None:
    """Import Feast as ``cfg.feast_typechecks`` says, before anything here imports it (the definitions
    module imports Feast at its top): heavy (5-12 s with typeguard's instrumentation), only at the edge."""
    from features.feature_repo.feast_import import import_feast

    import_feast(cfg.feast_typechecks)


def open_store(cfg: FeatureStoreConfig, repo_dir: str | Path):
    """A ``feast.FeatureStore`` on ``repo_dir`` (the yaml is (re)generated from ``cfg`` first)."""
    _load_feast(cfg)
    from feast import FeatureStore

    write_feature_store_yaml(cfg, repo_dir)
    return FeatureStore(repo_path=str(Path(repo_dir).resolve()))


def apply_repo(cfg: FeatureStoreConfig, store, prepared: PreparedTables) -> list:
    """Register every definition (entities, sources, views, services) in the store's registry."""
    _load_feast(cfg)
    from features.feature_repo.definitions import RepoSpec, build_definitions

    spec = RepoSpec(window_days=cfg.window_days, ct_ttl_days=cfg.ct_ttl_days, ct_fields=prepared.ct_fields,
                    ct_schema_sha256=prepared.ct_schema_sha256)
    objects = build_definitions(spec)
    store.apply(objects)
    return objects


# --- materialisation -------------------------------------------------------
def materialize(cfg: FeatureStoreConfig, ingest_dir: str | Path, texture_dir: str | Path | None,
                repo_dir: str | Path, end_date: datetime | None = None, full: bool = False
                ) -> MaterializeSummary:
    """Prepare the tables, apply the repository and materialise the online views incrementally.

    A view never materialised before is loaded from its earliest row (Feast would otherwise start
    at ``now - ttl`` and skip old exams); afterwards each call loads ``[previous end, end_date]``.
    Rows dated before the previous end and added later are not picked up incrementally: pass
    ``full=True`` to reload everything.

    Args:
        cfg: the ``features_store`` config.
        ingest_dir: folder with ``vertebrae.parquet`` and ``dxa.parquet``.
        texture_dir: folder with ``texture.parquet`` and ``radiomics.parquet``; None = no texture.
        repo_dir: runtime Feast repository (yaml, prepared parquet, registry, SQLite).
        end_date: materialise up to here (UTC); default: now, or the newest row if later.
        full: reload every row from the earliest one.

    Returns:
        A :class:`MaterializeSummary` with rows written per view.
    """
    _load_feast(cfg)
    from features.feature_repo.definitions import CT_VIEW, DXA_VIEW

    repo_dir = Path(repo_dir)
    prepared = prepare_tables(ingest_dir, texture_dir, repo_dir)
    store = open_store(cfg, repo_dir)
    apply_repo(cfg, store, prepared)
    tables = {CT_VIEW: (prepared.ct, ["vertebra_id"]), DXA_VIEW: (prepared.dxa, list(pit.KEYS))}
    newest = max(t["event_timestamp"].max() for t, _ in tables.values())
    end = pd.Timestamp(end_date or datetime.now(timezone.utc))
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    if end_date is None and newest >= end:
        end = newest + pd.Timedelta(seconds=1)
    rows, windows = {}, {}
    for name, (table, keys) in tables.items():
        view = store.get_feature_view(name)
        prev = view.most_recent_end_time
        if full or prev is None:
            start = table["event_timestamp"].min() - pd.Timedelta(seconds=1)
            store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=[name])
        else:
            start = pd.Timestamp(prev)
            start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
            store.materialize_incremental(end_date=end.to_pydatetime(), feature_views=[name])
        # Feast writes the latest row per entity key with start <= t <= end (both inclusive)
        ts = table["event_timestamp"]
        rows[name] = int(table.loc[(ts >= start) & (ts <= end), keys].drop_duplicates().shape[0])
        windows[name] = (start.isoformat(), end.isoformat())
    summary = MaterializeSummary(rows_written=rows, windows=windows, ct_rows=len(prepared.ct),
                                 dxa_rows=len(prepared.dxa), dxa_duplicates_dropped=prepared.dxa_duplicates_dropped,
                                 ct_schema_sha256=prepared.ct_schema_sha256, profile=cfg.profile)
    # the file is a DVC output, hashed: no wall-clock window ends in it (they live in Feast's registry)
    record = {k: v for k, v in summary.to_dict().items() if k != "windows"}
    atomic.write_text(repo_dir / "data" / "materialize_summary.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("materialized %s", rows)
    return summary


# --- training set ----------------------------------------------------------
def _refs_by_view(service) -> dict[str, list[str]]:
    """Feature references of a FeatureService, grouped by feature view."""
    out: dict[str, list[str]] = {}
    for proj in service.feature_view_projections:
        out[proj.name_to_use()] = [f"{proj.name_to_use()}:{f.name}" for f in proj.features]
    return out


def training_set(cfg: FeatureStoreConfig, repo_dir: str | Path, entity_df: pd.DataFrame | None = None,
                 store=None) -> pd.DataFrame:
    """Paired (CT vertebra, DXA label) rows through ``osteo_training_v1`` and the window rule.

    Three point-in-time queries, each on the feature list the service declares for one view:
    CT features anchored at the CT date; the DXA view anchored at the CT date (nearest DXA at or
    before, TTL = window); the mirrored DXA view anchored at ``m(CT date)`` (nearest DXA at or
    after). :func:`features.pit.choose_pairs` then enforces ``|dt| <= window`` exactly and picks
    one DXA per vertebra (smallest |dt|, then before, then smallest dxa_id).

    Args:
        cfg: the ``features_store`` config.
        repo_dir: a repository :func:`materialize` has prepared and applied.
        entity_df: vertebrae to label (``vertebra_id``, ``patient_id``, ``level``, ``ct_date``);
            default: every prepared CT vertebra. Levels outside ``label_levels`` are skipped.
        store: an open FeatureStore (default: opened from ``cfg``).

    Returns:
        One row per paired vertebra: CT features, DXA label columns, ``dxa_delta_days``
        (DXA minus CT, days) and ``dxa_direction``. ``df.attrs["pairing"]`` holds the counts
        (vertebrae in, at label levels, paired, excluded by the window rule, duplicates dropped).
    """
    _load_feast(cfg)
    from features.feature_repo.definitions import CT_TABLE, CT_VIEW, DXA_MIRROR_VIEW, DXA_TABLE, DXA_VIEW, \
        TRAINING_SERVICE

    repo_dir = Path(repo_dir)
    store = store or open_store(cfg, repo_dir)
    try:
        service = store.get_feature_service(TRAINING_SERVICE)
    except Exception as exc:  # Feast raises its own not-found classes
        raise FeatureStoreError(f"{TRAINING_SERVICE} is not registered in {repo_dir}: run materialize() first") from exc
    refs = _refs_by_view(service)
    if set(refs) != {CT_VIEW, DXA_VIEW, DXA_MIRROR_VIEW}:
        raise FeatureStoreError(f"{TRAINING_SERVICE} serves {sorted(refs)}: re-apply the repository definitions")
    if entity_df is None:
        entity_df = pd.read_parquet(repo_dir / CT_TABLE, columns=list(CT_KEYS))
    missing = [c for c in CT_KEYS if c not in entity_df.columns]
    if missing:
        raise FeatureStoreError(f"entity_df lacks {missing}: pass vertebra_id, patient_id, level, ct_date")
    ents = entity_df[list(CT_KEYS)].copy()
    ents["ct_date"] = pit.to_utc(ents["ct_date"])
    ents["level"] = ents["level"].astype("int64")
    n_in = len(ents)
    ents = ents[ents["level"].isin(cfg.label_levels)].drop_duplicates("vertebra_id").reset_index(drop=True)

    def fetch(frame: pd.DataFrame, view: str) -> pd.DataFrame:
        return store.get_historical_features(entity_df=frame, features=refs[view]).to_df()

    # 1) CT features at the CT date (one row per vertebra)
    ct = fetch(ents[["vertebra_id"]].assign(event_timestamp=ents["ct_date"]), CT_VIEW)
    ct = ct.drop(columns=["event_timestamp", *[c for c in CT_KEYS if c != "vertebra_id"]], errors="ignore")
    # 2) + 3) the two label look-ups on unique (patient, level, CT date) anchors; Feast collapses
    # entity rows sharing keys and timestamp, so repeat vertebrae are re-attached by merge
    anchors = ents[[*pit.KEYS, "ct_date"]].drop_duplicates().reset_index(drop=True)
    back = fetch(anchors.assign(event_timestamp=anchors["ct_date"]), DXA_VIEW)
    fwd = fetch(anchors.assign(event_timestamp=pit.mirror_time(anchors["ct_date"])), DXA_MIRROR_VIEW)
    key = [*pit.KEYS, "ct_date"]
    align = lambda f: anchors.merge(f.drop(columns=["event_timestamp"]).assign(ct_date=lambda d: pit.to_utc(d["ct_date"])),
                                    on=key, how="left", validate="one_to_one")
    chosen = pit.choose_pairs(align(back), align(fwd), cfg.window)
    out = ents.merge(ct, on="vertebra_id", how="left", validate="one_to_one").merge(chosen, on=key, how="left")
    out = out[out["dxa_id"].notna()].reset_index(drop=True)
    out["who_class"] = out["who_class"].astype("int64")
    dxa_all = pd.read_parquet(repo_dir / DXA_TABLE, columns=[*pit.KEYS, "dxa_date"])
    counts = {"vertebrae_in": n_in, "at_label_levels": len(ents), "paired": len(out),
              **pit.pair_exclusions(ents, dxa_all, cfg.window), **_prep_counts(repo_dir)}
    out.attrs["pairing"] = counts
    log.info("training set: %s", counts)
    return out


def _prep_counts(repo_dir: Path) -> dict[str, int]:
    meta = repo_dir / "data" / "prepare_summary.json"
    if not meta.is_file():
        return {}
    return {"dxa_duplicates_dropped": int(json.loads(meta.read_text()).get("dxa_duplicates_dropped", 0))}


# --- online ----------------------------------------------------------------
def online_features(cfg: FeatureStoreConfig, repo_dir: str | Path, vertebra_ids: Sequence[str],
                    store=None) -> pd.DataFrame:
    """Latest CT features of the given vertebrae through ``osteo_screening_v1`` (online store)."""
    _load_feast(cfg)
    from features.feature_repo.definitions import SCREENING_SERVICE

    store = store or open_store(cfg, repo_dir)
    service = store.get_feature_service(SCREENING_SERVICE)
    rows = [{"vertebra_id": v} for v in vertebra_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def online_latency(cfg: FeatureStoreConfig, repo_dir: str | Path, n: int | None = None, seed: int = 0,
                   warmup: int = 20, store=None) -> LatencySummary:
    """Time ``n`` single-vertebra online look-ups through ``osteo_screening_v1``.

    Args:
        cfg: the ``features_store`` config (``latency_lookups`` is the default ``n``).
        repo_dir: a materialised repository.
        n: number of timed look-ups (ids drawn with replacement, fixed ``seed``).
        seed: RNG seed for the id draw.
        warmup: untimed look-ups first (registry cache, connections).
        store: an open FeatureStore (default: opened from ``cfg``).

    Returns:
        p50/p99/mean in milliseconds and the backend (``sqlite`` | ``redis``).
    """
    _load_feast(cfg)
    from features.feature_repo.definitions import CT_TABLE, SCREENING_SERVICE

    n = int(n or cfg.latency_lookups)
    store = store or open_store(cfg, repo_dir)
    service = store.get_feature_service(SCREENING_SERVICE)
    ids = pd.read_parquet(Path(repo_dir) / CT_TABLE, columns=["vertebra_id"])["vertebra_id"].to_numpy()
    if len(ids) == 0:
        raise FeatureStoreError(f"no vertebrae in {repo_dir}: run materialize() first")
    draw = np.random.default_rng(seed).choice(ids, size=n + warmup, replace=True)
    samples = []
    for i, vid in enumerate(draw):
        t0 = time.perf_counter()
        resp = store.get_online_features(features=service, entity_rows=[{"vertebra_id": str(vid)}]).to_dict()
        dt = (time.perf_counter() - t0) * 1000.0
        if resp["vertebra_id"][0] != vid:
            raise FeatureStoreError(f"online read returned {resp['vertebra_id'][0]} for {vid}")
        if i >= warmup:
            samples.append(dt)
    arr = np.asarray(samples)
    return LatencySummary(n=n, p50_ms=float(np.percentile(arr, 50)), p99_ms=float(np.percentile(arr, 99)),
                          mean_ms=float(arr.mean()), backend=store.config.online_store.type,
                          samples_ms=tuple(float(x) for x in arr))


def teardown(cfg: FeatureStoreConfig, repo_dir: str | Path, store=None) -> None:
    """Remove THIS project's online tables/keys and registry entries (never other projects').

    ``FeatureStore.teardown`` would delete every project of a shared registry, so this does it
    per project. Feast 0.67's SQL ``delete_project`` leaves ``feature_view_version_history`` rows
    behind (re-applying the project then fails); they are removed here too. A project that is
    not registered is a no-op.
    """
    store = store or open_store(cfg, repo_dir)
    if store.project not in {p.name for p in store.list_projects()}:
        return
    store._get_provider().teardown_infra(store.project, store.list_feature_views(), store.list_entities())
    store.registry.delete_project(store.project, commit=True)
    engine = getattr(store.registry, "write_engine", None)
    if engine is not None:  # SQL registry
        from sqlalchemy import delete

        from feast.infra.registry import sql as sql_registry

        history = getattr(sql_registry, "feature_view_version_history", None)
        if history is not None:
            with engine.begin() as conn:
                conn.execute(delete(history).where(history.c.project_id == store.project))
