"""features.feature_repo.feast_import: Feast with and without typeguard's instrumentation.

Each case runs in a fresh interpreter: whether Feast's classes are instrumented is decided by the first
import of Feast in a process (this test process has usually imported it already, with the checks on).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: import Feast as asked, report whether typeguard's decorator is restored, whether a
# wrong argument type is caught by typeguard, and build the repository's definitions with it.
PROBE = r"""
import json, sys
import typeguard
from features.feature_repo.feast_import import import_feast
original = typeguard.typechecked
feast = import_feast({typechecks})
again = import_feast(not {typechecks})
out = {{"restored": typeguard.typechecked is original, "same_module": again is feast}}
try:
    feast.Entity(name=123, join_keys=["k"], value_type=feast.ValueType.STRING)
    out["wrong_type"] = "accepted"
except typeguard.TypeCheckError as exc:
    out["wrong_type"] = "TypeCheckError: " + str(exc)
from features.feature_repo.definitions import RepoSpec, build_definitions
objs = build_definitions(RepoSpec(window_days=183, ct_ttl_days=36500,
                                  ct_fields=(("hu_mean", "Float64"), ("scanner", "String")), ct_schema_sha256="0" * 64))
out["objects"] = sorted(type(o).__name__ for o in objs)
print(json.dumps(out))
"""


def _probe(typechecks: bool) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE.format(typechecks=typechecks)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_with_the_checks_on_feast_refuses_a_wrong_type_and_the_definitions_pass_them():
    out = _probe(True)
    assert out["restored"] and out["same_module"]  # typeguard untouched afterwards; the first import decides
    assert out["wrong_type"].startswith("TypeCheckError") and '"name"' in out["wrong_type"]
    assert out["objects"].count("FeatureView") == 3 and "FeatureService" in out["objects"]
    assert out["objects"].count("Entity") == 3


def test_the_store_config_refuses_a_non_boolean_switch():
    from osteo_config.store import FeatureStoreConfig, FeatureStoreError

    with pytest.raises(FeatureStoreError, match="feast_typechecks"):
        FeatureStoreConfig(feast_typechecks="no")
    assert FeatureStoreConfig.from_params({"features_store": {"feast_typechecks": True}}).feast_typechecks is True


# The stage path: materialize (apply + materialisation) in a fresh interpreter with the switch off (the
# default): Feast must have been imported without instrumentation, as under python -O (the definitions module imports Feast at its top, so every entry point of
# features.store imports Feast as configured before it).
STAGE_PROBE = r"""
import json, sys, tempfile
from pathlib import Path
import typeguard
from features import store
from osteo_testing.feature_fixtures import fixture_tables, write_fixture
root = Path(tempfile.mkdtemp())
ingest, texture = write_fixture(root / "in", tables=fixture_tables(n_patients=8, seed=4))
cfg = store.FeatureStoreConfig(project="osteo_probe", feast_typechecks={typechecks})
assert "feast" not in sys.modules
original = typeguard.typechecked
summary = store.materialize(cfg, ingest, texture, root / "repo")
assert typeguard.typechecked is original
import feast
try:
    feast.Entity(name=123, join_keys=["k"], value_type=feast.ValueType.STRING)
    checked = False
except typeguard.TypeCheckError:
    checked = True
print(json.dumps({{"checked": checked, "ct_rows": summary.ct_rows}}))
"""


def test_the_store_imports_feast_as_configured_before_its_definitions():
    res = subprocess.run([sys.executable, "-c", STAGE_PROBE.format(typechecks=False)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"checked": False, "ct_rows": out["ct_rows"]} and out["ct_rows"] > 0
