"""An in-memory stand-in for what moxin uses of the Kubernetes dynamic client (``api.resources.get(...)``: server-side
apply, get, list by label, delete); every object sent is validated strictly (Kubernetes 1.33, CRDs by their
schemas). Deployments report as many available replicas as asked for, up to ``ready_cap``."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.render.k8s_support import validate


class _Result(dict):
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self))


class _Resource:
    def __init__(self, cluster: Cluster, api_version: str, kind: str) -> None:
        self.cluster, self.api_version, self.kind = cluster, api_version, kind

    def server_side_apply(self, body, name, namespace, field_manager, force_conflicts, dry_run=None):
        c = self.cluster
        if (self.kind, name) in c.fail_once:
            c.fail_once.discard((self.kind, name))
            raise OSError("connection reset (the driver was interrupted)")
        validate(body)
        key = (self.api_version, self.kind, name)
        old = c.live.get(key)
        c.applied.append((self.kind, name, field_manager))
        live = json.loads(json.dumps(body))
        if self.kind == "ConfigMap" and old is not None:  # server-side apply: each manager owns its own keys
            live["data"] = {**old.get("data", {}), **body.get("data", {})}
        generation = (old or {}).get("metadata", {}).get("generation", 0) + (old is None or old.get("spec") != body.get("spec"))
        live["metadata"]["generation"] = generation
        if self.kind == "Deployment":
            n = body["spec"].get("replicas", 1)
            live["status"] = {"observedGeneration": generation, "replicas": n, "updatedReplicas": n,
                              "availableReplicas": min(n, c.ready_cap.get(name, n))}
        c.live[key] = live
        return _Result(live)

    def get(self, name=None, namespace=None, label_selector=None):
        if name is not None:
            return _Result(self.cluster.live[(self.api_version, self.kind, name)])
        k, v = label_selector.split("=")
        return _Result({"items": [o for (av, kd, _), o in self.cluster.live.items()
                                  if (av, kd) == (self.api_version, self.kind)
                                  and o["metadata"].get("labels", {}).get(k) == v]})

    def delete(self, name, namespace, body):
        self.cluster.deleted.append((self.kind, name))
        del self.cluster.live[(self.api_version, self.kind, name)]


class Cluster:
    """What moxin uses of the dynamic client; ConfigMap data merges across field managers as with SSA."""

    def __init__(self) -> None:
        self.live: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self.fail_once: set[tuple[str, str]] = set()
        self.ready_cap: dict[str, int] = {}
        self.resources = self

    def get(self, api_version: str, kind: str) -> _Resource:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        if kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
            raise ResourceNotFoundError(kind)
        return _Resource(self, api_version, kind)

    def names(self, kind: str) -> list[str]:
        return sorted(n for (_, k, n) in self.live if k == kind)

    def table(self) -> dict[str, Any]:
        return json.loads(self.live[("v1", "ConfigMap", "moxin-router")]["data"]["router.json"])

    def router_checksum(self) -> str:
        return self.live[("apps/v1", "Deployment", "moxin-router")]["spec"]["template"]["metadata"][
            "annotations"]["checksum/config"]

    def state(self, name: str = "moxin-rollout-tiny-to-mlx") -> dict[str, Any]:
        return json.loads(self.live[("v1", "ConfigMap", name)]["data"]["state.json"])
