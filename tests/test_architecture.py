"""The dependency arrows of ../shared/STYLE.md rule 2, checked on every import (module level and lazy).

CLI (``osteo``) -> ``flows`` -> {``registry``, ``osteo_model``, ``features``, ``data_checks``, ``cohort``}
-> ``osteo_config`` (a leaf). ``registry`` imports no torch, ``features`` no ``osteo_model``; nothing in
production imports the test helpers (``osteo_testing``); library functions take typed configs, never a
``params`` mapping.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("osteo", "osteo_config", "flows", "features", "data_checks", "registry", "osteo_model", "cohort", "screening",
           "osteo_testing")
LIBRARIES = ("features", "data_checks", "registry", "osteo_model", "cohort", "screening")
PRODUCTION = ("osteo", "osteo_config", "flows", *LIBRARIES)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _forbidden(package: str) -> dict[str, str]:
    """Imported top-level name -> why it is forbidden in ``package``."""
    rules: dict[str, str] = {}
    if package == "osteo_config":
        rules.update({p: "the configuration package is a leaf" for p in PROJECT if p != "osteo_config"})
    if package in LIBRARIES:
        rules.update({"osteo": "libraries never import the CLI package", "flows": "only the CLI imports flows/"})
    if package == "flows":
        rules["osteo"] = "flows never import the CLI package"
    if package == "registry":
        rules["torch"] = "registry/ never imports torch"
    if package == "features":
        rules["osteo_model"] = "features/ never imports osteo_model/"
    if package in PRODUCTION:
        rules["osteo_testing"] = "production never imports the test helpers"
    return rules


def _params_parameters(path: Path) -> list[str]:
    """Functions whose parameter ``params`` is annotated as a dict/Mapping (the merged params travelling deep)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in node.args.args + node.args.kwonlyargs:
                ann = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg == "params" and any(k in ann for k in ("dict", "Mapping", "Params")):
                    bad.append(f"{path.relative_to(path.parents[1])}:{node.lineno} {node.name}({arg.arg}: {ann})")
    return bad


def violations(root: Path) -> list[str]:
    """Every forbidden arrow under ``root`` as ``file:line: imports X (why)``."""
    found = []
    for package in PRODUCTION:
        rules = _forbidden(package)
        for path in sorted((root / package).rglob("*.py")):
            for line, name in _imports(path):
                if name in rules:
                    found.append(f"{path.relative_to(root)}:{line}: imports {name} ({rules[name]})")
        if package in ("features", "data_checks", "registry", "osteo_model"):
            found += [f"{b} (libraries take typed configs)" for p in sorted((root / package).rglob("*.py"))
                      for b in _params_parameters(p)]
    return found


# The oracle reads the simulator's truth: only the ablation report may see it, never training or evaluation.
ORACLE_MODULE = "osteo_model.oracle"
ORACLE_READERS = ("osteo_model/ablation.py", "osteo_model/oracle.py")


def oracle_violations(root: Path) -> list[str]:
    """``file:line`` of every production import of :data:`ORACLE_MODULE` outside :data:`ORACLE_READERS`."""
    found = []
    for package in PRODUCTION:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ORACLE_READERS:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if ORACLE_MODULE in names:
                    found.append(f"{rel}:{node.lineno}: imports {ORACLE_MODULE} (the simulator truth is for "
                                 "the ablation report only, never training or evaluation)")
    return found


def test_the_dependency_arrows_hold_on_the_repository():
    assert violations(REPO) == []
    assert oracle_violations(REPO) == []


@pytest.mark.parametrize("where, source", [
    ("osteo_model/evaluate.py", "from osteo_model.oracle import oracle_tidy\n"),
    ("osteo_model/experiment.py", "def f():\n    from osteo_model import oracle\n"),
    ("osteo/steps.py", "import osteo_model.oracle\n"),
])
def test_an_oracle_import_outside_the_report_is_reported(tmp_path, where, source):
    for p in PRODUCTION:
        (tmp_path / p).mkdir()
    (tmp_path / "osteo_model" / "ablation.py").write_text("from osteo_model.oracle import ORACLE_ARM\n")
    (tmp_path / where).write_text(textwrap.dedent(source))
    found = oracle_violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(where) and "ablation report only" in found[0]


@pytest.mark.parametrize("package, source, reason", [
    ("osteo_model", "from osteo import steps\n", "libraries never import the CLI package"),
    ("features", "def f():\n    import flows.retrain\n", "only the CLI imports flows/"),
    ("registry", "import torch\n", "registry/ never imports torch"),
    ("features", "from osteo_model.config import ModelConfig\n", "features/ never imports osteo_model/"),
    ("osteo_config", "from features.ingest import roi_spec\n", "the configuration package is a leaf"),
    ("flows", "from osteo.cli import app\n", "flows never import the CLI package"),
    ("cohort", "from osteo_testing import feature_fixtures\n", "production never imports the test helpers"),
    ("data_checks", "from typing import Mapping\ndef run(params: Mapping) -> None:\n    pass\n",
     "libraries take typed configs"),
])
def test_an_arrow_added_back_is_reported(tmp_path, package, source, reason):
    for p in PRODUCTION:
        (tmp_path / p).mkdir()
        (tmp_path / p / "__init__.py").write_text("")
    (tmp_path / package / "bad.py").write_text(textwrap.dedent(source))
    found = violations(tmp_path)
    assert len(found) == 1 and f"{package}/bad.py" in found[0] and reason in found[0]

