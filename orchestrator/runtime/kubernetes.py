"""Apply rendered objects to a Kubernetes cluster: server-side apply, prune by plan label, wait for rollout.

Effects at the edge: ``render/kubernetes.py`` decides every object; this module only sends them, as field
manager "moxin", deletes what carries this plan's label but is no longer rendered, and waits until the
workloads report ready. Decisions are values first (``plan_actions``), so a dry run with no cluster at
all still says exactly what would be applied. The Kubernetes client is imported only here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import MoxinError

FIELD_MANAGER = "moxin"
PLAN_LABEL = "moxin.dev/plan"
# Kinds moxin creates and may therefore prune (never PersistentVolumeClaims: checkpoints outlive plans).
PRUNABLE = [("v1", "ConfigMap"), ("v1", "Service"), ("v1", "ServiceAccount"),
            ("networking.k8s.io/v1", "NetworkPolicy"), ("discovery.k8s.io/v1", "EndpointSlice"), ("apps/v1", "Deployment"), ("batch/v1", "Job"),
            ("policy/v1", "PodDisruptionBudget"), ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
            ("ray.io/v1", "RayCluster"), ("monitoring.coreos.com/v1", "PodMonitor"),
            ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")]
# Monitoring objects are optional: a cluster without prometheus-operator skips them with a note.
OPTIONAL_GROUPS = {"monitoring.coreos.com"}
POLL_S = 2.0


class KubernetesError(MoxinError):
    """The cluster refused or could not be reached (exit code 2: fix the cluster, the config or the plan)."""

    exit_code = 2


@dataclass(frozen=True)
class Key:
    api_version: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def key_of(obj: dict[str, Any]) -> Key:
    return Key(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def plan_objects(objects: Iterable[dict[str, Any]], namespace: str, plan_name: str) -> list[dict[str, Any]]:
    """The objects as they will be sent: in ``namespace``, labelled with the plan (what prune selects by).
    Refuses an object labelled for another plan: pruning would then delete what it should keep."""
    out = []
    for obj in objects:
        meta = dict(obj.get("metadata") or {})
        labels = dict(meta.get("labels") or {})
        if labels.get(PLAN_LABEL, plan_name) != plan_name:
            raise KubernetesError(f"{obj['kind']}/{meta.get('name')} belongs to plan {labels[PLAN_LABEL]!r}, "
                                  f"not {plan_name!r}: render and apply one plan at a time")
        labels[PLAN_LABEL] = plan_name
        meta.update(namespace=namespace, labels=labels)
        out.append({**obj, "metadata": meta})
    return out


def stale(live: Iterable[Key], desired: Iterable[Key]) -> list[Key]:
    """Live objects of the plan that the new rendering no longer has: what prune deletes."""
    keep = set(desired)
    return sorted((k for k in live if k not in keep), key=lambda k: (k.kind, k.name))


def rollout_state(obj: dict[str, Any]) -> tuple[bool, str]:
    """Whether a workload has rolled out, and what it waits for. Objects without a rollout are done."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    kind = obj.get("kind")
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if kind == "Deployment":
        want = int(spec.get("replicas", 1))
        if status.get("observedGeneration", 0) < generation:
            return False, "waiting for the controller to see the new spec"
        updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
        if updated < want or available < want or status.get("replicas", 0) > want:
            return False, f"{available}/{want} available, {updated} updated"
        return True, f"{available}/{want} available"
    if kind == "LeaderWorkerSet":
        want = int(spec.get("replicas", 1))
        ready, updated = status.get("readyReplicas", 0), status.get("updatedReplicas", 0)
        if ready < want or updated < want:
            return False, f"{ready}/{want} groups ready, {updated} updated"
        return True, f"{ready}/{want} groups ready"
    if kind == "RayCluster":
        state = status.get("state")
        return state == "ready", f"state {state or 'unknown'}"
    return True, "applied"


def _client() -> Any:
    """A dynamic client for $KUBECONFIG (or the in-cluster service account); None when neither exists."""
    try:
        from kubernetes import config, dynamic
        from kubernetes.client import api_client
    except ImportError:
        raise KubernetesError("the kubernetes client is not installed: pip install 'moxin[k8s]'") from None
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (config.ConfigException, OSError, TypeError, ValueError):  # all mean "no usable configuration"
        return None
    return dynamic.DynamicClient(api_client.ApiClient())


def _resource(client: Any, api_version: str, kind: str) -> Any | None:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        return client.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        return None


def _api_errors() -> tuple[type[BaseException], ...]:
    """What a call to the API server raises when the server refuses or cannot be reached."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError

    return ApiException, DynamicApiError, urllib3.exceptions.HTTPError, OSError


def _api_error(exc: BaseException, what: str) -> KubernetesError:
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: str(exc))()
    return KubernetesError(f"{what}: {body}")


def apply_objects(objects: list[dict[str, Any]], *, namespace: str, plan_name: str, dry_run: bool,
                  prune: bool = True, wait_s: float = 600,
                  client: Any = None, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Server-side apply ``objects`` into ``namespace`` as field manager "moxin", delete the plan's objects
    that are no longer rendered (``prune``), and wait up to ``wait_s`` for workloads to roll out.
    ``dry_run`` asks the server to check everything and change nothing; with no cluster configured it
    lists what would be applied. Returns one line per thing done."""
    desired = plan_objects(objects, namespace, plan_name)
    client = client if client is not None else _client()
    if client is None:
        if not dry_run:
            raise KubernetesError("no Kubernetes cluster configured: set KUBECONFIG (or run inside a cluster)\n"
                                  "  To fix: export KUBECONFIG=~/.kube/config, or use --dry-run to see the objects")
        return [f"would apply {key_of(o)} (no cluster configured: not checked by a server)" for o in desired] + \
               ([f"would prune objects labelled {PLAN_LABEL}={plan_name} that the plan no longer has"] if prune else [])
    lines: list[str] = []
    applied: list[dict[str, Any]] = []
    for obj in desired:
        key = key_of(obj)
        res = _resource(client, key.api_version, key.kind)
        if res is None:
            group = key.api_version.split("/")[0] if "/" in key.api_version else ""
            if group in OPTIONAL_GROUPS:
                lines.append(f"skipped {key}: the cluster has no {key.api_version} {key.kind} API "
                             "(install prometheus-operator's CRDs to get it)")
                continue
            raise KubernetesError(f"the cluster has no {key.api_version} {key.kind} API, which {key} needs\n"
                                  f"  To fix: install its controller and CRDs (LeaderWorkerSet: kubernetes-sigs/lws; "
                                  "RayCluster: KubeRay)")
        try:
            live = res.server_side_apply(body=obj, name=key.name, namespace=namespace, field_manager=FIELD_MANAGER,
                                         force_conflicts=True, dry_run="All" if dry_run else None)
        except _api_errors() as exc:  # report the server's reason
            raise _api_error(exc, f"applying {key}") from None
        applied.append(live.to_dict() if hasattr(live, "to_dict") else obj)
        lines.append(f"{'would apply' if dry_run else 'applied'} {key}")
    if prune:
        lines += _prune(client, namespace, plan_name, [key_of(o) for o in desired], dry_run)
    if not dry_run and wait_s > 0:
        lines += _wait(client, namespace, applied, wait_s, sleep)
    return lines


def _prune(client: Any, namespace: str, plan_name: str, desired: list[Key], dry_run: bool) -> list[str]:
    lines = []
    for api_version, kind in PRUNABLE:
        res = _resource(client, api_version, kind)
        if res is None:
            continue
        try:
            found = res.get(namespace=namespace, label_selector=f"{PLAN_LABEL}={plan_name}")
        except _api_errors() as exc:
            raise _api_error(exc, f"listing {kind} to prune") from None
        live = [Key(api_version, kind, item["metadata"]["name"]) for item in found.to_dict().get("items", [])]
        for key in stale(live, desired):
            if not dry_run:
                try:
                    res.delete(name=key.name, namespace=namespace, body={"propagationPolicy": "Foreground"})
                except _api_errors() as exc:
                    raise _api_error(exc, f"pruning {key}") from None
            lines.append(f"{'would prune' if dry_run else 'pruned'} {key}")
    return lines


def _wait(client: Any, namespace: str, applied: list[dict[str, Any]], wait_s: float,
          sleep: Callable[[float], None]) -> list[str]:
    workloads = [key_of(o) for o in applied if o.get("kind") in ("Deployment", "LeaderWorkerSet", "RayCluster")]
    deadline = time.monotonic() + wait_s
    pending = {k: "not observed yet" for k in workloads}
    lines = []
    while pending:
        for key in list(pending):
            res = _resource(client, key.api_version, key.kind)
            try:
                live = res.get(name=key.name, namespace=namespace).to_dict()
            except _api_errors() as exc:
                raise _api_error(exc, f"reading {key}") from None
            done, why = rollout_state(live)
            if done:
                del pending[key]
                lines.append(f"rolled out {key}: {why}")
            else:
                pending[key] = why
        if pending and time.monotonic() >= deadline:
            waiting = "; ".join(f"{k}: {why}" for k, why in sorted(pending.items(), key=lambda kv: str(kv[0])))
            raise KubernetesError(f"not rolled out within {wait_s:g} s: {waiting}\n  To fix: check "
                                  f"`kubectl -n {namespace} get pods -l {PLAN_LABEL}` (image pulls, devices, "
                                  "probes), then apply again")
        if pending:
            sleep(POLL_S)
    return lines
