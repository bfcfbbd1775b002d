"""Typed, validated documents (the bottom layer): YAML -> pydantic models -> a resolved Catalog.

No I/O beyond reading the documents the user names, no Ray, no torch.
"""

from orchestrator.spec.catalog import Catalog, builtin_dirs, load_catalog
from orchestrator.spec.deployment import ModelDeployment
from orchestrator.spec.fleet import Fleet, Pool
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.loader import KINDS, Loaded, load_documents
from orchestrator.spec.model import Architecture, Model, Variant
from orchestrator.spec.rollout import Rollout

__all__ = ["KINDS", "Architecture", "Catalog", "Fleet", "HardwareProfile", "Loaded", "Model", "ModelDeployment",
           "Pool", "Rollout", "Variant", "builtin_dirs", "load_catalog", "load_documents"]
