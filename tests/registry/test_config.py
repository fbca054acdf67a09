"""One place for the MLflow URI: runs (TrackingConfig) and registry (RegistryConfig) resolve the same database."""
from __future__ import annotations

from pathlib import Path

import pytest

from osteo_config.params import ParamsError, load_params
from osteo_config.tracking import resolve_tracking_uri
from osteo_model.tracking import TrackingConfig
from registry.config import RegistryConfig
from registry.errors import RegistryConfigError

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow"


@pytest.mark.parametrize("profile, expected", [("local", "sqlite:///runs.db"), ("production", PG)])
def test_tracking_and_registry_resolve_the_same_uri(profile, expected):
    params = {"tracking": {"profile": profile, "uri": "sqlite:///runs.db", "production_uri": PG},
              "registry": {"model_name": "m"}}
    assert TrackingConfig.from_params(params).active_uri == expected
    assert RegistryConfig.from_params(params).uri == expected


def test_repo_params_keep_the_uri_in_the_tracking_section_only():
    for profile in ("demo", "tiny", "paper"):
        params = load_params(REPO / "params.yaml", profile)
        assert not {"tracking_uri", "production_tracking_uri", "profile"} & set(params["registry"])
        assert RegistryConfig.from_params(params).uri == TrackingConfig.from_params(params).active_uri \
            == params["tracking"]["uri"]                                         # local profile by default
        assert params["tracking"]["production_uri"].startswith("postgresql")


def test_old_registry_uri_keys_name_their_new_place():
    with pytest.raises(RegistryConfigError, match=r"registry.tracking_uri -> tracking.uri"):
        RegistryConfig.from_params({"registry": {"tracking_uri": "sqlite:///x.db"}})
    with pytest.raises(RegistryConfigError, match=r"registry.profile -> tracking.profile"):
        RegistryConfig.from_params({"registry": {"profile": "production"}})


def test_bad_profiles_and_uris_are_typed_errors():
    with pytest.raises(ParamsError, match="tracking.profile='staging'"):
        resolve_tracking_uri({"profile": "staging"})
    with pytest.raises(ParamsError, match="production_uri"):
        TrackingConfig(profile="production")
    with pytest.raises(RegistryConfigError, match="production_uri"):
        RegistryConfig.from_params({"tracking": {"profile": "production"}})
    # an HTTP tracking server holds runs and the registry, but not the audit log and lock: registry.lock_uri does
    http = {"tracking": {"uri": "http://127.0.0.1:5000"}}
    assert TrackingConfig.from_params(http).active_uri == "http://127.0.0.1:5000"
    with pytest.raises(RegistryConfigError, match="set registry.lock_uri"):
        RegistryConfig.from_params(http)
    pg = "postgresql+psycopg2://postgres@127.0.0.1:5432/osteo_registry"
    cfg = RegistryConfig.from_params({**http, "registry": {"lock_uri": pg}})
    assert (cfg.uri, cfg.store_uri) == ("http://127.0.0.1:5000", pg)
    assert RegistryConfig.from_params({"registry": {"lock_uri": ""}}).store_uri == "sqlite:///mlflow.db"
    with pytest.raises(RegistryConfigError, match="lock_uri='http://x'"):
        RegistryConfig.from_params({**http, "registry": {"lock_uri": "http://x"}})
    with pytest.raises(RegistryConfigError, match="approval='maybe'"):
        RegistryConfig.from_params({"registry": {"approval": "maybe"}})
    with pytest.raises(RegistryConfigError, match="ftp://x"):
        RegistryConfig(uri="ftp://x")
