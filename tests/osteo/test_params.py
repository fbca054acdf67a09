"""params.yaml loading: profile overlays, selection order, hashing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from osteo_config.params import ParamsError, deep_merge, load_params, params_hash

REPO = Path(__file__).resolve().parents[2]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 3}
    out = deep_merge(base, {"a": {"y": [9]}, "c": 4})
    assert out == {"a": {"x": 1, "y": [9]}, "b": 3, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 3}  # input untouched


def test_profile_selection_order(tmp_path, monkeypatch):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"profile": "tiny", "k": {"v": 0},
                                 "profiles": {"tiny": {"k": {"v": 1}}, "big": {"k": {"v": 2}}}}))
    monkeypatch.delenv("OSTEO_PROFILE", raising=False)
    assert load_params(f)["k"]["v"] == 1                      # file's profile key
    monkeypatch.setenv("OSTEO_PROFILE", "big")
    assert load_params(f)["k"]["v"] == 2                      # env beats the file
    assert load_params(f, "demo")["k"]["v"] == 0              # explicit beats env; demo = base
    assert "profiles" not in load_params(f)


def test_unknown_profile_and_missing_file_are_typed_errors(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("profile: demo\n")
    with pytest.raises(ParamsError, match="unknown profile 'nope'"):
        load_params(f, "nope")
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_repo_params_profiles_load_and_differ():
    demo, tiny, paper = (load_params(REPO / "params.yaml", p) for p in ("demo", "tiny", "paper"))
    assert tiny["cohort"]["scale"] < demo["cohort"]["scale"] < paper["cohort"]["scale"]
    assert params_hash(demo, ("ingest",)) != params_hash(tiny, ("ingest",))
    assert params_hash(demo) == params_hash(load_params(REPO / "params.yaml", "demo"))


def test_every_params_key_is_commented():
    """Every key name of the base values is commented (unit/range) at least once.

    Repeated records (sites, scanners, devices) document their schema at the
    first entry; profile overlays reuse the base keys.
    """
    commented, seen = set(), {}
    for n, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        if line.startswith("profiles:"):
            break
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("- ") or ":" not in s:
            continue
        key = s.split(":", 1)[0].strip()
        if "#" in s or s.endswith(":"):
            commented.add(key)
        seen.setdefault(key, n)
    missing = [f"{n}: {k}" for k, n in seen.items() if k not in commented]
    assert not missing, "params.yaml keys never commented:\n" + "\n".join(missing)
