"""The controller: a named, detached Ray actor that holds the desired Plan and reconciles what runs.

Each loop has one shape (STYLE.md): observe the replicas -> decide (``reconcile.decide``, pure) -> act (the thin
executor below, the only place that makes Ray calls for replicas) -> record (metrics, routing table, file_sd).
The desired plan is written to Ray's GCS key-value store *before* anything acts on it, and replicas are named
detached actors: a restarted controller reads the plan back, finds the replicas by name and adopts them, engine
processes untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from prometheus_client import start_http_server
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.output import write_atomic
from orchestrator.runtime.desired import ReplicaSpec, replica_specs
from orchestrator.runtime.metrics import ControllerMetrics
from orchestrator.runtime.names import (
    HEAD,
    KV_OPTIONS,
    KV_PLAN,
    NAMESPACE,
    PG_PREFIX,
    REPLICA_PREFIX,
    ROUTER_PREFIX,
)
from orchestrator.runtime.reconcile import Action, Drain, Observed, Start, State, Stop, decide
from orchestrator.runtime.replica import Replica
from orchestrator.spec.defaults import CONTROLLER_METRICS_PORT, ROUTER_PORT
from orchestrator.spec.hardware import NODE_RESOURCE_PREFIX
from orchestrator.spec.plan import Plan

LOOP_S = 1.0
OBSERVE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 40.0


def kv_get(key: bytes) -> Any:
    raw = _internal_kv_get(key, namespace=NAMESPACE)
    return None if raw is None else json.loads(raw)


def kv_put(key: bytes, value: Any) -> None:
    _internal_kv_put(key, json.dumps(value).encode(), True, namespace=NAMESPACE)


def actor_resources(bundle: dict[str, float]) -> dict[str, Any]:
    """Ray actor options asking for exactly one bundle."""
    out: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    if custom:
        out["resources"] = custom
    return out


class Controller:
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        saved = kv_get(KV_OPTIONS) or {}
        self.options = {"metricsPort": CONTROLLER_METRICS_PORT, "routers": 1, "routerHost": "0.0.0.0",
                        "routerPort": ROUTER_PORT,
                        "logDir": str(Path(tempfile.gettempdir()) / "moxin" / "logs"), "drainSeconds": 10.0,
                        "graceSeconds": 15.0, "prometheusSd": None, **saved, **(options or {})}
        kv_put(KV_OPTIONS, self.options)
        self.metrics = ControllerMetrics()
        self.metrics_port = self._serve_metrics()
        saved_plan = kv_get(KV_PLAN)
        self.plan: Plan | None = None if saved_plan is None else Plan.model_validate(saved_plan)
        self.replicas: dict[str, Any] = {}        # id -> actor handle
        self.described: dict[str, dict] = {}      # id -> last describe()
        self.states: dict[str, State] = {}
        self.draining: dict[str, float] = {}
        self.stopping: dict[str, tuple[Any, float]] = {}
        self.failures: dict[str, tuple[int, float]] = {}
        self.replaced: dict[str, int] = {}        # restarts of replicas no longer running, by id
        self.routers: dict[str, Any] = {}
        self.router_endpoints: list[dict[str, str]] = []
        self.events: list[str] = []
        self.table: dict[str, list[dict]] = {}
        self.loops = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.RLock()
        self._sd_written: str | None = None
        self.adopted = self._adopt()
        self.specs: list[ReplicaSpec] = self._desired()  # the plan's replicas, as of the last loop or apply
        threading.Thread(target=self._loop, name="moxin-reconcile", daemon=True).start()

    # -- API (called by the CLI and the routers) -----------------------------------------------------------------
    def apply(self, plan: Plan, options: dict[str, Any] | None = None) -> dict[str, Any]:
        kv_put(KV_PLAN, plan.to_json())  # desired state first: a controller restarted from here on acts on this plan
        with self._lock:
            if options:
                self.options.update(options)
                kv_put(KV_OPTIONS, self.options)
            self.plan = plan
            self.specs = self._desired()
            self._event(f"applied plan {plan.name!r}: {len(self.specs)} replica(s)")
        self._wake.set()
        return {"replicas": [s.id for s in self.specs]}

    def status(self) -> dict[str, Any]:
        with self._lock:
            rows = []
            desired = {s.id: s for s in self.specs}
            for rid in sorted(set(desired) | set(self.states)):
                spec = desired.get(rid)
                d = self.described.get(rid, {})
                rows.append({"id": rid, "state": self.states.get(rid, State.PENDING).value if rid in self.replicas
                             else "missing", "desired": spec is not None, "draining": rid in self.draining,
                             **({"labels": spec.labels, "nodes": spec.nodes, "devices": spec.devices,
                                 "weight": spec.weight} if spec else {}),
                             "url": d.get("url"), "enginePid": d.get("enginePid"), "restarts": self._restarts(rid),
                             "lastError": d.get("lastError", "") or self._waiting_for(rid, spec),
                             "log": d.get("log"), "host": d.get("host"),
                             "nodeId": d.get("nodeId")})
            return {"plan": None if self.plan is None else self.plan.name, "replicas": rows,
                    "routers": self.router_addresses(), "metricsUrl": self.metrics_url(), "loops": self.loops,
                    "adopted": self.adopted, "events": self.events[-20:], "prometheusSd": self.options["prometheusSd"]}

    def _waiting_for(self, rid: str, spec: ReplicaSpec | None) -> str:
        if spec is None or self.states.get(rid) != State.PENDING or rid not in self.replicas:
            return ""
        return (f"waiting for Ray resources: {spec.strategy} {spec.bundles} (a node must declare them: "
                "moxin node-resources)")

    def routing_table(self) -> dict[str, list[dict]]:
        return self.table  # replaced whole each loop: no lock, so routers never wait on a slow loop

    def logs(self, rid: str, tail: int = 200) -> str:
        handle = self.replicas.get(rid)
        if handle is None:
            raise KeyError(f"no replica {rid!r}; replicas: {sorted(self.replicas)}")
        return ray.get(handle.logs.remote(tail), timeout=30)

    def set_prometheus_sd(self, path: str | None) -> None:
        with self._lock:
            self.options["prometheusSd"] = path
            self._sd_written = None
            kv_put(KV_OPTIONS, self.options)
        self._write_sd()

    def metrics_url(self) -> str:
        return f"http://{ray.util.get_node_ip_address()}:{self.metrics_port}/metrics"

    def router_addresses(self) -> list[str]:
        bound = self.options["routerHost"]
        host = ray.util.get_node_ip_address() if bound in ("0.0.0.0", "::") else bound
        return [f"http://{host}:{self.options['routerPort']}"] if self.routers else []

    def shutdown(self) -> list[str]:
        """Stop every replica (SIGTERM, grace, SIGKILL), the routers, and forget the plan. The caller kills the
        controller afterwards."""
        self._stopped.set()
        _internal_kv_del(KV_PLAN, namespace=NAMESPACE)
        with self._lock:
            refs = {rid: h.stop.remote() for rid, h in self.replicas.items()}
            ray.wait(list(refs.values()), num_returns=len(refs), timeout=STOP_TIMEOUT_S)
            for rid in list(self.replicas):
                self._forget(rid)
            for h in self.routers.values():
                ray.kill(h, no_restart=True)
            self.routers.clear()
            return sorted(refs)

    def ping(self) -> int:
        return os.getpid()

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            t0 = time.perf_counter()
            for step in (self._ensure_routers, self._reconcile_once, self._record):
                try:
                    with self._lock:
                        if self._stopped.is_set():
                            return
                        step()
                except Exception:  # a failing step is logged and retried next loop; it never kills the loop
                    self.metrics.reconcile_errors.labels(step.__name__.strip("_")).inc()
                    self._event(f"{step.__name__} failed: {traceback.format_exc(limit=3)}")
            self.metrics.reconcile.observe(time.perf_counter() - t0)
            self.loops += 1
            self._wake.wait(LOOP_S)
            self._wake.clear()

    def _desired(self) -> list[ReplicaSpec]:
        if self.plan is None:
            return []
        return replica_specs(self.plan, known_nodes=self._known_nodes())

    def _known_nodes(self) -> set[str]:
        names: set[str] = set()
        for node in ray.nodes():
            if node.get("Alive"):
                names |= {k[len(NODE_RESOURCE_PREFIX):] for k in node.get("Resources", {})
                          if k.startswith(NODE_RESOURCE_PREFIX)}
        return names

    def _reconcile_once(self) -> None:
        self.specs = desired = self._desired()  # once per loop: it asks Ray which nodes exist
        observed = self._observe()
        actions = decide(desired, observed, self.failures, time.time(), self.options["drainSeconds"])
        for action in actions:
            self._act(action)
        self._route(desired)

    def _observe(self) -> dict[str, Observed]:
        for rid, (ref, deadline) in list(self.stopping.items()):
            done, _ = ray.wait([ref], timeout=0)
            if done or time.time() > deadline:
                self._forget(rid)
        live = {rid: h for rid, h in self.replicas.items() if rid not in self.stopping}
        refs = {h.describe.remote(): rid for rid, h in live.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=OBSERVE_TIMEOUT_S) if refs else ([], [])
        for ref in ready:
            rid = refs[ref]
            try:
                self.described[rid] = ray.get(ref)
                self.states[rid] = State(self.described[rid]["state"])
            except ray.exceptions.RayActorError:
                self.states[rid] = State.DEAD
            if self.states[rid] == State.READY:
                self.failures.pop(rid, None)
        for ref, rid in refs.items():
            if ref not in ready:
                self.states[rid] = State.PENDING  # actor not created yet: its placement group waits for resources
        out = {rid: Observed(rid, self.described.get(rid, {}).get("specHash", ""), self.states[rid],
                             self.draining.get(rid), self.described.get(rid, {}).get("stateSince")) for rid in live}
        out |= {rid: Observed(rid, "", State.STOPPING) for rid in self.stopping}
        return out

    # -- the executor: the only code that turns actions into Ray calls -------------------------------------------
    def _act(self, action: Action) -> None:
        self.metrics.actions.labels(type(action).__name__.lower()).inc()
        if isinstance(action, Start):
            self._start(action.spec)
            self._event(f"start {action.spec.id} ({action.reason})")
        elif isinstance(action, Drain):
            self.draining[action.id] = time.time()
            self._event(f"drain {action.id} ({action.reason})")
        elif isinstance(action, Stop):
            if action.failed:
                count, _ = self.failures.get(action.id, (0, 0.0))
                self.failures[action.id] = (count + 1, time.time())
                self.replaced[action.id] = self.replaced.get(action.id, 0) + 1
            handle = self.replicas[action.id]
            self.stopping[action.id] = (handle.stop.remote(), time.time() + STOP_TIMEOUT_S)
            self._event(f"stop {action.id} ({action.reason})")

    def _start(self, spec: ReplicaSpec) -> None:
        name = PG_PREFIX + spec.id
        try:
            remove_placement_group(get_placement_group(name))  # left by a replica that died with its controller
        except ValueError:
            pass
        pg = placement_group(spec.bundles, strategy=spec.strategy, name=name, lifetime="detached")
        actor = ray.remote(Replica).options(
            name=REPLICA_PREFIX + spec.id, namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            max_concurrency=4, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
            **actor_resources(spec.bundles[0]),
        ).remote(spec, self.options["logDir"], self.options["graceSeconds"])
        self.replicas[spec.id] = actor
        self.states[spec.id] = State.PENDING
        self.described.pop(spec.id, None)

    def _forget(self, rid: str) -> None:
        # Engine restarts counted by the replica go with it: keep them in the replica's running total.
        self.replaced[rid] = self.replaced.get(rid, 0) + self.described.get(rid, {}).get("restarts", 0)
        handle = self.replicas.pop(rid, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        try:
            remove_placement_group(get_placement_group(PG_PREFIX + rid))
        except ValueError:
            pass
        for table in (self.states, self.described, self.draining, self.stopping):
            table.pop(rid, None)

    def _adopt(self) -> list[str]:
        """Find the replicas a previous controller started (named, detached actors) and take them over."""
        adopted = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == NAMESPACE and entry["name"].startswith(REPLICA_PREFIX):
                rid = entry["name"][len(REPLICA_PREFIX):]
                try:
                    self.replicas[rid] = ray.get_actor(entry["name"], namespace=NAMESPACE)
                    adopted.append(rid)
                except ValueError:
                    pass
            elif entry["namespace"] == NAMESPACE and entry["name"].startswith(ROUTER_PREFIX):
                self.routers[entry["name"]] = ray.get_actor(entry["name"], namespace=NAMESPACE)
        if adopted:
            self._event(f"adopted {len(adopted)} running replica(s): {', '.join(sorted(adopted))}")
        return sorted(adopted)

    def _ensure_routers(self) -> None:
        from orchestrator.runtime.router_actor import RouterActor

        for i in range(int(self.options["routers"])):
            name = f"{ROUTER_PREFIX}{i}"
            if name not in self.routers:
                self.routers[name] = ray.remote(RouterActor).options(
                    name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=-1, num_cpus=0, resources=HEAD,
                    max_concurrency=1000).remote(self.options["routerHost"], int(self.options["routerPort"]),
                                                 self.options.get("apiKeys"))
                self._event(f"started router {name} on port {self.options['routerPort']}")
        # Idempotent: serves once, and again after Ray restarted a router actor. A bind error surfaces here.
        self.router_endpoints = ray.get([h.start.remote() for h in self.routers.values()], timeout=30)

    # -- record --------------------------------------------------------------------------------------------------
    def _route(self, desired: list[ReplicaSpec]) -> None:
        table: dict[str, list[dict]] = {}
        for spec in desired:
            table.setdefault(spec.deployment, [])
        specs = {s.id: s for s in desired}
        for rid, state in self.states.items():
            d = self.described.get(rid, {})
            spec = specs.get(rid)
            if state != State.READY or rid in self.draining or rid in self.stopping or spec is None \
                    or d.get("specHash") != spec.spec_hash:
                continue
            table[spec.deployment].append({"name": rid, "url": d["url"], "requestModel": spec.request_model,
                                           "weight": spec.weight, "labels": spec.labels})
        self.table = table

    def _restarts(self, rid: str) -> int:
        return self.described.get(rid, {}).get("restarts", 0) + self.replaced.get(rid, 0)

    def _record(self) -> None:
        m = self.metrics
        for g in (m.pool_devices, m.pool_allocated, m.desired, m.ready, m.restarts, m.capacity, m.cost):
            g.clear()
        if self.plan is None:
            return
        used = self.plan.status.devices_used if self.plan.status else {}
        for p in self.plan.spec.pools:
            labels = {"pool": p.name, "hardware": p.hardware, "emulated": str(p.emulated).lower()}
            m.pool_devices.labels(**labels).set(p.nodes * p.devices_per_node)
            m.pool_allocated.labels(**labels).set(used.get(p.name, 0))
        routed = {r["name"] for rows in self.table.values() for r in rows}
        for spec in self.specs:
            m.desired.labels(**spec.labels).inc()
            m.capacity.labels(**spec.labels).inc(spec.weight)
            m.cost.labels(**spec.labels).inc(spec.cost_usd_per_hour or 0.0)
            m.ready.labels(**spec.labels).inc(1 if spec.id in routed else 0)
            m.restarts.labels(**spec.labels).inc(self._restarts(spec.id))
        self._write_sd()

    def _sd_targets(self) -> list[dict[str, Any]]:
        host = ray.util.get_node_ip_address()
        targets = [{"targets": [f"{host}:{self.metrics_port}"], "labels": {"job": "moxin-controller"}}]
        if self.router_endpoints:
            targets.append({"targets": sorted(r["metrics"] for r in self.router_endpoints),
                            "labels": {"job": "moxin-router"}})
        for spec in self.specs:
            d = self.described.get(spec.id, {})
            path = spec.launch.metrics_path
            if path and d.get("url") and self.states.get(spec.id) == State.READY:
                targets.append({"targets": [d["url"].split("://", 1)[1]],
                                "labels": {"job": "moxin-engine", "replica": spec.id, "__metrics_path__": path,
                                           **spec.labels}})
        return targets

    def _write_sd(self) -> None:
        path = self.options.get("prometheusSd")
        if not path:
            return
        text = json.dumps(self._sd_targets(), indent=1, sort_keys=True) + "\n"
        if text != self._sd_written or not Path(path).exists():  # every loop calls this; write on change only
            write_atomic(Path(path), text)
            self._sd_written = text

    def _serve_metrics(self) -> int:
        port = int(self.options["metricsPort"])
        for candidate in (port, 0):
            try:
                server, _ = start_http_server(candidate, registry=self.metrics.registry)
                return server.server_address[1]
            except OSError:
                continue
        raise RuntimeError("cannot bind a metrics port")

    def _event(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-200]
