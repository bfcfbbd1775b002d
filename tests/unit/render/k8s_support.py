"""Example plans (planned once per session, through the real planner) and strict schema validation.

Core objects are validated with kubernetes-validate against Kubernetes 1.33 in strict mode (unknown
fields are errors); custom resources against the CRD schemas kept in tests/data/crds (see SOURCES.md),
made strict the same way.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

K8S_VERSION = "1.33"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DATA = ROOT / "tests" / "data"
CRDS = DATA / "crds"
DEFS_ID = "https://kubernetes.io/api/_definitions.json"

# name -> (documents, fleet name)
EXAMPLES = {
    "maas": ([ROOT / "manifests" / "fleets" / "maas.yaml", ROOT / "manifests" / "deployments" / "maas.yaml"], "maas"),
    "local": ([ROOT / "manifests" / "local"], "local"),
    "multinode": ([HERE / "data" / "multinode.yaml"], "multinode"),
    "vendors": ([HERE / "data" / "vendors.yaml"], "vendors"),
    "pipeline-local": ([ROOT / "manifests" / "examples" / "pipeline-local", ROOT / "manifests" / "local" / "tiny-llama.yaml"],
                       "pipeline-local"),
}
# Vendor platforms whose profiles name no image: the operator passes one (--image).
VENDOR_IMAGES = {"vllm/mlu": "registry.example.com/vllm-mlu:0.9", "vllm/musa": "registry.example.com/vllm-musa:0.9"}


@functools.cache
def example(name: str) -> tuple[Any, Any, Any]:
    """(plan, catalog, fleet) of an example, planned with the real planner."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_catalog

    paths, fleet_name = EXAMPLES[name]
    catalog = load_catalog(paths)
    fleet = catalog.fleets[fleet_name]
    doc = plan(fleet, list(catalog.deployments.values()), catalog)
    return doc, catalog, fleet



BAD_VALUES = [
    {"assignmentz": []},
    {"router": {"replicas": -1}},
    {"modelStorage": {"type": "nfs"}},
    {"modelStorage": {"type": "objectStore"}},  # no remote
    {"monitoring": {"interval": "soon"}},
    {"plan": {"name": "has spaces"}},
]
"""Chart values the schema (and the values models) must refuse."""

@functools.cache
def rendered(name: str, namespace: str = "moxin") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(values, objects) of an example rendered through the chart."""
    from orchestrator.render.helm import helm_values
    from orchestrator.render.kubernetes import render_chart

    doc, catalog, fleet = example(name)
    values = helm_values(doc, catalog, fleet=fleet, namespace=namespace, images=VENDOR_IMAGES).values
    return values, render_chart(values, namespace=namespace)


# ------------------------------------------------------------------------------------------ schemas

@functools.cache
def _definitions() -> Any:
    import importlib.resources
    import json

    import referencing
    import referencing.jsonschema

    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    defs = json.loads((root / "_definitions.json").read_text())
    resource = referencing.Resource.from_contents(defs, default_specification=referencing.jsonschema.DRAFT202012)
    return referencing.Registry().with_resource(DEFS_ID, resource)


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation applies it: unknown fields are errors;
    embedded core types (x-moxin-core-schema) resolve to Kubernetes' own strict schema."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "x-moxin-core-schema" in schema:
        return {"$ref": f"{DEFS_ID}#/$defs/{schema['x-moxin-core-schema']}"}
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> Any:
    import jsonschema

    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if f"{crd['group']}/{crd['version']}" == api_version and crd["kind"] == kind:
            schema = _strict(copy.deepcopy(crd["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"$ref": f"{DEFS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema.setdefault("required", [])
            schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
            return jsonschema.Draft202012Validator(schema, registry=_definitions())
    return None


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not valid: core kinds by kubernetes-validate (1.33, strict), CRDs by their schema."""
    import kubernetes_validate

    validator = crd_validator(obj["apiVersion"], obj["kind"])
    if validator is not None:
        validator.validate(obj)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}
