"""Every Ray call the controller makes, behind one class (as Ray Serve keeps its replica actor calls behind a
wrapper): actors (create, find by name, kill), the replicas' remote calls (describe, stop, logs) and the waits on
them, placement groups, the GCS key-value store, ``ray.nodes()`` and the node's IP.

The controller (``controller.py``) holds a ``RayCluster`` and never imports Ray; its unit tests hold an in-memory
stand-in with the same methods instead. Handles and references returned here are opaque to the controller: it
stores them and hands them back. Each method is one short step; none holds any controller state.
"""

from __future__ import annotations

import json
from typing import Any

import ray
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.runtime.desired import ReplicaSpec
from orchestrator.runtime.names import HEAD, NAMESPACE, PG_PREFIX, REPLICA_PREFIX, ROUTER_PREFIX
from orchestrator.runtime.reconcile import State
from orchestrator.runtime.replica import Replica
from orchestrator.spec.hardware import NODE_RESOURCE_PREFIX

Handle = Any
"""A Ray actor handle."""
Ref = Any
"""A Ray object reference."""


def actor_resources(bundle: dict[str, float]) -> dict[str, Any]:
    """Ray actor options asking for exactly one bundle."""
    out: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    if custom:
        out["resources"] = custom
    return out


class RayCluster:
    """The controller's view of the Ray cluster it runs in (connected: the controller is a Ray actor, the CLI
    connects first)."""

    # -- GCS key-value store: the controller's durable state ------------------------------------------------------
    def kv_get(self, key: bytes) -> Any:
        raw = _internal_kv_get(key, namespace=NAMESPACE)
        return None if raw is None else json.loads(raw)

    def kv_put(self, key: bytes, value: Any) -> None:
        _internal_kv_put(key, json.dumps(value).encode(), True, namespace=NAMESPACE)

    def kv_del(self, key: bytes) -> None:
        _internal_kv_del(key, namespace=NAMESPACE)

    # -- the cluster ---------------------------------------------------------------------------------------------
    def node_ip(self) -> str:
        """The IP of the node this process runs on."""
        return ray.util.get_node_ip_address()

    def known_nodes(self) -> set[str]:
        """Fleet node names that live Ray nodes declare (their ``moxin-node-<name>`` resource)."""
        names: set[str] = set()
        for node in ray.nodes():
            if node.get("Alive"):
                names |= {k[len(NODE_RESOURCE_PREFIX):] for k in node.get("Resources", {})
                          if k.startswith(NODE_RESOURCE_PREFIX)}
        return names

    def list_replicas(self) -> dict[str, Handle]:
        """Replica actors that exist, by replica id: a previous controller started them (named, detached)."""
        return {name[len(REPLICA_PREFIX):]: handle for name, handle in self._named(REPLICA_PREFIX).items()}

    def list_routers(self) -> dict[str, Handle]:
        """Router actors that exist, by actor name."""
        return self._named(ROUTER_PREFIX)

    def _named(self, prefix: str) -> dict[str, Handle]:
        found = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix):
                try:
                    found[entry["name"]] = ray.get_actor(entry["name"], namespace=NAMESPACE)
                except ValueError:  # gone since it was listed
                    pass
        return found

    # -- replicas ------------------------------------------------------------------------------------------------
    def start_replica(self, spec: ReplicaSpec, log_dir: str, grace_s: float) -> Handle:
        """Create the replica's placement group and its actor in it; returns at once (the actor is created when the
        group's resources are there)."""
        self._remove_placement_group(spec.id)  # left by a replica that died with its controller
        pg = placement_group(spec.bundles, strategy=spec.strategy, name=PG_PREFIX + spec.id, lifetime="detached")
        return ray.remote(Replica).options(
            name=REPLICA_PREFIX + spec.id, namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            max_concurrency=4, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
            **actor_resources(spec.bundles[0]),
        ).remote(spec, log_dir, grace_s)

    def describe_all(self, handles: dict[str, Handle], timeout_s: float) -> dict[str, dict[str, Any] | State]:
        """Every replica's ``describe()``, waiting at most ``timeout_s`` for all of them: by id, the description,
        ``State.DEAD`` (the actor is gone) or ``State.PENDING`` (no answer in time: the actor is not created yet,
        its placement group waits for resources)."""
        refs = {h.describe.remote(): rid for rid, h in handles.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        out: dict[str, dict[str, Any] | State] = {rid: State.PENDING for rid in handles}
        for ref in ready:
            try:
                out[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayActorError:
                out[refs[ref]] = State.DEAD
        return out

    def stop_replica(self, handle: Handle) -> Ref:
        """Ask the replica to stop its engine (SIGTERM, grace, SIGKILL); returns at once, with what to wait on."""
        return handle.stop.remote()

    def poll_stopped(self, refs: dict[str, Ref], timeout_s: float = 0.0) -> set[str]:
        """The ids whose ``stop_replica`` has finished (or failed: the actor is gone), waiting at most
        ``timeout_s``."""
        if not refs:
            return set()
        by_ref = {ref: rid for rid, ref in refs.items()}
        done, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s)
        return {by_ref[ref] for ref in done}

    def forget(self, rid: str, handle: Handle | None) -> None:
        """Kill the replica's actor (its engine goes with it) and remove its placement group."""
        if handle is not None:
            ray.kill(handle, no_restart=True)
        self._remove_placement_group(rid)

    def logs(self, handle: Handle, tail: int, timeout_s: float) -> str:
        return ray.get(handle.logs.remote(tail), timeout=timeout_s)

    def _remove_placement_group(self, rid: str) -> None:
        try:
            remove_placement_group(get_placement_group(PG_PREFIX + rid))
        except ValueError:  # there is none
            pass

    # -- routers -------------------------------------------------------------------------------------------------
    def start_router(self, name: str, host: str, port: int, api_keys: str | None = None,
                     limits: dict[str, Any] | None = None) -> Handle:
        from orchestrator.runtime.router_actor import RouterActor

        return ray.remote(RouterActor).options(
            name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=-1, num_cpus=0, resources=HEAD,
            max_concurrency=1000).remote(host, port, api_keys, limits=limits)

    def serve_routers(self, handles: list[Handle], timeout_s: float) -> list[dict[str, str]]:
        """Make every router serve (idempotent: again after Ray restarted one); their endpoints. A bind error
        raises here."""
        return ray.get([h.start.remote() for h in handles], timeout=timeout_s)

    def drain_routers(self, handles: list[Handle], timeout_s: float) -> None:
        """Ask every router to drain (close its port, let its requests in flight finish) and wait at most
        ``timeout_s``; a router that is gone or too slow is left to ``kill``."""
        refs = [h.drain.remote() for h in handles]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)

    def kill(self, handle: Handle) -> None:
        ray.kill(handle, no_restart=True)
