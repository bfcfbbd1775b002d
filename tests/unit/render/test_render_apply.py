"""`apply_objects`: server-side apply as "moxin", prune by plan label, wait for rollout — and dry runs.

A small in-memory stand-in for the dynamic client checks the logic; a real API server is used only when
KUBECONFIG points at one.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from k8s_support import rendered

from orchestrator.runtime.kubernetes import (
    Key,
    KubernetesError,
    apply_objects,
    plan_objects,
    rollout_state,
    stale,
)

pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (the k8s extra)")
pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")


class _Result(dict):
    def to_dict(self) -> dict[str, Any]:
        return dict(self)


class _Resource:
    def __init__(self, store: dict, api_version: str, kind: str) -> None:
        self.store, self.api_version, self.kind = store, api_version, kind

    def server_side_apply(self, body, name, namespace, field_manager, force_conflicts, dry_run=None):
        self.store["calls"].append((self.kind, name, namespace, field_manager, force_conflicts, dry_run))
        if dry_run is None:
            live = {**body, "metadata": {**body["metadata"], "generation": 1}}
            spec = body.get("spec", {})
            if self.kind == "Deployment":
                n = spec.get("replicas", 1)
                live["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "availableReplicas": n}
            if self.kind == "LeaderWorkerSet":
                n = spec.get("replicas", 1)
                live["status"] = {"readyReplicas": n, "updatedReplicas": n}
            self.store["live"][(self.api_version, self.kind, name)] = live
        return _Result(body)

    def get(self, name=None, namespace=None, label_selector=None):
        if name is not None:
            return _Result(self.store["live"][(self.api_version, self.kind, name)])
        key, value = label_selector.split("=")
        items = [o for (v, k, _), o in self.store["live"].items() if (v, k) == (self.api_version, self.kind)
                 and o["metadata"].get("labels", {}).get(key) == value]
        return _Result({"items": items})

    def delete(self, name, namespace, body):
        self.store["deleted"].append((self.kind, name))
        del self.store["live"][(self.api_version, self.kind, name)]


class FakeCluster:
    """What the dynamic client offers moxin: resources.get(api_version, kind) -> a resource."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.store: dict[str, Any] = {"calls": [], "live": {}, "deleted": []}
        self.missing = missing
        self.resources = self

    def get(self, api_version: str, kind: str) -> _Resource:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        if kind in self.missing:
            raise ResourceNotFoundError(f"no {kind}")
        return _Resource(self.store, api_version, kind)


def _objects(name: str = "multinode") -> list[dict[str, Any]]:
    return rendered(name)[1]


def test_dry_run_without_a_cluster_lists_every_object_it_would_apply(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    objects = _objects()
    lines = apply_objects(objects, namespace="moxin", plan_name="multinode", dry_run=True)
    assert [ln.split(" ")[2] for ln in lines[:len(objects)]] == [f"{o['kind']}/{o['metadata']['name']}"
                                                                   for o in objects]
    assert "LeaderWorkerSet/llama-70b-bf16-l40s" in " ".join(lines)
    with pytest.raises(KubernetesError, match="KUBECONFIG"):
        apply_objects(objects, namespace="moxin", plan_name="multinode", dry_run=False)


def test_apply_is_server_side_as_moxin_then_waits_for_rollout():
    cluster = FakeCluster()
    objects = _objects()
    lines = apply_objects(objects, namespace="serving", plan_name="multinode", dry_run=False, client=cluster,
                          sleep=lambda s: None)
    calls = cluster.store["calls"]
    assert len(calls) == len(objects)
    assert {(c[2], c[3], c[4], c[5]) for c in calls} == {("serving", "moxin", True, None)}
    assert "rolled out LeaderWorkerSet/llama-70b-bf16-l40s: 1/1 groups ready" in lines
    assert all(o["metadata"]["labels"]["moxin.dev/plan"] == "multinode" for o in cluster.store["live"].values())


def test_prune_deletes_what_the_plan_no_longer_renders_and_only_that():
    cluster = FakeCluster()
    objects = _objects()
    apply_objects(objects, namespace="moxin", plan_name="multinode", dry_run=False, client=cluster, wait_s=0)
    fewer = [o for o in objects if o["kind"] != "PodMonitor"]
    lines = apply_objects(fewer, namespace="moxin", plan_name="multinode", dry_run=False, client=cluster, wait_s=0)
    assert cluster.store["deleted"] == [("PodMonitor", "llama-70b-bf16-l40s")]
    assert "pruned PodMonitor/llama-70b-bf16-l40s" in lines
    dry = apply_objects(fewer[:-1], namespace="moxin", plan_name="multinode", dry_run=True, client=cluster)
    assert any(ln.startswith("would prune") for ln in dry)
    assert {c[5] for c in cluster.store["calls"][-len(fewer) + 1:]} == {"All"}
    assert len(cluster.store["deleted"]) == 1  # the dry run deleted nothing


def test_missing_monitoring_crds_are_skipped_but_a_missing_workload_api_is_an_error():
    lines = apply_objects(_objects(), namespace="moxin", plan_name="multinode", dry_run=False,
                          client=FakeCluster(missing=("PodMonitor", "ServiceMonitor", "PrometheusRule")), wait_s=0)
    assert any(ln.startswith("skipped PodMonitor/") for ln in lines)
    with pytest.raises(KubernetesError, match="LeaderWorkerSet"):
        apply_objects(_objects(), namespace="moxin", plan_name="multinode", dry_run=False,
                      client=FakeCluster(missing=("LeaderWorkerSet",)), wait_s=0)


def test_objects_of_another_plan_are_refused():
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"moxin.dev/plan": "b"}}}
    with pytest.raises(KubernetesError, match="plan 'b'"):
        plan_objects([obj], "moxin", "a")
    (out,) = plan_objects([{**obj, "metadata": {"name": "x"}}], "ns", "a")
    assert out["metadata"] == {"name": "x", "namespace": "ns", "labels": {"moxin.dev/plan": "a"}}


def test_stale_and_rollout_state():
    a, b = Key("v1", "Service", "a"), Key("v1", "Service", "b")
    assert stale([a, b], [a]) == [b]
    dep = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}}
    assert rollout_state(dep) == (False, "1/2 available, 2 updated")
    dep["status"]["availableReplicas"] = 2
    assert rollout_state(dep)[0]
    dep["metadata"]["generation"] = 3
    assert not rollout_state(dep)[0]


def test_rollout_timeout_names_what_is_not_ready():
    cluster = FakeCluster()
    objects = [o for o in _objects() if o["kind"] == "Deployment"]
    apply_objects(objects, namespace="moxin", plan_name="multinode", dry_run=False, client=cluster, wait_s=0)
    for live in cluster.store["live"].values():
        live["status"]["availableReplicas"] = 0
    original = _Resource.server_side_apply
    try:
        _Resource.server_side_apply = lambda self, body, **kw: _Result(body)  # the cluster keeps the stale status
        with pytest.raises(KubernetesError, match="not rolled out within"):
            apply_objects(objects, namespace="moxin", plan_name="multinode", dry_run=False, client=cluster,
                          wait_s=0.01, sleep=lambda s: None)
    finally:
        _Resource.server_side_apply = original


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                    reason="no KUBECONFIG: applying to a real API server needs a cluster (none can run here)")
def test_server_side_dry_run_against_a_real_api_server():
    from kubernetes import config

    config.load_kube_config()
    objects = [o for o in _objects("local") if o["apiVersion"] in ("v1", "apps/v1", "policy/v1")]
    lines = apply_objects(objects, namespace="default", plan_name="local", dry_run=True, prune=False)
    assert all(ln.startswith("would apply") for ln in lines)
