"""Typed, validated documents (the bottom layer): YAML -> pydantic models -> a resolved Catalog.

No I/O beyond reading the documents the user names, no Ray, no torch. The names below load on first use, so
that importing one small module of the package (``spec.engine``, ``spec.defaults``: the CLI reads its flags from
them) does not load the loader and the catalog.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.spec.catalog import Catalog, builtin_dirs, load_catalog
    from orchestrator.spec.deployment import ModelDeployment
    from orchestrator.spec.fleet import Fleet, Pool
    from orchestrator.spec.hardware import HardwareProfile
    from orchestrator.spec.loader import KINDS, Loaded, load_documents
    from orchestrator.spec.model import Architecture, Model, Variant
    from orchestrator.spec.rollout import Rollout

_HOME = {"Catalog": "catalog", "builtin_dirs": "catalog", "load_catalog": "catalog",
         "ModelDeployment": "deployment", "Fleet": "fleet", "Pool": "fleet", "HardwareProfile": "hardware",
         "KINDS": "loader", "Loaded": "loader", "load_documents": "loader", "Architecture": "model",
         "Model": "model", "Variant": "model", "Rollout": "rollout"}

__all__ = ["KINDS", "Architecture", "Catalog", "Fleet", "HardwareProfile", "Loaded", "Model", "ModelDeployment",
           "Pool", "Rollout", "Variant", "builtin_dirs", "load_catalog", "load_documents"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
