"""The objects of a rollout on Kubernetes: the chart rendered for a plan holding both sides, with the split.

Where it sits: ``runtime/k8s_rollout.py`` decides the plan of each pass (the old side scaled, the new side's
assignment added) and calls the renderer ``renderer`` returns; this module turns that into objects, as
``render_objects`` does for a plan, plus two things a rollout needs:

- the router's table carries the split (``helm.with_split``): the new side's routes marked ``"side": "canary"``
  and ``splits[deployment].canaryPercent``;
- the router Deployment's ``checksum/config`` annotation is the running plan's, so moving the split (a change of
  the ConfigMap, which the router reloads) does not roll the routers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from orchestrator.render.helm import helm_values, with_split
from orchestrator.render.kubernetes import RELEASE, render_chart
from orchestrator.rollout.sides import Renderer, Split
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.plan import Plan

ROUTER_CHECKSUM = "checksum/config"


def renderer(running: Plan, catalog: Catalog, *, namespace: str, fleet: Fleet | None = None,
             images: Mapping[str, str] | None = None, release: str = RELEASE,
             overrides: Mapping[str, Any] | None = None) -> Renderer:
    """A Renderer for rollouts of ``running`` (the plan serving now)."""
    overrides = dict(overrides if overrides is not None else {"managedBy": "moxin"})

    def values(plan: Plan) -> dict[str, Any]:
        return helm_values(plan, catalog, fleet=fleet, namespace=namespace, images=images,
                           overrides=overrides).values

    pinned: dict[str, str] = {}

    def render(plan: Plan, split: Split | None) -> list[dict[str, Any]]:
        v = values(plan)
        if split is None:
            return render_chart(v, namespace=namespace, release=release)
        v["router"]["config"] = with_split(v["router"]["config"], split.deployment, split.canary,
                                           split.canary_percent)
        if not pinned:
            pinned.update(_checksums(render_chart(values(running), namespace=namespace, release=release)))
        return pin_checksums(render_chart(v, namespace=namespace, release=release), pinned)

    return render


def _checksums(objects: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for o in objects:
        annotations = _template_annotations(o)
        if ROUTER_CHECKSUM in annotations:
            out[o["metadata"]["name"]] = annotations[ROUTER_CHECKSUM]
    return out


def _template_annotations(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") != "Deployment":
        return {}
    return ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}


def pin_checksums(objects: list[dict[str, Any]], pinned: Mapping[str, str]) -> list[dict[str, Any]]:
    """``objects`` with each named Deployment's ``checksum/config`` set to ``pinned[name]``."""
    out = []
    for o in objects:
        name = o["metadata"]["name"]
        if name in pinned and ROUTER_CHECKSUM in _template_annotations(o):
            o = copy.deepcopy(o)
            o["spec"]["template"]["metadata"]["annotations"][ROUTER_CHECKSUM] = pinned[name]
        out.append(o)
    return out
