"""Plan -> values of the ``helm/moxin`` chart for the engine workloads and the router (``render/kuberay.py``
derives the chart's KubeRay section the same way).

Pure: (Plan document, catalog, optional fleet, options) -> values dict (+ warnings). The chart turns
these values into objects (``render/kubernetes.py`` renders it through the Helm SDK), so every number
Kubernetes sees — replicas, devices per pod, image, argv, probes' budget — is copied from the Plan here,
never re-derived in a template. The router's configuration (``router_config``) is part of the values.

Placement on Kubernetes: the plan's node names are its own (``<pool>-<i>``); the scheduler picks real
nodes within the pool's node selector. What the plan fixes — devices per pod, pods per replica, which
pool — is kept exactly.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import __version__
from orchestrator.engines import vllm
from orchestrator.errors import MoxinError
from orchestrator.spec.base import DNS1123_SUBDOMAIN
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.defaults import MODEL_ROOT
from orchestrator.spec.fleet import Fleet, Pool
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.names import label_value, object_name
from orchestrator.spec.plan import Assignment, Plan, assignment_names

MOXIN_IMAGE = f"ghcr.io/moxin-dev/moxin:{__version__}"
"""The moxin image (router, controller, and the CPU engines: built with the cpu and ray extras)."""
CPU_PLATFORMS = frozenset({"cpu", "mlx-cpu"})
"""Platforms whose engines ship inside the moxin image (``pip install moxin[cpu]``)."""
RAY_GCS_PORT = 6379
ENGINE_API_KEY_ENV = {"vllm": "VLLM_API_KEY"}
"""Per engine, the variable it reads the key it requires of every caller from (vLLM: ``--api-key``'s
variable); the chart fills it from engineAuth's Secret. Engines not named take no key."""
EMULATED_SHM = "2Gi"

_DNS_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN)


class RenderError(MoxinError):
    """The plan cannot be rendered for Kubernetes as asked (exit code 2, with what to change)."""

    exit_code = 2


@dataclass(frozen=True)
class HelmValues:
    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- names

def assignment_ids(assignments: list[Assignment]) -> list[str]:
    """One object name per assignment, ``<deployment>-<variant>-<pool>``; parallelism is appended only
    where two assignments would otherwise share a name."""
    return [object_name(name) for name in assignment_names(assignments)]


def assignment_labels(a: Assignment) -> dict[str, str]:
    """The metric label set (``METRIC_LABELS``) as Kubernetes labels under moxin.dev/."""
    return {f"moxin.dev/{k}": label_value(v) for k, v in a.metric_labels().items()}


# ----------------------------------------------------------------------------------- plan geometry

def devices_per_pod(a: Assignment) -> int:
    """Devices one pod holds: the whole replica on one node, else the most any node of a replica holds."""
    if a.nodes_per_replica() == 1:
        return a.devices_per_replica
    per_node: dict[tuple[int, str], int] = {}
    for p in a.placements:
        key = (p.replica, p.node)
        per_node[key] = per_node.get(key, 0) + len(p.devices)
    return max(per_node.values())


def is_external(emulated: bool, profile: HardwareProfile) -> bool:
    """Hardware that is not a Kubernetes node (Apple silicon): no device plugin resource and not a CPU
    host. Emulated pools run as CPU pods, so they are never external."""
    k8s = profile.spec.kubernetes
    return not emulated and k8s.resource is None and profile.spec.device_type != "cpu"


# ---------------------------------------------------------------------------------------- router

def service_url(a: Assignment, name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc:{a.launch.port}"


def router_config(plan: Plan, namespace: str,
                  service_url: Callable[[Assignment, str, str], str] = service_url,
                  skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The router's configuration (router.json): per deployment, its assignments with the URL of their
    Service and a weight proportional to the capacity the plan gave them (req/s per replica x replicas).
    ``skip`` names assignment ids that have no Service (external pools without addresses); assignments
    with no replicas get no route (the router refuses a weight of 0)."""
    assignments = plan.spec.assignments
    deployments: dict[str, list[dict[str, Any]]] = {}
    for a, name in zip(assignments, assignment_ids(assignments), strict=True):
        if name in skip or not a.replicas:
            continue
        capacity = a.predicted.capacity_requests_per_second
        weight = float(capacity) * a.replicas if capacity is not None else float(a.replicas)
        deployments.setdefault(a.deployment, []).append({
            "name": name, "url": service_url(a, name, namespace), "requestModel": a.launch.request_model,
            "weight": round(weight, 6), "labels": a.metric_labels()})
    return {"deployments": deployments}


def with_split(config: Mapping[str, Any], deployment: str, canary: frozenset[str],
               canary_percent: float) -> dict[str, Any]:
    """A router configuration under a rollout: the routes named in ``canary`` (assignment ids of the new side)
    marked ``"side": "canary"``, and ``splits[deployment]`` sending ``canary_percent`` of the deployment's
    requests to them. The router reloads the file, so the split moves without a restart. Without a canary route
    the configuration is returned as it is (a split with nothing on one side means nothing)."""
    out = copy.deepcopy(dict(config))
    rows = out.get("deployments", {}).get(deployment, [])
    if not any(r["name"] in canary for r in rows):
        return out
    for r in rows:
        if r["name"] in canary:
            r["side"] = "canary"
    out["splits"] = {**out.get("splits", {}), deployment: {"canaryPercent": canary_percent}}
    return out


# ------------------------------------------------------------------------------------------ Ray

def ray_start_args(profile: HardwareProfile, devices: int) -> list[str]:
    """``ray start`` flags declaring a node with ``devices`` of this profile's devices: CPU and GPU go
    through --num-cpus/--num-gpus (Ray refuses them in --resources), the rest as --resources JSON."""
    flags, custom = profile.spec.ray.start_flags(devices)
    args = [f"--{flag}={v:g}" for flag, v in flags.items()]
    if custom:
        args.append("--resources=" + json.dumps(custom))
    return args


LWS_RANK = "$LWS_WORKER_INDEX"
LWS_LEADER = "$LWS_LEADER_ADDRESS"
"""What LeaderWorkerSet sets in every pod of a group: the pod's index (0 on the leader) and the leader's address."""


def _shell_word(word: str) -> str:
    """One argv word for ``sh -c``: a reference to LWS's environment expanded (in double quotes), the rest quoted."""
    return f'"{word}"' if word in (LWS_RANK, LWS_LEADER) else shlex.quote(word)


def leader_script(nnodes: int) -> str:
    """Leader of a multi-node replica (node rank 0 of vLLM's multi-node mode): exec the engine argv (the container's
    args, reached as "$0" "$@" so no argument is ever re-split by the shell) with the multi-node flags."""
    flags = vllm.stage_argv([], node_rank=0, nnodes=nnodes, master_addr=LWS_LEADER)
    return 'exec "$0" "$@" ' + " ".join(_shell_word(w) for w in flags)


def worker_script(argv: list[str], nnodes: int) -> str:
    """Worker of a multi-node replica: the same argv, headless, at node rank LWS_WORKER_INDEX, joining the leader's
    rendezvous (engines/vllm.stage_argv: what the Ray runtime's stage actors run)."""
    words = vllm.stage_argv(argv, node_rank=LWS_RANK, nnodes=nnodes, master_addr=LWS_LEADER)
    return "exec " + " ".join(_shell_word(w) for w in words)


# ------------------------------------------------------------------------------------ assignments

def engine_image(a: Assignment, images: Mapping[str, str], moxin_image: str) -> str:
    launch = a.launch
    key = f"{launch.engine}/{launch.platform}"
    image = images.get(key) or launch.image
    if image:
        return image
    if launch.platform in CPU_PLATFORMS:
        return moxin_image
    raise RenderError(
        f"assignment {a.deployment}/{a.variant} on pool {a.pool}: hardware profile {a.hardware} names "
        f"no container image for {key}.\n  To fix: pass --image {key}=REGISTRY/IMAGE:TAG (an image with the "
        "vendor's vLLM plugin), or set spec.engines[].image in the hardware profile")


def model_sub_path(model_path: str, mount_path: str) -> str:
    """The checkpoint's path under the model mount ("" for a hub id, which the engine downloads)."""
    prefix = mount_path.rstrip("/") + "/"
    return model_path[len(prefix):] if model_path.startswith(prefix) else ""


def node_selector(emulated: bool, profile: HardwareProfile, pool: Pool | None) -> dict[str, str]:
    """The profile's node labels (not for emulated pools: they run on CPU nodes) and the pool's own."""
    selector = {} if emulated else dict(profile.spec.kubernetes.node_selector)
    if pool is not None:
        selector.update(pool.labels)
    return dict(sorted(selector.items()))


def device_placement(emulated: bool, profile: HardwareProfile, pool: Pool | None) -> dict[str, Any]:
    """Chart values of a pod holding this profile's devices (an engine pod, or a KubeRay worker pod): the
    vendor's extended resource ("" for emulated pools: CPU pods), the node selector, a toleration for the
    resource's taint, and the profile's runtime class (not for emulated pools)."""
    resource = None if emulated else profile.spec.kubernetes.resource
    out: dict[str, Any] = {
        "deviceResource": resource or "", "nodeSelector": node_selector(emulated, profile, pool),
        "tolerations": [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}] if resource else [],
    }
    runtime_class = profile.spec.kubernetes.runtime_class_name
    if runtime_class and not emulated:
        out["runtimeClassName"] = runtime_class
    return out


def engine_assignment(a: Assignment, name: str, profile: HardwareProfile, pool: Pool | None,
                      images: Mapping[str, str], moxin_image: str, mount_path: str) -> dict[str, Any]:
    launch = a.launch
    group = a.nodes_per_replica()
    devices = devices_per_pod(a)
    out: dict[str, Any] = {
        "id": name, "deployment": a.deployment, "model": a.model, "variant": a.variant, "pool": a.pool,
        "hardware": a.hardware, "engine": a.engine, "platform": launch.platform,
        "emulated": a.emulated, "kind": "LeaderWorkerSet" if group > 1 else "Deployment",
        "replicas": a.replicas, "groupSize": group, "devicesPerPod": devices,
        "image": engine_image(a, images, moxin_image),
        "argv": list(launch.argv), "env": dict(launch.env), "port": launch.port,
        "healthPath": launch.health_path, "metricsPath": launch.metrics_path or "",
        "readinessTimeoutSeconds": launch.readiness_timeout_seconds,
        **device_placement(a.emulated, profile, pool),
        "modelSubPath": model_sub_path(launch.model_path, mount_path),
        "labels": assignment_labels(a),
    }
    if a.engine in ENGINE_API_KEY_ENV:
        out["apiKeyEnv"] = ENGINE_API_KEY_ENV[a.engine]
    if a.emulated:
        out["sharedMemorySize"] = EMULATED_SHM
    if group > 1:
        out["leaderScript"] = leader_script(group)
        out["workerScript"] = worker_script(list(launch.argv), group)
    return out


def address_type(address: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        if not _DNS_SUBDOMAIN.match(address) or len(address) > 253:
            raise RenderError(f"address {address!r} is neither an IP address nor a lowercase DNS name\n"
                              "  To fix: list IPs or host names under spec.pools[].addresses") from None
        return "FQDN"


def pool_addresses(plan: Plan, pool: Pool | None, name: str) -> list[str] | None:
    """A pool's machine addresses: from the fleet when given, else as the plan recorded them (spec.pools)."""
    if pool is not None:
        return list(pool.addresses) if pool.addresses else None
    recorded = plan.spec.pool(name)
    return list(recorded.addresses) if recorded and recorded.addresses else None


def external_addresses(a: Assignment, addresses: list[str] | None) -> list[str] | None:
    """The machines the plan placed this assignment's replicas on: the plan's node names are the pool's
    addresses when the fleet lists them (planner/place.py). None when the pool has no addresses."""
    if not addresses:
        return None
    placed = list(dict.fromkeys(p.node for p in a.placements))
    known = set(addresses)
    return [n for n in placed if n in known] or list(addresses)


def external_assignment(a: Assignment, name: str, addresses: list[str]) -> dict[str, Any]:
    slices: dict[str, list[str]] = {}
    for address in addresses:
        slices.setdefault(address_type(address), []).append(address)
    return {"id": name, "deployment": a.deployment, "model": a.model, "variant": a.variant,
            "pool": a.pool, "hardware": a.hardware, "engine": a.engine,
            "platform": a.launch.platform, "emulated": False, "replicas": a.replicas,
            "port": a.launch.port, "labels": assignment_labels(a),
            "endpointSlices": [{"addressType": t, "addresses": v} for t, v in sorted(slices.items())]}


# --------------------------------------------------------------------------------------- values

def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing for values: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def helm_values(plan: Plan, catalog: Catalog, *, fleet: Fleet | None = None, namespace: str = "moxin",
                images: Mapping[str, str] | None = None, moxin_image: str = MOXIN_IMAGE,
                mount_path: str = MODEL_ROOT, overrides: Mapping[str, Any] | None = None) -> HelmValues:
    """The chart's values for a Plan. ``fleet`` (the one the plan was made for) adds each pool's node
    labels to the node selectors; machine addresses come from the fleet, else from the plan's spec.pools."""
    pools = {p.name: p for p in fleet.spec.pools} if fleet else {}
    images = dict(images or {})
    assignments = plan.spec.assignments
    engines, external, warnings, skipped = [], [], [], set()
    for a, name in zip(assignments, assignment_ids(assignments), strict=True):
        profile = catalog.profile(a.hardware)
        pool = pools.get(a.pool)
        if fleet is not None and pool is None:
            raise RenderError(f"the plan places {a.deployment} on pool {a.pool!r}, which fleet "
                              f"{fleet.name!r} does not have\n  To fix: pass the fleet the plan was made for")
        if not is_external(a.emulated, profile):
            engines.append(engine_assignment(a, name, profile, pool, images, moxin_image, mount_path))
            continue
        addresses = external_addresses(a, pool_addresses(plan, pool, a.pool))
        if not addresses:
            skipped.add(name)
            warnings.append(
                f"pool {a.pool} ({a.hardware}) is not made of Kubernetes nodes and has no addresses: "
                f"{a.deployment}/{a.variant} ({a.replicas} replica(s)) is left out of the cluster's "
                "routing. To fix: list the machines under spec.pools[].addresses in the fleet and render "
                "with the fleet (-f)")
            continue
        external.append(external_assignment(a, name, addresses))
    values = {
        "plan": {"name": label_value(plan.name) or "plan", "fleet": plan.spec.fleet},
        "namespace": namespace,
        "images": images,
        "assignments": engines,
        "externalAssignments": external,
        "router": {"config": router_config(plan, namespace, skip=frozenset(skipped))},
    }
    if moxin_image != MOXIN_IMAGE:
        repository, _, tag = moxin_image.rpartition(":") if ":" in moxin_image.rsplit("/", 1)[-1] \
            else (moxin_image, "", "")
        values["router"]["image"] = {"repository": repository, "tag": tag}
    return HelmValues(deep_merge(values, overrides or {}), warnings)
