"""Plan -> KubeRay objects: a RayCluster shaped like the fleet, and a Job that runs moxin's controller on it.

Pure: (Plan, catalog, optional fleet, options) -> objects (+ warnings). The RayCluster has one worker
group per Kubernetes pool of the plan, each pod one fleet node declaring the profile's Ray resources
(``RayResources.node_resources``) and holding the vendor's devices; the head runs the moxin controller
and router (Ray actors pinned to the head). The Job runs ``moxin apply -f /etc/moxin/plan.yaml`` against
the head through Ray Client, so the same controller as ``moxin apply`` on any Ray cluster places the
replicas and starts the router. Apple pools are not pods: their Macs join the cluster from outside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.render.helm import (
    CPU_PLATFORMS,
    MOXIN_IMAGE,
    RAY_GCS_PORT,
    RenderError,
    is_external,
    label_value,
    node_selector,
    object_name,
)
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.defaults import CONTROLLER_METRICS_PORT, MODEL_ROOT, ROUTER_PORT
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.hardware import RAY_BUILTIN_RESOURCES, HardwareProfile
from orchestrator.spec.plan import Plan

RAY_VERSION = "2.60.0"
"""The Ray release moxin runs (pyproject: ray[serve]==2.60.*); KubeRay checks the head image against it."""
RAY_CLIENT_PORT = 10001
PLAN_MOUNT = "/etc/moxin"
# ray start flag names as KubeRay's rayStartParams keys.
_PARAM = RAY_BUILTIN_RESOURCES


@dataclass(frozen=True)
class KubeRayObjects:
    objects: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def ray_start_params(profile: HardwareProfile, devices: int) -> dict[str, str]:
    """rayStartParams for a node with ``devices`` devices: CPU/GPU as num-cpus/num-gpus (Ray refuses them
    in --resources), the rest as the --resources JSON, quoted the way KubeRay passes it to the shell."""
    resources = profile.spec.ray.node_resources(devices)
    params = {_PARAM[k]: f"{v:g}" for k, v in resources.items() if k in RAY_BUILTIN_RESOURCES}
    custom = {k: v for k, v in sorted(resources.items()) if k not in RAY_BUILTIN_RESOURCES}
    if custom:
        params["resources"] = json.dumps(json.dumps(custom))
    return params


def _labels(plan_name: str, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"app.kubernetes.io/name": "moxin", "app.kubernetes.io/instance": plan_name,
            "app.kubernetes.io/managed-by": "moxin", "app.kubernetes.io/component": component,
            "moxin.dev/plan": plan_name, **(extra or {})}


def _plan_pools(plan: Plan, fleet: Fleet | None, catalog: Catalog) -> list[dict[str, Any]]:
    """Pools as (name, hardware, nodes, devicesPerNode, emulated): from the plan's spec.pools, else the fleet."""
    if plan.spec.pools:
        return [{"name": p.name, "hardware": p.hardware, "nodes": p.nodes, "devicesPerNode": p.devices_per_node,
                 "emulated": p.emulated} for p in plan.spec.pools]
    if fleet is None:
        raise RenderError("the plan records no pools (an older plan): pass the fleet it was made for with -f")
    return [{"name": p.name, "hardware": p.hardware, "nodes": p.nodes,
             "devicesPerNode": p.devices_per_node or catalog.profile(p.hardware).spec.devices_per_node,
             "emulated": p.emulate is not None} for p in fleet.spec.pools]


def _container_security() -> dict[str, Any]:
    # Ray writes its session under /tmp and spawns workers: not read-only, but unprivileged.
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(claim: str) -> list[dict[str, Any]]:
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
            {"name": "models", "persistentVolumeClaim": {"claimName": claim}}]


def _mounts(model_root: str) -> list[dict[str, Any]]:
    return [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "models", "mountPath": model_root}]


def worker_group(pool: dict[str, Any], profile: HardwareProfile, image: str, fleet: Fleet | None,
                 plan_name: str, claim: str, model_root: str) -> dict[str, Any]:
    """One worker group per pool: a pod per fleet node, its devices requested from the vendor's device
    plugin (none when emulated), the node's Ray resources declared."""
    emulated = bool(pool["emulated"])
    devices = int(pool["devicesPerNode"])
    resource = None if emulated else profile.spec.kubernetes.resource
    requests: dict[str, Any] = {"cpu": "4", "memory": "32Gi"} if not emulated else {"cpu": "2", "memory": "8Gi"}
    limits: dict[str, Any] = {}
    if resource:
        requests[resource] = devices
        limits[resource] = devices
    fleet_pool = next((p for p in fleet.spec.pools if p.name == pool["name"]), None) if fleet else None
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [{"name": "ray-worker", "image": image, "imagePullPolicy": "IfNotPresent",
                        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
                        "securityContext": _container_security(), "volumeMounts": _mounts(model_root)}],
        "volumes": _volumes(claim),
    }
    selector = node_selector(emulated, profile, fleet_pool)
    if selector:
        spec["nodeSelector"] = selector
    if resource:
        spec["tolerations"] = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
    if profile.spec.kubernetes.runtime_class_name and not emulated:
        spec["runtimeClassName"] = profile.spec.kubernetes.runtime_class_name
    nodes = int(pool["nodes"])
    return {"groupName": object_name(pool["name"]), "replicas": nodes, "minReplicas": nodes, "maxReplicas": nodes,
            "rayStartParams": ray_start_params(profile, devices),
            "template": {"metadata": {"labels": _labels(plan_name, "ray-worker",
                                                        {"moxin.dev/pool": label_value(pool["name"]),
                                                         "moxin.dev/emulated": str(emulated).lower()})},
                         "spec": spec}}


def kuberay_objects(plan: Plan, catalog: Catalog, *, fleet: Fleet | None = None,
                    namespace: str = "moxin", images: Mapping[str, str] | None = None,
                    moxin_image: str = MOXIN_IMAGE, model_root: str = MODEL_ROOT,
                    models_claim: str = "moxin-models") -> KubeRayObjects:
    """The RayCluster, the plan's ConfigMap, the controller Job and the router's Service. ``images`` maps
    a pool name to its worker image (moxin + Ray + that pool's engine); default the moxin image."""
    images = dict(images or {})
    plan_name = label_value(plan.name) or "plan"
    cluster = object_name(f"moxin-{plan_name}")
    warnings: list[str] = []
    platforms = {a.pool: a.launch.platform for a in plan.spec.assignments}
    groups = []
    for pool in _plan_pools(plan, fleet, catalog):
        profile = catalog.profile(pool["hardware"])
        if is_external(pool["emulated"], profile):
            resources = json.dumps({k: v for k, v in profile.spec.ray.node_resources(int(pool["devicesPerNode"])).items()
                                    if k not in RAY_BUILTIN_RESOURCES}, sort_keys=True)
            warnings.append(f"pool {pool['name']} ({pool['hardware']}) is not made of Kubernetes nodes: start Ray on "
                            f"each of its machines with `ray start --address=HEAD:{RAY_GCS_PORT} --resources "
                            f"'{resources}'`, HEAD being the {cluster}-head-svc Service exposed to them")
            continue
        image = images.get(pool["name"]) or moxin_image
        platform = platforms.get(pool["name"])
        if pool["name"] not in images and platform and platform not in CPU_PLATFORMS:
            warnings.append(f"pool {pool['name']}: worker image {image} carries no {platform} engine; pass "
                            f"--image {pool['name']}=IMAGE (moxin, Ray {RAY_VERSION} and the vendor's vLLM plugin)")
        groups.append(worker_group(pool, profile, image, fleet, plan_name, models_claim, model_root))
    head_ports = [{"name": "gcs", "containerPort": RAY_GCS_PORT}, {"name": "dashboard", "containerPort": 8265},
                  {"name": "client", "containerPort": RAY_CLIENT_PORT},
                  {"name": "router", "containerPort": ROUTER_PORT},
                  {"name": "metrics", "containerPort": CONTROLLER_METRICS_PORT}]
    raycluster = {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": cluster, "namespace": namespace, "labels": _labels(plan_name, "ray-cluster")},
        "spec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": {"metadata": {"labels": _labels(plan_name, "ray-head")}, "spec": {
                    "securityContext": _pod_security(),
                    "containers": [{"name": "ray-head", "image": moxin_image, "imagePullPolicy": "IfNotPresent",
                                    "ports": head_ports,
                                    "resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                                                  "limits": {"memory": "8Gi"}},
                                    "securityContext": _container_security(), "volumeMounts": _mounts(model_root)}],
                    "volumes": _volumes(models_claim)}}},
            "workerGroupSpecs": groups,
        },
    }
    plan_map = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"{cluster}-plan", "namespace": namespace,
                             "labels": _labels(plan_name, "controller")},
                "data": {"plan.yaml": yaml.safe_dump(plan.to_json(), sort_keys=False)}}
    address = f"ray://{cluster}-head-svc.{namespace}.svc:{RAY_CLIENT_PORT}"
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{cluster}-apply", "namespace": namespace, "labels": _labels(plan_name, "controller")},
        "spec": {"backoffLimit": 10, "ttlSecondsAfterFinished": 86400, "template": {
            "metadata": {"labels": _labels(plan_name, "controller")},
            "spec": {"restartPolicy": "OnFailure", "automountServiceAccountToken": False,
                     "securityContext": _pod_security(),
                     "containers": [{"name": "apply", "image": moxin_image, "imagePullPolicy": "IfNotPresent",
                                     "command": ["moxin", "apply", "-f", f"{PLAN_MOUNT}/plan.yaml", "--address", address],
                                     "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
                                     "volumeMounts": [{"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True},
                                                      {"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "plan", "configMap": {"name": f"{cluster}-plan"}},
                                 {"name": "tmp", "emptyDir": {}}]}}},
    }
    router = {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": f"{cluster}-router", "namespace": namespace, "labels": _labels(plan_name, "router")},
              "spec": {"selector": {"ray.io/cluster": cluster, "ray.io/node-type": "head"},
                       "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "router", "protocol": "TCP"},
                                 {"name": "metrics", "port": CONTROLLER_METRICS_PORT, "targetPort": "metrics",
                                  "protocol": "TCP"}]}}
    return KubeRayObjects([plan_map, raycluster, router, job], warnings)
