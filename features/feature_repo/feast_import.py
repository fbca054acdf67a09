"""Importing Feast with or without typeguard's import-time instrumentation (``features_store.feast_typechecks``).

Feast decorates its API classes (``Entity``, ``FeatureView``, ``Field``, the data sources, ...) with
typeguard's ``@typechecked``, which re-reads each decorated method's module source, rewrites its syntax
tree and recompiles it, every time a process imports Feast: ~2,250 compilations, 5-12 s of CPU per
process on the 2-core machine (``python -X importtime -c "import feast"``; typeguard issue #468 and
featurebyte's override describe the same cost). typeguard itself documents the decorator as a no-op
under ``python -O`` ("checks aren't meant to be run in production"); ``import_feast(False)`` gives Feast
that same no-op for its own modules only, without ``-O``'s other effects (no ``assert`` is stripped
anywhere). The checks only verify the types of arguments passed to Feast's constructors; the project's
definitions are verified with them on (``tests/features/test_feast_import.py`` builds them with
``import_feast(True)``).

Process-wide and decided once: the first import of Feast in a process fixes whether its classes are
instrumented; later calls return the already-imported module whatever they ask for.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

# Feast's modules that import ``typechecked`` at their top and are loaded by ``import feast`` or by the
# project's definitions; submodules imported later by Feast itself (e.g. another store's data source) are
# instrumented as typeguard decides, which costs only their own import.
_EAGER = ("feast", "feast.feature_store", "feast.data_format", "feast.types",
          "feast.infra.offline_stores.file_source")


def _no_op_typechecked(target: Any = None, **_options: Any) -> Any:
    """typeguard's ``typechecked`` as it behaves under ``python -O``: the target unchanged."""
    if target is None:
        return _no_op_typechecked
    return target


def import_feast(typechecks: bool) -> ModuleType:
    """Import Feast (once per process) and return the ``feast`` module.

    Args:
        typechecks: True = Feast as installed (typeguard instruments its classes at import);
            False = typeguard's decorator is a no-op while Feast's modules load (as under ``python -O``).
    """
    if "feast" in sys.modules:
        return sys.modules["feast"]
    import typeguard

    original = typeguard.typechecked
    if not typechecks:
        typeguard.typechecked = _no_op_typechecked
    try:
        for name in _EAGER:
            importlib.import_module(name)
    finally:
        typeguard.typechecked = original
    return sys.modules["feast"]
