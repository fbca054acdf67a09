"""Feast store, production profile: SQL registry on PostgreSQL + Redis online store.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, database ``test``)
and Redis on 127.0.0.1:6379; each test is skipped with a message naming what
is absent. Every test uses its own Feast project and removes only that
project's registry rows and Redis keys afterwards.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pandas as pd
import pytest

from features import pit, store
from features.feature_repo import definitions as defs
from osteo_testing.feature_fixtures import fixture_tables, write_fixture

pytestmark = pytest.mark.services

# override to point the tests at other servers (host:port for Redis, a SQLAlchemy URL for PostgreSQL)
REDIS = os.environ.get("OSTEO_TEST_REDIS", "127.0.0.1:6379")
PG_URL = os.environ.get("OSTEO_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _redis_problem() -> str | None:
    try:
        import redis

        host, port = REDIS.split(",")[0].rsplit(":", 1)
        redis.Redis(host=host, port=int(port), socket_connect_timeout=1).ping()
    except Exception as exc:  # any failure means: no usable Redis here
        return f"Redis not reachable on {REDIS} ({type(exc).__name__}: {exc}); start redis-server or set OSTEO_TEST_REDIS"
    return None


def _postgres_problem() -> str | None:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        return (f"PostgreSQL not reachable at {PG_URL} ({type(exc).__name__}: {str(exc).strip()}); "
                "start it (trust auth, user postgres, database `test`) or set OSTEO_TEST_POSTGRES")
    return None


@pytest.fixture()
def production_repo(tmp_path):
    problems = [p for p in (_redis_problem(), _postgres_problem()) if p]
    if problems:
        pytest.skip("; ".join(problems))
    cfg = store.FeatureStoreConfig(profile="production", project=f"osteo_t{uuid.uuid4().hex[:10]}",
                                   redis=REDIS, registry_sql=PG_URL, cache_ttl_seconds=0)
    tables = fixture_tables(n_patients=20, seed=5)
    ingest, texture = write_fixture(tmp_path / "in", tables=tables)
    yield cfg, tables, ingest, texture, tmp_path / "repo"
    store.teardown(cfg, tmp_path / "repo")


def test_production_profile_materialize_online_and_training(production_repo):
    cfg, tables, ingest, texture, repo = production_repo
    summary = store.materialize(cfg, ingest, texture, repo)
    assert summary.profile == "production"
    assert summary.rows_written[defs.CT_VIEW] == len(tables["vertebrae"])
    fs = store.open_store(cfg, repo)
    assert fs.config.online_store.type == "redis" and fs.config.registry.registry_type == "sql"
    # the registry lives in PostgreSQL: a fresh store on an empty folder sees the same services
    other = store.open_store(cfg, repo.parent / "elsewhere")
    assert other.get_feature_service(defs.TRAINING_SERVICE).tags["ct_schema_sha256"] == summary.ct_schema_sha256

    v = tables["vertebrae"].sample(10, random_state=1)
    ids = store.vertebra_id(v.patient_id, v.study_id, v.level).tolist()
    online = store.online_features(cfg, repo, ids, store=fs)
    np.testing.assert_allclose(online["hu_mean"], v["hu_mean"])

    got = store.training_set(cfg, repo, store=fs)
    ct = tables["vertebrae"][tables["vertebrae"].level.isin(cfg.label_levels)]
    ref = pit.reference_pairs(ct, tables["dxa"], cfg.window)
    ref = ref[ref.dxa_id.notna()]
    assert dict(zip(got.vertebra_id, got.dxa_id)) == dict(
        zip(store.vertebra_id(ref.patient_id, ref.study_id, ref.level), ref.dxa_id))

    lat = store.online_latency(cfg, repo, n=50, warmup=5, store=fs)
    assert lat.backend == "redis" and lat.p50_ms <= lat.p99_ms


def test_teardown_removes_only_this_project(production_repo, tmp_path):
    cfg, tables, ingest, texture, repo = production_repo
    store.materialize(cfg, ingest, texture, repo)
    other_cfg = store.FeatureStoreConfig(profile="production", project=cfg.project + "_b", redis=REDIS,
                                         registry_sql=PG_URL, cache_ttl_seconds=0)
    other_repo = tmp_path / "repo_b"
    store.materialize(other_cfg, ingest, texture, other_repo)
    try:
        store.teardown(cfg, repo)
        names = {p.name for p in store.open_store(other_cfg, other_repo).list_projects()}
        assert other_cfg.project in names and cfg.project not in names
        vid = store.vertebra_id(*tables["vertebrae"].iloc[0][["patient_id", "study_id", "level"]])
        row = store.online_features(other_cfg, other_repo, [vid])
        assert not pd.isna(row["hu_mean"].iloc[0])  # the other project's Redis keys survive
        store.materialize(cfg, ingest, texture, repo)  # a torn-down project can be applied again
        assert store.online_features(cfg, repo, [vid])["hu_mean"].notna().all()
    finally:
        store.teardown(other_cfg, other_repo)
