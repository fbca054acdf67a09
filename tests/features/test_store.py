"""Feast store, local profile: apply + materialise into SQLite, online reads, training set, yaml."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from features import pit, store
from features.feature_repo import definitions as defs
from osteo_testing.feature_fixtures import RADIOMICS, fixture_tables, write_fixture


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs_local")
    tables = fixture_tables(n_patients=40, seed=3)
    ingest, texture = write_fixture(root / "in", tables=tables)
    cfg = store.FeatureStoreConfig(project="osteo_local_test")
    summary = store.materialize(cfg, ingest, texture, root / "repo")
    fs = store.open_store(cfg, root / "repo")
    return dict(cfg=cfg, repo=root / "repo", summary=summary, tables=tables, store=fs,
                ingest=ingest, texture=texture)


def test_materialize_writes_one_online_row_per_entity(local_repo):
    t, s = local_repo["tables"], local_repo["summary"]
    assert s.rows_written[defs.CT_VIEW] == len(t["vertebrae"]) == s.ct_rows
    assert s.rows_written[defs.DXA_VIEW] == t["dxa"][["patient_id", "level"]].drop_duplicates().shape[0]
    assert defs.DXA_MIRROR_VIEW not in s.rows_written  # offline-only view
    assert s.dxa_rows + s.dxa_duplicates_dropped == len(t["dxa"])


def test_views_and_services_are_registered_with_the_declared_schema(local_repo):
    fs = local_repo["store"]
    ct = fs.get_feature_view(defs.CT_VIEW)
    names = {f.name for f in ct.features}
    assert {"scanner", "site", "level", "hu_mean", "hu_p95", "pool_path", "pool_sha256", "pool_shape"} <= names
    assert set(RADIOMICS) <= names  # radiomics columns come from the parquet at apply time
    assert [e for e in ct.entities] == ["vertebra"]
    dxa = fs.get_feature_view(defs.DXA_VIEW)
    assert dxa.ttl == pd.Timedelta(days=183).to_pytimedelta()
    assert sorted(dxa.entities) == ["patient", "spine_level"]
    training = fs.get_feature_service(defs.TRAINING_SERVICE)
    screening = fs.get_feature_service(defs.SCREENING_SERVICE)
    assert {p.name for p in training.feature_view_projections} == {defs.CT_VIEW, defs.DXA_VIEW, defs.DXA_MIRROR_VIEW}
    assert [p.name for p in screening.feature_view_projections] == [defs.CT_VIEW]
    assert training.tags["ct_schema_sha256"] == local_repo["summary"].ct_schema_sha256


def test_online_read_returns_the_offline_values(local_repo):
    v = local_repo["tables"]["vertebrae"].sample(15, random_state=0)
    ids = store.vertebra_id(v.patient_id, v.study_id, v.level).tolist()
    online = store.online_features(local_repo["cfg"], local_repo["repo"], ids + ["nobody:none:13"],
                                   store=local_repo["store"])
    assert online["vertebra_id"].tolist() == ids + ["nobody:none:13"]
    np.testing.assert_allclose(online["hu_mean"].iloc[:15].to_numpy(), v["hu_mean"].to_numpy())
    tex = local_repo["tables"]["texture"].set_index(["patient_id", "study_id", "level"])
    want_sha = tex.loc[list(zip(v.patient_id, v.study_id, v.level)), "pool_sha256"].tolist()
    assert online["pool_sha256"].iloc[:15].tolist() == want_sha
    assert online["pool_shape"].iloc[0] == "5,48,48,32"
    assert online.iloc[15].drop("vertebra_id").isna().all()  # unknown vertebra: nulls, no error


def test_training_set_through_the_service_matches_the_reference(local_repo):
    cfg, t = local_repo["cfg"], local_repo["tables"]
    got = store.training_set(cfg, local_repo["repo"], store=local_repo["store"])
    ct = t["vertebrae"][t["vertebrae"].level.isin(cfg.label_levels)]
    ref = pit.reference_pairs(ct, t["dxa"], cfg.window)
    ref = ref[ref.dxa_id.notna()]
    assert dict(zip(got.vertebra_id, got.dxa_id)) == dict(
        zip(store.vertebra_id(ref.patient_id, ref.study_id, ref.level), ref.dxa_id))
    assert got["level"].isin(cfg.label_levels).all()
    assert (got["dxa_delta_days"].abs() <= cfg.window_days).all()
    # labels come from the chosen DXA row, features from the vertebra's own CT
    d = t["dxa"].set_index("dxa_id")
    np.testing.assert_allclose(got["bmd_g_cm2"], d.loc[got["dxa_id"], "bmd_g_cm2"].to_numpy())
    v = t["vertebrae"].assign(vertebra_id=lambda x: store.vertebra_id(x.patient_id, x.study_id, x.level))
    np.testing.assert_allclose(got["hu_p50"], v.set_index("vertebra_id").loc[got["vertebra_id"], "hu_p50"])
    c = got.attrs["pairing"]
    assert c["anchors_with_dxa"] - c["anchors_excluded_by_window"] == c["paired"] == len(got)
    assert c["anchors_excluded_by_window"] > 0 and c["pairs_outside_window"] > 0  # the rule did exclude


def test_second_materialize_is_incremental(tmp_path):
    tables = fixture_tables(n_patients=8, seed=11)
    ingest, texture = write_fixture(tmp_path / "in", tables=tables)
    cfg = store.FeatureStoreConfig(project="osteo_incr_test")
    end = pd.Timestamp("2030-01-01", tz="UTC")
    first = store.materialize(cfg, ingest, texture, tmp_path / "repo", end_date=end)
    assert first.rows_written[defs.CT_VIEW] == len(tables["vertebrae"])
    again = store.materialize(cfg, ingest, texture, tmp_path / "repo", end_date=end + pd.Timedelta(days=1))
    assert again.rows_written == {defs.CT_VIEW: 0, defs.DXA_VIEW: 0}
    # a new CT after the previous end is the only thing written next time
    new = tables["vertebrae"].head(3).assign(study_id="late", ct_date=end + pd.Timedelta(days=3))
    for name in ("vertebrae", "texture", "radiomics"):
        extra = new if name == "vertebrae" else tables[name].head(3).assign(study_id="late")
        tables[name] = pd.concat([tables[name], extra], ignore_index=True)
    write_fixture(tmp_path / "in", tables=tables)
    third = store.materialize(cfg, ingest, texture, tmp_path / "repo", end_date=end + pd.Timedelta(days=5))
    assert third.rows_written == {defs.CT_VIEW: 3, defs.DXA_VIEW: 0}
    online = store.online_features(cfg, tmp_path / "repo", store.vertebra_id(new.patient_id, new.study_id,
                                                                             new.level).tolist())
    np.testing.assert_allclose(online["hu_mean"], new["hu_mean"])


def test_online_latency_reports_percentiles(local_repo):
    lat = store.online_latency(local_repo["cfg"], local_repo["repo"], n=50, warmup=5, store=local_repo["store"])
    assert lat.backend == "sqlite" and lat.n == 50 == len(lat.samples_ms)
    assert 0 < lat.p50_ms <= lat.p99_ms <= max(lat.samples_ms)


@pytest.mark.parametrize("profile", ["local", "production"])
def test_feature_store_yaml_is_generated_from_params(tmp_path, profile):
    params = {"ingest": {"dxa_window_days": 90},
              "features_store": {"profile": profile, "project": "p1", "redis": "redis.example:6380,db=2",
                                 "registry_sql": "postgresql+psycopg2://u@db:5432/reg"}}
    cfg = store.FeatureStoreConfig.from_params(params)
    assert cfg.window_days == 90
    doc = yaml.safe_load(store.write_feature_store_yaml(cfg, tmp_path).read_text())
    assert doc["project"] == "p1" and doc["offline_store"]["type"] == "file"
    if profile == "local":
        assert doc["online_store"] == {"type": "sqlite", "path": cfg.sqlite_path}
        assert doc["registry"]["registry_type"] == "file"
    else:
        assert doc["online_store"] == {"type": "redis", "connection_string": "redis.example:6380,db=2"}
        assert doc["registry"]["path"] == "postgresql+psycopg2://u@db:5432/reg"
    from feast.repo_config import load_repo_config  # Feast itself accepts the file
    assert load_repo_config(tmp_path, tmp_path / "feature_store.yaml").project == "p1"


def test_config_and_input_errors_say_what_to_do(tmp_path):
    with pytest.raises(store.FeatureStoreError, match="choose one of"):
        store.FeatureStoreConfig(profile="cloud")
    (tmp_path / "in").mkdir()
    with pytest.raises(store.TableError, match="run `osteo ingest` first"):
        store.prepare_tables(tmp_path / "in", None, tmp_path / "repo")
    tables = fixture_tables(n_patients=2, seed=0)
    tables["vertebrae"] = tables["vertebrae"].drop(columns=["hu_p95"])
    ingest, texture = write_fixture(tmp_path / "in2", tables=tables)
    with pytest.raises(store.TableError, match=r"lacks contract columns \['hu_p95'\]"):
        store.prepare_tables(ingest, texture, tmp_path / "repo")
    cfg = store.FeatureStoreConfig(project="never_applied")
    with pytest.raises(store.FeatureStoreError, match="run materialize"):
        store.training_set(cfg, tmp_path / "empty_repo")
