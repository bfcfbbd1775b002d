"""Plan -> KubeRay values of the ``helm/moxin`` chart: a RayCluster shaped like the fleet, and a Job that
runs moxin's controller on it.

Pure: (Plan, catalog, optional fleet, options) -> the chart's values in KubeRay mode (+ warnings);
``kuberay_objects`` renders them through the chart (``render/kubernetes.py``), so the Ray pods share the
engine pods' templates for labels, security contexts, volumes and placement. The RayCluster has one
worker group per Kubernetes pool of the plan, each pod one fleet node declaring the profile's Ray
resources (``RayResources.node_resources``) and holding the vendor's devices; the head runs the moxin
controller and router (Ray actors pinned to the head). The Job runs ``moxin apply -f
/etc/moxin/plan.yaml`` against the head through Ray Client, so the same controller as ``moxin apply`` on
any Ray cluster places the replicas and starts the router. Apple pools are not pods: their Macs join the
cluster from outside.
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
    HelmValues,
    RenderError,
    device_placement,
    is_external,
)
from orchestrator.render.kubernetes import render_chart
from orchestrator.render.values import KubeRay, RayPorts, RayWorkerGroup
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.defaults import CONTROLLER_METRICS_PORT, MODEL_ROOT, ROUTER_PORT
from orchestrator.spec.fleet import Fleet, Pool
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.names import label_value, object_name
from orchestrator.spec.plan import Plan

RAY_VERSION = "2.60.0"
"""The Ray release moxin runs (pyproject: ray[serve]==2.60.*); KubeRay checks the head image against it."""
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265


@dataclass(frozen=True)
class KubeRayObjects:
    objects: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def ray_start_params(profile: HardwareProfile, devices: int) -> dict[str, str]:
    """rayStartParams for a node with ``devices`` devices: CPU/GPU as num-cpus/num-gpus (Ray refuses them
    in --resources), the rest as the --resources JSON, quoted the way KubeRay passes it to the shell."""
    flags, custom = profile.spec.ray.start_flags(devices)
    params = {k: f"{v:g}" for k, v in flags.items()}
    if custom:
        params["resources"] = json.dumps(json.dumps(custom))
    return params


# ------------------------------------------------------------------------------ reading the plan

def _pool_platforms(plan: Plan) -> dict[str, str]:
    """The engine platform the plan runs on each pool (the worker image must carry it)."""
    return {a.pool: a.launch.platform for a in plan.spec.assignments}


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


# --------------------------------------------------------------------------------------- values

def worker_group(pool: dict[str, Any], profile: HardwareProfile, image: str, fleet_pool: Pool | None) -> RayWorkerGroup:
    """One worker group per pool: a pod per fleet node, its devices requested from the vendor's device
    plugin (none when emulated), the node's Ray resources declared."""
    emulated = bool(pool["emulated"])
    devices = int(pool["devicesPerNode"])
    placement = device_placement(emulated, profile, fleet_pool)
    return RayWorkerGroup.model_validate({
        "name": object_name(pool["name"]), "pool": pool["name"], "replicas": int(pool["nodes"]),
        "emulated": emulated, "devicesPerPod": devices, "image": image,
        "rayStartParams": ray_start_params(profile, devices), **placement,
        "labels": {"moxin.dev/pool": label_value(pool["name"]), "moxin.dev/emulated": str(emulated).lower()},
    })


def kuberay_values(plan: Plan, catalog: Catalog, *, fleet: Fleet | None = None,
                   namespace: str = "moxin", images: Mapping[str, str] | None = None,
                   moxin_image: str = MOXIN_IMAGE, model_root: str = MODEL_ROOT,
                   models_claim: str = "moxin-models") -> HelmValues:
    """The chart's values in KubeRay mode (engines, router Deployment, monitoring and dashboards off).
    ``images`` maps a pool name to its worker image (moxin + Ray + that pool's engine); default the moxin
    image."""
    images = dict(images or {})
    plan_name = label_value(plan.name) or "plan"
    cluster = object_name(f"moxin-{plan_name}")
    fleet_pools = {p.name: p for p in fleet.spec.pools} if fleet else {}
    platforms = _pool_platforms(plan)
    warnings: list[str] = []
    groups = []
    for pool in _plan_pools(plan, fleet, catalog):
        profile = catalog.profile(pool["hardware"])
        if is_external(pool["emulated"], profile):
            resources = json.dumps(profile.spec.ray.start_flags(int(pool["devicesPerNode"]))[1], sort_keys=True)
            warnings.append(f"pool {pool['name']} ({pool['hardware']}) is not made of Kubernetes nodes: start Ray on "
                            f"each of its machines with `ray start --address=HEAD:{RAY_GCS_PORT} --resources "
                            f"'{resources}'`, HEAD being the {cluster}-head-svc Service exposed to them")
            continue
        image = images.get(pool["name"]) or moxin_image
        platform = platforms.get(pool["name"])
        if pool["name"] not in images and platform and platform not in CPU_PLATFORMS:
            warnings.append(f"pool {pool['name']}: worker image {image} carries no {platform} engine; pass "
                            f"--image {pool['name']}=IMAGE (moxin, Ray {RAY_VERSION} and the vendor's vLLM plugin)")
        groups.append(worker_group(pool, profile, image, fleet_pools.get(pool["name"])))
    kuberay = KubeRay(
        enabled=True, cluster_name=cluster, ray_version=RAY_VERSION, image=moxin_image,
        plan_yaml=yaml.safe_dump(plan.to_json(), sort_keys=False), worker_groups=groups,
        ports=RayPorts(gcs=RAY_GCS_PORT, dashboard=RAY_DASHBOARD_PORT, client=RAY_CLIENT_PORT, router=ROUTER_PORT,
                       metrics=CONTROLLER_METRICS_PORT))
    values = {
        "plan": {"name": plan_name, "fleet": plan.spec.fleet},
        "namespace": namespace,
        "managedBy": "moxin",
        "serviceAccount": {"create": False},
        "modelStorage": {"type": "pvc", "mountPath": model_root, "pvc": {"claimName": models_claim}},
        "router": {"enabled": False},
        "monitoring": {"podMonitors": False, "serviceMonitors": False, "prometheusRules": False},
        "dashboards": {"enabled": False},
        "kuberay": kuberay.model_dump(mode="json", by_alias=True, exclude_none=True,
                                      exclude={"image_pull_policy", "head"}),
    }
    return HelmValues(values, warnings)


def kuberay_objects(plan: Plan, catalog: Catalog, *, fleet: Fleet | None = None,
                    namespace: str = "moxin", images: Mapping[str, str] | None = None,
                    moxin_image: str = MOXIN_IMAGE, model_root: str = MODEL_ROOT,
                    models_claim: str = "moxin-models") -> KubeRayObjects:
    """The plan's ConfigMap, the router's Service, the RayCluster and the controller Job: the chart
    rendered with ``kuberay_values`` (see there for the arguments)."""
    result = kuberay_values(plan, catalog, fleet=fleet, namespace=namespace, images=images, moxin_image=moxin_image,
                            model_root=model_root, models_claim=models_claim)
    return KubeRayObjects(render_chart(result.values, namespace=namespace), result.warnings)
