"""The controller's whole loop against an in-memory cluster (no Ray): adoption, replacement with backoff, drain then
stop, a start that raises, a placement group that waits, status/apply answering while a loop waits on Ray, and
counters that outlive the controller.

The loop is driven one iteration at a time (``reconcile_once``) with an injected clock; the stand-in cluster has
the methods of ``cluster.RayCluster`` and records every call. Every cluster call in every test checks that the
controller's lock is not held by the calling thread (each stands for a Ray call that may block): a call made under
it fails the test."""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.planner import PlanOptions, plan
from orchestrator.runtime import controller as controller_module
from orchestrator.runtime.controller import Controller
from orchestrator.runtime.desired import ReplicaSpec, replica_specs
from orchestrator.runtime.names import KV_COUNTERS, KV_OPTIONS, KV_PLAN, KV_ROLLOUTS
from orchestrator.runtime.reconcile import BACKOFF_BASE_S, Drain, Forget, Start, State, Stop
from orchestrator.spec import load_catalog
from orchestrator.spec.plan import Plan

ROOT = Path(__file__).resolve().parents[3]
NODES = {"gpu-emu-0", "mac-emu-0"}
GPU, MAC = "tiny-chat-bf16-gpu-emu-0", "tiny-chat-mlx-3bit-mac-emu-0"
T0 = 1000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeReplica:
    """A replica actor: what describe() says is set by the test."""

    def __init__(self, spec: ReplicaSpec, since: float, state: str = "starting") -> None:
        self.id, self.spec_hash = spec.id, spec.spec_hash
        self.state, self.since, self.restarts, self.alive = state, since, 0, True
        self.port = 20000 + len(spec.id)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "specHash": self.spec_hash, "state": self.state, "stateSince": self.since,
                "url": f"http://10.0.0.2:{self.port}", "host": "10.0.0.2", "enginePid": 4242, "guardPid": 4241,
                "restarts": self.restarts, "lastError": "", "log": f"/logs/{self.id}.log", "nodeId": "node-1"}


class FakeCluster:
    """``RayCluster``'s methods over dictionaries. ``pending`` replicas do not answer describe (their placement
    group waits); ``fail_starts`` counts starts to refuse per id; ``describe_gate`` makes describe wait for it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.kv: dict[bytes, str] = {}
        self.actors: dict[str, FakeReplica] = {}
        self.routers: dict[str, str] = {}
        self.pending: set[str] = set()
        self.nodes: set[str] = set(NODES)
        """Fleet nodes that live Ray nodes declare."""
        self.fail_starts: dict[str, int] = {}
        self.describe_gate: threading.Event | None = None
        self.describing = threading.Event()
        self.calls: list[tuple[str, Any]] = []
        self.controller_lock: Any = None
        """The controller's lock, once the test has one: no cluster method may be called while it is held."""
        self.under_lock: list[str] = []
        """Cluster methods called while the controller's lock was held (the loop's steps catch exceptions, so a
        violation is recorded, and the ``make`` fixture fails the test at its end)."""

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if not name.startswith("_") and name != "called" and callable(attr):
            lock = object.__getattribute__(self, "controller_lock")
            if lock is not None and lock._is_owned():
                object.__getattribute__(self, "under_lock").append(name)
        return attr

    def kv_get(self, key: bytes) -> Any:
        return json.loads(self.kv[key]) if key in self.kv else None

    def kv_put(self, key: bytes, value: Any) -> None:
        self.calls.append(("kv_put", key))
        self.kv[key] = json.dumps(value)

    def kv_del(self, key: bytes) -> None:
        self.kv.pop(key, None)

    def node_ip(self) -> str:
        return "10.0.0.1"

    def known_nodes(self) -> set[str]:
        return set(self.nodes)

    def list_replicas(self) -> dict[str, FakeReplica]:
        return {rid: a for rid, a in self.actors.items() if a.alive}

    def list_routers(self) -> dict[str, str]:
        return dict(self.routers)

    def start_replica(self, spec: ReplicaSpec, log_dir: str, grace_s: float) -> FakeReplica:
        self.calls.append(("start_replica", spec.id))
        if self.fail_starts.get(spec.id, 0) > 0:
            self.fail_starts[spec.id] -= 1
            raise RuntimeError(f"placement group for {spec.id} refused")
        self.actors[spec.id] = FakeReplica(spec, self.clock())
        return self.actors[spec.id]

    def describe_all(self, handles: dict[str, FakeReplica], timeout_s: float) -> dict[str, dict | State]:
        self.calls.append(("describe_all", sorted(handles)))
        if self.describe_gate is not None:
            self.describing.set()
            assert self.describe_gate.wait(10)
        return {rid: State.DEAD if not h.alive else State.PENDING if rid in self.pending else h.describe()
                for rid, h in handles.items()}

    def stop_replica(self, handle: FakeReplica) -> str:
        self.calls.append(("stop_replica", handle.id))
        handle.state = "stopping"
        return f"stop:{handle.id}"

    def poll_stopped(self, refs: dict[str, str], timeout_s: float = 0.0) -> set[str]:
        return set(refs)  # stops finish at once

    def forget(self, rid: str, handle: FakeReplica | None) -> None:
        self.calls.append(("forget", rid))
        if handle is not None:
            handle.alive = False
        if self.actors.get(rid) is handle:
            del self.actors[rid]

    def logs(self, handle: FakeReplica, tail: int, timeout_s: float) -> str:
        return f"log of {handle.id}\n"

    def start_router(self, name: str, host: str, port: int, api_keys: str | None = None,
                     limits: dict[str, Any] | None = None) -> str:
        self.calls.append(("start_router", name))
        self.calls.append(("router_limits", limits))
        self.routers[name] = name
        return name

    def drain_routers(self, handles: list[str], timeout_s: float) -> None:
        self.calls.append(("drain_routers", (sorted(handles), timeout_s)))

    def serve_routers(self, handles: list[str], timeout_s: float) -> list[dict[str, str]]:
        return [{"url": "http://10.0.0.1:8000", "metrics": f"10.0.0.1:{9500 + i}"} for i, _ in enumerate(handles)]

    def kill(self, handle: Any) -> None:
        self.calls.append(("kill", handle))
        self.routers.pop(handle, None)

    def called(self, name: str) -> list[Any]:
        return [arg for call, arg in self.calls if call == name]


@pytest.fixture(scope="module")
def local_plan() -> Plan:
    catalog = load_catalog([ROOT / "manifests" / "local"])
    return plan(catalog.fleets["local"], list(catalog.deployments.values()), catalog,
                options=PlanOptions(model_root="/cache/models"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cluster(clock) -> FakeCluster:
    return FakeCluster(clock)


@pytest.fixture
def make(cluster, clock, tmp_path):
    def _make(**options: Any) -> Controller:
        c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json"), **options},
                       cluster=cluster, clock=clock, run=False)
        cluster.controller_lock = c._lock  # from here on, every cluster call checks the lock is free
        return c
    yield _make
    assert cluster.under_lock == [], "cluster calls made while the controller's lock was held"


def specs_of(p: Plan) -> dict[str, ReplicaSpec]:
    return {s.id: s for s in replica_specs(p, known_nodes=NODES)}


def rows(c: Controller) -> dict[str, dict]:
    return {r["id"]: r for r in c.status()["replicas"]}


def routed(c: Controller) -> list[str]:
    return sorted(e["name"] for entries in c.routing_table().values() for e in entries)


def without(p: Plan, variant: str) -> Plan:
    spec = p.spec.model_copy(update={"assignments": [a for a in p.spec.assignments if a.variant != variant]})
    return p.model_copy(update={"spec": spec})


def running(c: Controller, cluster: FakeCluster, clock: Clock, p: Plan) -> Controller:
    """Apply ``p`` and loop until every replica is ready (at T0 + 2)."""
    c.apply(p)
    c.reconcile_once()
    for actor in cluster.actors.values():
        actor.state = "ready"
    clock.now += 2
    c.reconcile_once()
    assert routed(c) == sorted(specs_of(p))
    return c


def test_a_fresh_controller_starts_the_plan_after_saving_it_and_routes_replicas_once_ready(make, cluster, clock,
                                                                                          local_plan, monkeypatch):
    writes = []
    monkeypatch.setattr(controller_module, "write_atomic", lambda path, text: (writes.append(text),
                                                                              path.write_text(text)))
    c = make()
    assert c.reconcile_once() == []  # no plan yet; the router starts anyway
    assert cluster.called("start_router") == ["moxin-router-0"]
    c.apply(local_plan)
    actions = c.reconcile_once()
    assert actions == [Start(s, "missing") for s in specs_of(local_plan).values()]
    assert cluster.calls.index(("kv_put", KV_PLAN)) < cluster.calls.index(("start_replica", GPU))
    assert Plan.model_validate(cluster.kv_get(KV_PLAN)) == local_plan
    assert {r["state"] for r in rows(c).values()} == {"pending"} and routed(c) == []

    clock.now += 1
    assert c.reconcile_once() == [] and {r["state"] for r in rows(c).values()} == {"starting"}
    cluster.actors[GPU].state = "ready"
    clock.now += 1
    c.reconcile_once()
    assert routed(c) == [GPU] and rows(c)[GPU]["url"] == cluster.actors[GPU].describe()["url"]
    assert c.metrics.ready.labels(**specs_of(local_plan)[GPU].labels)._value.get() == 1

    sd = json.loads(Path(c.options["prometheusSd"]).read_text())
    engines = [t for t in sd if t["labels"]["job"] == "moxin-engine"]
    assert [t["labels"]["replica"] for t in engines] == [GPU]  # mlx-lm serves no /metrics, and is not ready
    assert {t["labels"]["job"] for t in sd} == {"moxin-controller", "moxin-router", "moxin-engine"}
    router_targets = next(t["targets"] for t in sd if t["labels"]["job"] == "moxin-router")
    assert c.status()["routerMetricsUrls"] == [f"http://{t}/metrics" for t in router_targets]  # what moxin top reads
    before = len(writes)
    c.reconcile_once()
    assert len(writes) == before  # nothing changed: the file_sd list is not written again


def test_a_restarted_controller_adopts_the_running_replicas_and_starts_nothing(make, cluster, clock, local_plan):
    running(make(), cluster, clock, local_plan)
    starts = len(cluster.called("start_replica"))
    engines = {rid: a for rid, a in cluster.actors.items()}

    again = make()  # a new controller on the same cluster: plan and actors are there
    assert again.plan == local_plan and again.adopted == sorted(specs_of(local_plan))
    assert again.reconcile_once() == []
    assert len(cluster.called("start_replica")) == starts and cluster.called("forget") == []
    assert cluster.called("start_router") == ["moxin-router-0"]  # the router was adopted too
    assert cluster.actors == engines and routed(again) == sorted(engines)
    assert {r["state"] for r in rows(again).values()} == {"ready"}


@pytest.mark.parametrize("how", ["dead", "failed"])
def test_a_dead_or_failed_replica_is_stopped_then_restarted_after_its_backoff(make, cluster, clock, local_plan, how):
    c = running(make(), cluster, clock, local_plan)
    old = cluster.actors[MAC]
    if how == "dead":
        old.alive = False  # the actor is gone: describe raises
    else:
        old.state = "failed"
    failed_at = clock.now = clock.now + 1
    assert c.reconcile_once() == [Stop(MAC, f"replica is {how}", failed=True)]
    assert routed(c) == [GPU] and rows(c)[MAC]["state"] == "stopping"
    assert c.records[MAC].failures == 1 and rows(c)[MAC]["restarts"] == 1
    assert cluster.called("forget") == []  # observing a dead replica acts on nothing; the executor stopped it

    clock.now = failed_at + 1  # the stop finished: forgotten, and replaced at once (its first failure)
    spec = specs_of(local_plan)[MAC]
    assert c.reconcile_once() == [Forget(MAC, "stopped"), Start(spec, "restart after 1 failure(s)")]
    assert cluster.called("forget") == [MAC] and not old.alive
    new = cluster.actors[MAC]
    assert new is not old and cluster.called("start_replica").count(MAC) == 2

    new.state = "ready"
    clock.now += 1
    c.reconcile_once()
    assert routed(c) == [GPU, MAC] and c.records[MAC].failures == 0 and rows(c)[MAC]["restarts"] == 1
    assert cluster.called("stop_replica") == [MAC]  # the other replica was never touched


def test_a_second_failure_waits_for_the_backoff_and_a_third_doubles_it(make, cluster, clock, local_plan):
    c = running(make(), cluster, clock, local_plan)
    cluster.actors[MAC].state = "failed"
    clock.now += 1
    c.reconcile_once()
    clock.now += 1
    assert [type(a) for a in c.reconcile_once()] == [Forget, Start]  # the first failure: replaced at once
    for failure in (2, 3):  # failed again before it was ready: crash-looping
        cluster.actors[MAC].state = "failed"
        failed_at = clock.now = clock.now + 1
        assert c.reconcile_once() == [Stop(MAC, "replica is failed", failed=True)]
        clock.now += 1
        assert c.reconcile_once() == [Forget(MAC, "stopped")]
        backoff = BACKOFF_BASE_S * 2 ** (failure - 2)
        clock.now = failed_at + backoff - 0.5
        assert c.reconcile_once() == []
        clock.now = failed_at + backoff
        assert [type(a) for a in c.reconcile_once()] == [Start]
    assert c.records[MAC].failures == 3


def test_a_replica_no_longer_in_the_plan_is_drained_then_stopped_after_the_drain_seconds(make, cluster, clock,
                                                                                        local_plan):
    c = running(make(drainSeconds=10.0), cluster, clock, local_plan)
    c.apply(without(local_plan, "mlx-3bit"))
    drained_at = clock.now = clock.now + 1
    assert c.reconcile_once() == [Drain(MAC, "not in the plan")]
    assert routed(c) == [GPU]  # out of the routing table at once, still running
    assert rows(c)[MAC]["draining"] and rows(c)[MAC]["state"] == "ready" and not rows(c)[MAC]["desired"]
    clock.now = drained_at + 9.5
    assert c.reconcile_once() == []
    clock.now = drained_at + 10
    assert c.reconcile_once() == [Stop(MAC, "not in the plan")]
    assert c.records[MAC].failures == 0 and rows(c)[MAC]["restarts"] == 0
    clock.now += 1
    assert c.reconcile_once() == [Forget(MAC, "stopped")]
    assert set(rows(c)) == {GPU} and MAC not in cluster.actors
    assert cluster.called("stop_replica") == [MAC] and cluster.called("forget") == [MAC]
    assert c.metrics.desired.labels(**specs_of(local_plan)[MAC].labels)._value.get() == 0


def test_a_start_that_raises_is_counted_as_a_reconcile_error_and_retried_while_the_loop_goes_on(make, cluster,
                                                                                               local_plan):
    cluster.fail_starts[GPU] = 1
    c = make()
    c.apply(local_plan)
    assert len(c.reconcile_once()) == 2
    assert cluster.called("start_replica") == [GPU, MAC] and list(cluster.actors) == [MAC]
    assert c.metrics.reconcile_errors.labels("act")._value.get() == 1
    assert any("act failed" in e and "placement group for" in e for e in c.status()["events"])
    assert rows(c)[GPU]["state"] == "missing" and rows(c)[MAC]["state"] == "pending"
    assert c.loops == 1  # the loop went on: record ran, the next loop runs

    assert c.reconcile_once() == [Start(specs_of(local_plan)[GPU], "missing")]  # retried, no backoff
    assert sorted(cluster.actors) == [GPU, MAC] and c.metrics.reconcile_errors.labels("act")._value.get() == 1


def test_a_replica_whose_placement_group_waits_is_pending_and_status_names_the_bundles(make, cluster, clock,
                                                                                     local_plan):
    cluster.pending.add(GPU)
    c = make()
    c.apply(local_plan)
    c.reconcile_once()
    for _ in range(3):
        clock.now += 1
        assert c.reconcile_once() == []  # pending is not a failure: nothing is restarted
    row = rows(c)[GPU]
    assert row["state"] == "pending"
    assert row["lastError"] == ("waiting for Ray resources: STRICT_PACK [{'GPU': 1.0, 'accelerator_type:H100': 0.001, "
                                "'moxin-node-gpu-emu-0': 0.001}] (a node must declare them: moxin node-resources)")
    assert rows(c)[MAC]["lastError"] == "" and GPU not in routed(c)
    assert cluster.called("start_replica").count(GPU) == 1 and cluster.called("stop_replica") == []
    cluster.pending.clear()
    cluster.actors[GPU].state = "ready"
    c.reconcile_once()
    assert rows(c)[GPU]["state"] == "ready" and rows(c)[GPU]["lastError"] == "" and GPU in routed(c)


def test_a_replica_pending_past_the_deadline_is_reported_unschedulable_with_the_reason_and_the_fix(
        make, cluster, clock, local_plan):
    cluster.nodes = {"mac-emu-0"}  # the GPU node is gone from the Ray cluster
    cluster.pending.add(GPU)
    c = make(pendingDeadlineSeconds=60.0)
    c.apply(local_plan)
    c.reconcile_once()
    labels = specs_of(local_plan)[GPU].labels

    def gauge() -> float:
        return c.metrics.unschedulable.labels(**labels)._value.get()
    clock.now += 60
    c.reconcile_once()
    assert rows(c)[GPU]["unschedulable"] is None and gauge() == 0  # at the deadline: still waiting
    clock.now += 1
    assert c.reconcile_once() == []  # reported, nothing restarted
    row = rows(c)[GPU]
    assert row["state"] == "pending" and row["unschedulable"]["waitingSeconds"] == 61
    reason = ("node gpu-emu-0 (pool gpu-emu) is not in the Ray cluster; no other node of pool gpu-emu is in it")
    assert row["unschedulable"]["reason"] == reason
    assert row["lastError"].startswith(f"unschedulable for 61 s: {reason}. To fix: bring node gpu-emu-0 back")
    assert gauge() == 1 and rows(c)[MAC]["unschedulable"] is None
    assert sum(f"{GPU} is unschedulable" in e for e in c.status()["events"]) == 1
    clock.now += 1
    c.reconcile_once()
    assert sum(f"{GPU} is unschedulable" in e for e in c.status()["events"]) == 1  # said once, not every loop

    cluster.nodes = set(NODES)  # the node is back and the group placed
    cluster.pending.clear()
    cluster.actors[GPU].state = "ready"
    clock.now += 1
    c.reconcile_once()
    assert rows(c)[GPU]["unschedulable"] is None and gauge() == 0 and rows(c)[GPU]["lastError"] == ""


def test_status_and_apply_answer_while_a_describe_call_blocks(make, cluster, local_plan):
    c = make()
    c.apply(local_plan)
    c.reconcile_once()
    cluster.describe_gate = threading.Event()
    loop = threading.Thread(target=c.reconcile_once, daemon=True)
    loop.start()
    try:
        assert cluster.describing.wait(5)
        t0 = time.monotonic()
        st = c.status()
        applied = c.apply(without(local_plan, "mlx-3bit"))
        logs = c.logs(GPU)
        took = time.monotonic() - t0
        assert loop.is_alive()  # still waiting on describe
    finally:
        cluster.describe_gate.set()
        loop.join(5)
    assert took < 1.0 and st["loops"] == 1 and set(rows(c)) == {GPU, MAC}
    assert applied == {"replicas": [GPU]} and logs == f"log of {GPU}\n"
    assert not loop.is_alive() and c.loops == 2


def test_shutdown_stops_every_replica_and_router_and_forgets_the_plan(make, cluster, clock, local_plan):
    c = running(make(), cluster, clock, local_plan)
    assert c.shutdown() == sorted(specs_of(local_plan))
    assert sorted(cluster.called("stop_replica")) == sorted(specs_of(local_plan))
    assert sorted(cluster.called("forget")) == sorted(specs_of(local_plan)) and cluster.actors == {}
    assert cluster.called("kill") == ["moxin-router-0"] and cluster.kv_get(KV_PLAN) is None
    assert cluster.kv_get(KV_OPTIONS)["drainSeconds"] == 10.0  # options stay for the next controller
    assert [type(a) for a in c.reconcile_once()] == [Start, Start]  # a loop after shutdown decides, acts on nothing
    assert len(cluster.called("start_replica")) == 2


def test_the_controller_module_does_not_import_ray():
    """Every Ray call goes through runtime/cluster.py: the controller's logic runs without Ray."""
    tree = ast.parse(Path(controller_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [m for m in imported if m == "ray" or m.startswith("ray.")]


def test_the_lock_check_catches_a_cluster_call_made_under_the_lock(make, cluster):
    """The check every test runs under (``FakeCluster.__getattribute__``) can fail: a call under the lock is seen."""
    c = make()
    with c._lock:
        cluster.known_nodes()
    assert cluster.under_lock == ["known_nodes"]
    cluster.under_lock.clear()
    c.status()
    threading.Thread(target=cluster.known_nodes).start()  # another thread's call while this one holds it is fine
    assert cluster.under_lock == []


def test_restart_and_replacement_counts_survive_a_controller_restart(make, cluster, clock, local_plan):
    c = running(make(), cluster, clock, local_plan)
    cluster.actors[MAC].state = "failed"
    failed_at = clock.now = clock.now + 1
    c.reconcile_once()  # stopped as failed: one replacement
    assert cluster.kv_get(KV_COUNTERS) == {MAC: {"engineRestarts": 0, "replacements": 1, "failures": 1,
                                                 "lastFailure": failed_at}}
    clock.now += 1
    cluster.fail_starts[MAC] = 1  # its replacement is refused: the id has no actor for a while
    assert [type(a) for a in c.reconcile_once()] == [Forget, Start]
    assert MAC not in cluster.actors

    between = make()  # a controller restarted while the id has no actor: the count is still there
    assert rows(between)[MAC]["restarts"] == 1 and rows(between)[MAC]["replacements"] == 1
    assert [type(a) for a in between.reconcile_once()] == [Start]  # one failure: no backoff to wait for
    cluster.actors[MAC].state, cluster.actors[MAC].restarts = "ready", 2  # its engine restarted twice
    clock.now += 1
    between.reconcile_once()
    assert rows(between)[MAC]["restarts"] == 3

    again = make()  # adopts the running actor: its own engine restarts come from its description, once
    again.reconcile_once()
    assert rows(again)[MAC]["restarts"] == 3 and rows(again)[MAC]["replacements"] == 1
    assert again.metrics.restarts.labels(**specs_of(local_plan)[MAC].labels)._value.get() == 3
    assert rows(again)[GPU]["restarts"] == 0

    cluster.actors[MAC].alive = False  # that actor dies: its engine restarts are carried, with one more replacement
    clock.now += 1
    died_at = clock.now
    again.reconcile_once()
    backoff = {"failures": 1, "lastFailure": died_at}
    assert cluster.kv_get(KV_COUNTERS) == {MAC: {"engineRestarts": 0, "replacements": 2, **backoff}}
    clock.now += 1
    again.reconcile_once()  # forgotten: the dead actor's 2 engine restarts move into the saved counters
    assert cluster.kv_get(KV_COUNTERS) == {MAC: {"engineRestarts": 2, "replacements": 2, **backoff}}
    assert rows(make())[MAC]["restarts"] == 4

    again.shutdown()
    assert cluster.kv_get(KV_COUNTERS) is None
    fresh = make()
    assert rows(fresh) == {} and fresh.records == {}


def test_a_restarted_controller_keeps_the_restart_backoff_of_a_crash_looping_replica(make, cluster, clock,
                                                                                   local_plan):
    c = running(make(), cluster, clock, local_plan)
    for failure in (1, 2, 3):  # three failures in a row: the next start waits 2 x BACKOFF_BASE_S
        if failure == 3:
            clock.now += BACKOFF_BASE_S
            assert [type(a) for a in c.reconcile_once()] == [Start]
        cluster.actors[MAC].state = "failed"
        failed_at = clock.now = clock.now + 1
        c.reconcile_once()
        clock.now += 1
        c.reconcile_once()  # forgotten (and, after the first failure, started again at once)
    assert cluster.kv_get(KV_COUNTERS)[MAC]["failures"] == 3

    again = make()  # a controller restarted inside the backoff: it waits the rest of it, it does not start at once
    assert again.records[MAC].failures == 3 and again.records[MAC].last_failure == failed_at
    clock.now = failed_at + 2 * BACKOFF_BASE_S - 0.5
    assert again.reconcile_once() == []
    clock.now = failed_at + 2 * BACKOFF_BASE_S
    assert again.reconcile_once() == [Start(specs_of(local_plan)[MAC], "restart after 3 failure(s)")]

    cluster.actors[MAC].state = "ready"  # ready again: the backoff is over, and saved as over
    clock.now += 1
    again.reconcile_once()
    assert "failures" not in cluster.kv_get(KV_COUNTERS)[MAC] and make().records[MAC].failures == 0


@pytest.mark.parametrize("saved", [{"failures": -1, "lastFailure": 5.0}, {"failures": 2, "lastFailure": "soon"},
                                   {"failures": True}, {"failures": 1, "lastFailure": float("nan")}])
def test_a_malformed_saved_backoff_starts_at_once(make, cluster, clock, local_plan, saved):
    cluster.kv_put(KV_PLAN, local_plan.to_json())
    cluster.kv_put(KV_COUNTERS, {MAC: saved})
    c = make()
    assert c.records[MAC].last_failure == 0.0
    assert sorted(a.spec.id for a in c.reconcile_once() if isinstance(a, Start)) == [GPU, MAC]


def test_counters_are_written_only_when_they_change(make, cluster, clock, local_plan):
    c = running(make(), cluster, clock, local_plan)
    for _ in range(3):
        clock.now += 1
        c.reconcile_once()
    assert cluster.calls.count(("kv_put", KV_COUNTERS)) == 0  # nothing failed: nothing to save


def test_shutdown_drains_the_routers_before_it_stops_the_replicas(make, cluster, clock, local_plan):
    c = running(make(routerLimits={"drainSeconds": 7.0, "idleTimeoutSeconds": 30.0}), cluster, clock, local_plan)
    assert cluster.called("router_limits") == [{"drainSeconds": 7.0, "idleTimeoutSeconds": 30.0}]
    c.shutdown()
    names = [call for call, _ in cluster.calls]
    assert cluster.called("drain_routers") == [(["moxin-router-0"], 7.0 + controller_module.ROUTER_DRAIN_MARGIN_S)]
    assert names.index("drain_routers") < names.index("stop_replica") < names.index("kill")


# -- rollouts --------------------------------------------------------------------------------------------------

ROLLOUT = {"deployment": "tiny-chat", "from": {"variant": "bf16"}, "to": {"variant": "mlx-3bit", "pool": "mac-emu"},
           "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"setWeight": 100}]}


def mac_side(p: Plan) -> dict[str, Any]:
    return next(a for a in p.spec.assignments if a.variant == "mlx-3bit").model_dump(mode="json", by_alias=True)


def loop_ready(c: Controller, cluster: FakeCluster, clock: Clock, times: int = 1) -> None:
    """Loops in which every replica started becomes ready."""
    for _ in range(times):
        c.reconcile_once()
        for actor in cluster.actors.values():
            if actor.state == "starting":
                actor.state = "ready"
        clock.now += 1


def test_a_rollout_brings_the_new_side_up_moves_the_traffic_in_steps_and_leaves_it_alone(make, cluster, clock,
                                                                                      local_plan):
    """bf16-only tiny-chat -> mlx-3bit on mac-emu: the new replica starts after the rollout state is in GCS, routes
    as the canary side at 10% (split in the routing document), holds at the pause until promoted, goes to 50 and
    100, then the old side is drained and the saved plan serves the deployment with the new side only."""
    base = without(local_plan, "mlx-3bit")
    c = running(make(), cluster, clock, base)
    status = c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))["to-mac"]
    assert status["phase"] == "Pending" and cluster.kv_get(KV_ROLLOUTS)["to-mac"]["state"]["phase"] == "Pending"

    loop_ready(c, cluster, clock)
    assert cluster.called("start_replica")[-1] == MAC
    starts = [i for i, call in enumerate(cluster.calls) if call == ("start_replica", MAC)]
    saved = [i for i, call in enumerate(cluster.calls) if call == ("kv_put", KV_ROLLOUTS)]
    assert saved and saved[-1] < starts[0]  # the state that asks for the new side is saved before it starts
    loop_ready(c, cluster, clock, 3)
    doc = c.routing_document()
    assert doc["splits"] == {"tiny-chat": {"canaryPercent": 10.0}}
    assert {r["name"]: r.get("side", "stable") for r in doc["deployments"]["tiny-chat"]} == {GPU: "stable",
                                                                                          MAC: "canary"}
    from orchestrator.runtime.balance import parse_document
    parse_document(doc)  # what the routers take

    loop_ready(c, cluster, clock, 3)
    assert c.rollout_status("to-mac")["to-mac"]["phase"] == "Paused"  # pause {}: until promoted
    c.rollout_command("to-mac", "promote")
    loop_ready(c, cluster, clock, 3)
    loop_ready(c, cluster, clock, 3)
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "Succeeded" and st["finished"], st
    weights = [d["message"].split(":")[1].split("%")[0].strip() for d in st["log"] if "% of traffic" in d["message"]]
    assert weights == ["10", "50", "100"] and "promoted by the operator" in st["log"][3]["message"]
    assert [a.variant for a in c.plan.spec.assignments] == ["mlx-3bit"]
    assert Plan.model_validate(cluster.kv_get(KV_PLAN)) == c.plan  # a later loop does not bring bf16 back
    clock.now += 20
    loop_ready(c, cluster, clock, 3)
    assert cluster.called("stop_replica") == [GPU] and routed(c) == [MAC]
    assert c.routing_document()["splits"] == {}
    assert cluster.called("start_replica").count(MAC) == 1


def test_a_restarted_controller_resumes_the_rollout_at_its_step_with_the_same_replicas(make, cluster, clock,
                                                                                      local_plan):
    base = without(local_plan, "mlx-3bit")
    c = running(make(), cluster, clock, base)
    c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))
    loop_ready(c, cluster, clock, 6)
    before = c.rollout_status("to-mac")["to-mac"]
    assert before["phase"] == "Paused" and before["weight"] == 10
    starts = list(cluster.called("start_replica"))

    again = make()  # the old controller is gone; the rollout and the replicas are in the cluster
    assert again.rollout_status("to-mac")["to-mac"]["step"] == before["step"]
    loop_ready(again, cluster, clock, 2)
    assert cluster.called("start_replica") == starts and cluster.called("stop_replica") == []
    assert again.routing_document()["splits"] == {"tiny-chat": {"canaryPercent": 10.0}}
    assert sorted(routed(again)) == sorted([GPU, MAC])


def aborted(make, cluster, clock, local_plan) -> tuple[Controller, Plan]:
    """A controller running tiny-chat on bf16 whose rollout "to-mac" was aborted at 10%; the plan before it."""
    base = without(local_plan, "mlx-3bit")
    c = running(make(), cluster, clock, base)
    c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))
    loop_ready(c, cluster, clock, 6)
    c.rollout_command("to-mac", "abort")
    loop_ready(c, cluster, clock, 2)
    return c, base


def test_an_aborted_rollout_removes_the_new_side_and_sends_all_traffic_to_the_old(make, cluster, clock, local_plan):
    c, base = aborted(make, cluster, clock, local_plan)
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "RolledBack" and st["finished"]
    assert c.routing_document()["splits"] == {} and routed(c) == [GPU]
    clock.now += 20
    loop_ready(c, cluster, clock, 2)
    assert cluster.called("stop_replica") == [MAC] and c.plan == base


def rollout_series(c: Controller) -> set[str]:
    """The rollouts the controller's rollout gauges export (what MoxinRolloutFailed reads)."""
    return {s.labels["rollout"] for g in (c.metrics.rollout_phase, c.metrics.rollout_weight)
            for metric in g.collect() for s in metric.samples}


def test_a_deleted_finished_rollout_leaves_status_gcs_and_the_metrics(make, cluster, clock, local_plan):
    """A rolled-back rollout keeps phase RolledBack = 1 (the alert fires) until deleted; deleted, it is gone from
    status, from GCS (a restarted controller does not bring it back) and from the next loop's gauges."""
    c, base = aborted(make, cluster, clock, local_plan)
    assert rollout_series(c) == {"to-mac"}
    assert c.metrics.rollout_phase.labels(rollout="to-mac", deployment="tiny-chat",
                                          phase="RolledBack")._value.get() == 1

    assert c.rollout_delete("to-mac") == {}
    assert "to-mac" not in cluster.kv_get(KV_ROLLOUTS)
    loop_ready(c, cluster, clock)
    assert rollout_series(c) == set() and c.plan == base and routed(c) == [GPU]
    assert make().rollout_status() == {}
    with pytest.raises(KeyError, match="no rollout 'to-mac'"):
        c.rollout_delete("to-mac")


def test_a_running_rollout_is_deleted_only_with_force_which_ends_it_as_an_abort(make, cluster, clock, local_plan):
    base = without(local_plan, "mlx-3bit")
    c = running(make(), cluster, clock, base)
    c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))
    loop_ready(c, cluster, clock, 6)
    assert c.routing_document()["splits"] == {"tiny-chat": {"canaryPercent": 10.0}}
    with pytest.raises(ValueError, match=r"not finished \(Paused\).*--force"):
        c.rollout_delete("to-mac")
    assert c.rollout_status("to-mac")["to-mac"]["phase"] == "Paused"

    assert c.rollout_delete("to-mac", force=True) == {}
    loop_ready(c, cluster, clock, 2)
    assert c.routing_document()["splits"] == {} and routed(c) == [GPU]
    clock.now += 20
    loop_ready(c, cluster, clock, 2)
    assert cluster.called("stop_replica") == [MAC] and c.plan == base and rollout_series(c) == set()


def test_a_rollout_is_refused_without_an_old_side_or_beside_a_running_one(make, cluster, clock, local_plan):
    base = without(local_plan, "mlx-3bit")
    c = running(make(), cluster, clock, base)
    with pytest.raises(ValueError, match="no replica matching 'from'"):
        c.rollout_apply("x", {**ROLLOUT, "from": {"variant": "fp8"}}, mac_side(local_plan))
    c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))
    with pytest.raises(ValueError, match="already has rollout 'to-mac' running"):
        c.rollout_apply("other", ROLLOUT, mac_side(local_plan))
    assert c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))["to-mac"]["phase"] == "Pending"  # same: no-op
    with pytest.raises(KeyError, match="no rollout 'nope'"):
        c.rollout_command("nope", "pause")


def test_a_rollout_whose_new_side_is_named_like_a_kept_assignment_is_refused(make, cluster, clock, local_plan):
    """The plan already runs mlx-3bit on mac-emu (not matching 'from'): the new side would take its replica ids."""
    c = running(make(), cluster, clock, local_plan)
    with pytest.raises(ValueError, match="share its object name"):
        c.rollout_apply("to-mac", ROLLOUT, mac_side(local_plan))
    assert "to-mac" not in c.runs


class FakeProbe:
    """The rollout reads: /metrics pages built from ``requests`` ((variant, code) -> count, the test raises them),
    Prometheus answers from ``answers`` (query -> value), generations from ``texts`` (variant -> text)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], float] = {}
        self.answers: dict[str, float | None] = {}
        self.asked: list[str] = []
        self.generated: list[tuple[str, str]] = []

    def metrics_pages(self, urls: list[str]) -> list[tuple[str, str]]:
        pools = {"bf16": "gpu-emu", "mlx-3bit": "mac-emu"}
        lines = [f'moxin_router_requests_total{{deployment="tiny-chat",variant="{v}",pool="{pools[v]}",'
                 f'code="{code}"}} {n}' for (v, code), n in self.requests.items()]
        return [("10.0.0.1:9500", "# TYPE moxin_router_requests counter\n" + "\n".join(lines) + "\n")]

    def query(self, url: str, promql: str) -> float | None:
        self.asked.append(promql)
        return self.answers.get(promql)

    def answer_prompts(self, url: str, request_model: str, prompts: list[str], quality: Any) -> Any:
        from orchestrator.rollout.quality import Generation
        self.generated += [(url, p) for p in prompts]
        return [Generation(f"answer to {p}") for p in prompts]


GATED = {**ROLLOUT, "steps": [{"setWeight": 10},
                              {"analysis": {"gates": [{"metric": "errorRatio", "threshold": {"max": 0.05},
                                                       "intervalSeconds": 10, "minRequests": 5}]}},
                              {"setWeight": 100}]}


def test_a_gate_read_from_the_routers_metrics_that_fails_rolls_back_and_the_status_names_it(cluster, clock, tmp_path,
                                                                                         local_plan):
    probe = FakeProbe()
    c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json")}, cluster=cluster, clock=clock,
                   run=False, probe=probe)
    running(c, cluster, clock, without(local_plan, "mlx-3bit"))
    c.rollout_apply("to-mac", GATED, mac_side(local_plan))
    for _ in range(20):  # the canary answers 30 requests, 6 of them 503, over the gate's 10 s
        probe.requests[("mlx-3bit", "200")] = probe.requests.get(("mlx-3bit", "200"), 0) + 2
        probe.requests[("mlx-3bit", "503")] = probe.requests.get(("mlx-3bit", "503"), 0) + 0.5
        probe.requests[("bf16", "200")] = probe.requests.get(("bf16", "200"), 0) + 20
        loop_ready(c, cluster, clock)
        if c.rollout_status("to-mac")["to-mac"]["phase"] == "RolledBack":
            break
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "RolledBack", st
    assert any("errorRatio" in d["message"] for d in st["log"]), st["log"]
    assert c.routing_document()["splits"] == {} and routed(c) == [GPU]
    ids = {"rollout": "to-mac", "deployment": "tiny-chat"}
    phases = {p: c.metrics.rollout_phase.labels(**ids, phase=p)._value.get() for p in ("RolledBack", "Progressing")}
    assert phases == {"RolledBack": 1, "Progressing": 0}
    assert c.metrics.rollout_weight.labels(**ids)._value.get() == 0


class RoutersProbe(FakeProbe):
    """Several routers: each /metrics page counts only the requests its router took (``by_router``: instance ->
    (variant, code) -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_router: dict[str, dict[tuple[str, str], float]] = {}
        self.read: list[list[str]] = []

    def metrics_pages(self, urls: list[str]) -> list[tuple[str, str]]:
        self.read.append(list(urls))
        pages = []
        for url in urls:
            self.requests = self.by_router.get(url.split("/")[2], {})
            ((_, text),) = super().metrics_pages([url])
            pages.append((url.split("/")[2], text))
        return pages


def test_a_gate_read_without_prometheus_sums_every_routers_metrics(cluster, clock, tmp_path, local_plan):
    """Two routers share the port, each takes half of the canary's requests: 3 in the gate's 10 s on each, below
    its minRequests (5), 6 together. Summed, the gate passes and the rollout succeeds; a controller that read one
    router's /metrics would find too little traffic (inconclusive, until the rollout pauses)."""
    probe = RoutersProbe()
    c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json"), "routers": 2},
                   cluster=cluster, clock=clock, run=False, probe=probe)
    running(c, cluster, clock, without(local_plan, "mlx-3bit"))
    assert cluster.called("start_router") == ["moxin-router-0", "moxin-router-1"]
    first, second = (f"10.0.0.1:{9500 + i}" for i in range(2))
    probe.by_router = {first: {}, second: {}}
    c.rollout_apply("to-mac", GATED, mac_side(local_plan))
    for _ in range(40):
        for router, adds in ((first, {("mlx-3bit", "200"): 0.3}),
                             (second, {("mlx-3bit", "200"): 0.3, ("bf16", "200"): 2})):
            for key, n in adds.items():
                probe.by_router[router][key] = probe.by_router[router].get(key, 0) + n
        loop_ready(c, cluster, clock)
        if c.rollout_status("to-mac")["to-mac"]["phase"] in ("Succeeded", "RolledBack"):
            break
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "Succeeded", st
    assert probe.read and all(urls == [f"http://{first}/metrics", f"http://{second}/metrics"] for urls in probe.read)


def test_gates_read_from_prometheus_pass_and_the_rollout_succeeds(cluster, clock, tmp_path, local_plan):
    from orchestrator.rollout.gates import Side, promql, requests_query
    probe = FakeProbe()
    canary, stable = Side("tiny-chat", "mlx-3bit", "mac-emu"), Side("tiny-chat", "bf16", "gpu-emu")
    probe.answers = {requests_query(canary, 10): 50.0, promql("errorRatio", canary, 10): 0.0,
                     requests_query(stable, 10): 500.0, promql("errorRatio", stable, 10): 0.0}
    c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json"),
                    "prometheusUrl": "http://prom:9090"}, cluster=cluster, clock=clock, run=False, probe=probe)
    running(c, cluster, clock, without(local_plan, "mlx-3bit"))
    c.rollout_apply("to-mac", GATED, mac_side(local_plan))
    loop_ready(c, cluster, clock, 20)
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "Succeeded", st
    assert set(probe.asked) == set(probe.answers)
    ids = {"rollout": "to-mac", "deployment": "tiny-chat"}
    assert c.metrics.rollout_phase.labels(**ids, phase="Succeeded")._value.get() == 1
    assert c.metrics.rollout_weight.labels(**ids)._value.get() == 100


def test_the_quality_gate_sends_the_golden_prompts_to_one_replica_of_each_side(cluster, clock, tmp_path, local_plan):
    probe = FakeProbe()
    c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json")}, cluster=cluster, clock=clock,
                   run=False, probe=probe)
    running(c, cluster, clock, without(local_plan, "mlx-3bit"))
    spec = {**ROLLOUT, "steps": [{"setWeight": 10}, {"analysis": {"gates": [{"metric": "quality",
                                                                            "intervalSeconds": 1}]}}],
            "quality": {"prompts": "builtin", "maxTokens": 8}}
    c.rollout_apply("to-mac", spec, mac_side(local_plan), prompts=["one", "two"])
    loop_ready(c, cluster, clock, 10)
    st = c.rollout_status("to-mac")["to-mac"]
    assert st["phase"] == "Succeeded", st
    urls = {url for url, _ in probe.generated}
    assert len(urls) == 2 and sorted({p for _, p in probe.generated}) == ["one", "two"]


def test_a_side_that_does_not_answer_the_golden_prompts_leaves_the_quality_gate_unmeasured(cluster, clock, tmp_path,
                                                                                           local_plan):
    """A ProbeError is a failed measurement, not a failed gate: the rollout waits at the gate and says why."""
    from orchestrator.runtime.quality_probe import ProbeError

    class Silent(FakeProbe):
        def answer_prompts(self, url: str, request_model: str, prompts: list[str], quality: Any) -> Any:
            raise ProbeError(f"{url}: ClientConnectorError: refused")

    c = Controller({"drainSeconds": 10.0, "prometheusSd": str(tmp_path / "sd.json")}, cluster=cluster, clock=clock,
                   run=False, probe=Silent())
    running(c, cluster, clock, without(local_plan, "mlx-3bit"))
    spec = {**ROLLOUT, "steps": [{"setWeight": 10}, {"analysis": {"gates": [{"metric": "quality",
                                                                            "intervalSeconds": 1}]}}],
            "quality": {"prompts": "builtin", "maxTokens": 8}}
    c.rollout_apply("to-mac", spec, mac_side(local_plan))
    loop_ready(c, cluster, clock, 10)
    assert c.rollout_status("to-mac")["to-mac"]["phase"] == "Progressing"
    assert any("gate quality not measured" in e and "refused" in e for e in c.events)
