"""The controller: a named, detached Ray actor that holds the desired Plan and reconciles what runs.

Every Ray call it makes goes through one ``RayCluster`` (``cluster.py``); this module does not import Ray, and its
unit tests run the whole loop against an in-memory stand-in. What it knows of each replica id is one
``ReplicaRecord``. Each loop (``reconcile_once``) has one shape (STYLE.md):

1. observe: poll the stops in flight, describe the replicas, read the cluster's nodes; a ``Snapshot``, nothing
   changed (then the snapshot is folded into the records);
2. decide: ``reconcile.decide``, pure: actions as values;
3. save desired: the plan acted on is in GCS before anything acts on it;
4. act: the executor, the only code that turns actions into cluster calls (start, stop, forget a stopped one);
5. record: the replicas' counters (restarts, replacements) to GCS when they changed, then the routing table,
   metrics and the Prometheus file_sd list.

Each step is guarded: a failure is counted and logged, and the next loop tries again. The lock guards the records,
the plan and the options and is held only to read or swap them, never across a cluster call, so ``status`` and
``apply`` answer while a loop waits on Ray. Only the loop thread changes records (and ``shutdown``, after waiting
for the loop to end). Replicas are named detached actors: a restarted controller reads the plan back, finds the replicas by
name and adopts them, engine processes untouched, and its counters: the restarts and replacements of each id's
earlier actors (``KV_COUNTERS``), so that ``moxin_replica_restarts`` never goes back to 0 with a new controller, and
each id's restart backoff (consecutive failures, the last one's time), so that a new controller does not start a
crash-looping replica again at once.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from orchestrator.errors import MoxinError
from orchestrator.output import write_atomic
from orchestrator.rollout import gates, machine, measure, quality, sides
from orchestrator.runtime import rollouts
from orchestrator.runtime.desired import ReplicaSpec, replica_specs
from orchestrator.runtime.metrics import ControllerMetrics
from orchestrator.runtime.names import KV_COUNTERS, KV_OPTIONS, KV_PLAN, KV_ROLLOUTS, ROUTER_PREFIX
from orchestrator.runtime.reconcile import (
    PENDING_DEADLINE_S,
    STOP_TIMEOUT_S,
    Action,
    Drain,
    Forget,
    Observed,
    Start,
    State,
    Stop,
    Undrain,
    Unschedulable,
    decide,
    unschedulable,
)
from orchestrator.spec.defaults import CONTROLLER_METRICS_PORT, ROUTER_PORT
from orchestrator.spec.metrics import SCRAPE_JOBS
from orchestrator.spec.plan import Assignment, Plan
from orchestrator.spec.rollout import RolloutSpec
from orchestrator.spec.router import RouterLimits

if TYPE_CHECKING:
    from orchestrator.runtime.cluster import RayCluster

LOOP_S = 1.0
OBSERVE_TIMEOUT_S = 5.0
ROUTER_START_TIMEOUT_S = 30.0
LOGS_TIMEOUT_S = 30.0
SHUTDOWN_WAIT_LOOP_S = 60.0
"""How long ``shutdown`` waits for a loop in flight to end (it may be waiting on Ray) before stopping replicas."""
ROUTER_DRAIN_MARGIN_S = 5.0
"""How much longer than a router's drain_seconds ``shutdown`` waits for it before killing it."""
DEFAULT_OPTIONS: dict[str, Any] = {
    "metricsPort": CONTROLLER_METRICS_PORT, "routers": 1, "routerHost": "0.0.0.0", "routerPort": ROUTER_PORT,
    "apiKeys": None,
    "logDir": str(Path(tempfile.gettempdir()) / "moxin" / "logs"), "drainSeconds": 10.0, "graceSeconds": 15.0,
    "prometheusSd": None, "routerLimits": {}, "prometheusUrl": None, "pendingDeadlineSeconds": PENDING_DEADLINE_S,
}


@dataclass
class ReplicaRecord:
    """What the controller knows of one replica id. It outlives the replica's actor: failures and restarts carry
    over to the next actor of the same id."""

    id: str
    handle: Any = None
    """The replica's actor (a cluster handle); None while none runs."""
    description: dict[str, Any] = field(default_factory=dict)
    """Its last ``describe()``."""
    spec_hash: str = ""
    """The launch it was started with; "" for an adopted replica until it answers. Its description says, once
    there is one."""
    state: State = State.PENDING
    draining_since: float | None = None
    pending_since: float | None = None
    """When its actor started waiting for its placement group (Ray resources); None when not waiting."""
    stop_ref: Any = None
    """What its stop call returns, while it stops; None otherwise."""
    stop_since: float | None = None
    stop_done: bool = False
    failures: int = 0
    """Consecutive failures; reset when the replica is READY."""
    last_failure: float = 0.0
    carried_restarts: int = 0
    """Engine restarts that earlier actors of this id counted (saved in GCS)."""
    replacements: int = 0
    """Actors of this id stopped because they had failed or died (saved in GCS)."""

    @property
    def running(self) -> bool:
        return self.handle is not None

    @property
    def stopping(self) -> bool:
        return self.stop_ref is not None

    @property
    def restarts(self) -> int:
        """Engine restarts and replacements, over every actor of this id."""
        return self.description.get("restarts", 0) + self.carried_restarts + self.replacements

    def counters(self) -> dict[str, Any]:
        """What is saved in GCS: counts of actors that no longer run (a running one's are in its description), and
        the restart backoff while there is one (consecutive failures and when the last was), so that a restarted
        controller does not start a crash-looping replica again at once."""
        backoff = {"failures": self.failures, "lastFailure": self.last_failure} if self.failures else {}
        return {"engineRestarts": self.carried_restarts, "replacements": self.replacements, **backoff}

    def observed(self) -> Observed:
        if self.stopping:
            return Observed(self.id, "", State.STOPPING, since=self.stop_since, stopped=self.stop_done)
        d = self.description
        return Observed(self.id, d.get("specHash", self.spec_hash), self.state, self.draining_since,
                        d.get("stateSince"))


@dataclass(frozen=True)
class Snapshot:
    """What one observation saw."""

    nodes: frozenset[str]
    replies: dict[str, dict[str, Any] | State]
    """By replica id: its description, State.DEAD or State.PENDING (no answer in time)."""
    stopped: frozenset[str]
    """Replicas whose stop call has returned."""


@dataclass(frozen=True)
class _View:
    """What a loop acts on, read under the lock at its start."""

    plan: Plan | None
    options: dict[str, Any]
    handles: dict[str, Any]
    """Running replicas that are not stopping: to describe."""
    stops: dict[str, Any]
    """Stops in flight: to poll."""


class Controller:
    def __init__(self, options: dict[str, Any] | None = None, cluster: RayCluster | None = None,
                 clock: Callable[[], float] = time.time, run: bool = True, probe: Any = None) -> None:
        """``cluster`` defaults to the Ray cluster this actor runs in. ``run``: serve metrics and start the reconcile
        thread; without it the caller drives ``reconcile_once`` (as the unit tests do). ``probe``: the rollout
        gates' reads (``rollout_probe.HttpProbe`` by default)."""
        if cluster is None:
            from orchestrator.runtime.cluster import RayCluster

            cluster = RayCluster()
        self.cluster = cluster
        self.clock = clock
        if probe is None:
            from orchestrator.runtime.rollout_probe import HttpProbe
            from orchestrator.runtime.secrets import engine_key

            probe = HttpProbe(engine_key())
        self.probe = probe
        self._pages: list[Any] = []
        """Readings of the routers' /metrics while a rollout runs without Prometheus (oldest first)."""
        self.options = {**DEFAULT_OPTIONS, **(cluster.kv_get(KV_OPTIONS) or {}), **(options or {})}
        cluster.kv_put(KV_OPTIONS, self.options)
        self.metrics = ControllerMetrics()
        self.metrics_port = self._serve_metrics() if run else 0
        self.host = cluster.node_ip()
        saved_plan = cluster.kv_get(KV_PLAN)
        self.plan: Plan | None = None if saved_plan is None else Plan.model_validate(saved_plan)
        self._saved_plan = self.plan  # the plan in GCS, as far as this controller wrote or read it
        self.records: dict[str, ReplicaRecord] = {}
        self.routers: dict[str, Any] = {}
        self.router_endpoints: list[dict[str, str]] = []
        self.events: list[str] = []
        self.table: dict[str, list[dict]] = {}
        self.nodes: frozenset[str] = frozenset()
        """The fleet nodes live Ray nodes declared at the last observation."""
        self.unschedulable: dict[str, Unschedulable] = {}
        """Replicas waiting for resources past the pending deadline, with why and what would fix it."""
        self.splits: dict[str, dict[str, float]] = {}
        """Rollout splits of the routing table ({deployment: {"canaryPercent": W}})."""
        self.loops = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.RLock()
        self._sd_lock = threading.Lock()  # one writer of the file_sd list at a time
        self._runs_lock = threading.Lock()  # one writer of the rollouts (memory and GCS) at a time; before _lock
        self._sd_written: str | None = None
        self.runs: dict[str, rollouts.Run] = {
            name: rollouts.Run.from_json(data) for name, data in (cluster.kv_get(KV_ROLLOUTS) or {}).items()}
        """The rollouts, as saved in GCS; replaced whole (a loop or an API call), read without the lock."""
        self.adopted = self._adopt()
        self._counters_saved: dict[str, dict[str, Any]] = self._load_counters()
        self.specs: list[ReplicaSpec] = self._desired(self.plan, cluster.known_nodes())
        """The plan's replicas, as of the last loop or apply."""
        self._thread: threading.Thread | None = None
        if run:
            self._thread = threading.Thread(target=self._loop, name="moxin-reconcile", daemon=True)
            self._thread.start()

    # -- API (called by the CLI and the routers) -----------------------------------------------------------------
    def apply(self, plan: Plan, options: dict[str, Any] | None = None) -> dict[str, Any]:
        self.cluster.kv_put(KV_PLAN, plan.to_json())  # desired state first: a controller restarted from here on
        with self._lock:                               # acts on this plan
            merged = {**self.options, **(options or {})}
        if options:
            self.cluster.kv_put(KV_OPTIONS, merged)
        specs = self._desired(plan, self.cluster.known_nodes())
        with self._lock:
            self.options = merged
            self.plan = self._saved_plan = plan
            self.specs = specs
            self._event(f"applied plan {plan.name!r}: {len(specs)} replica(s)")
        self._wake.set()
        return {"replicas": [s.id for s in specs]}

    def status(self) -> dict[str, Any]:
        with self._lock:
            desired = {s.id: s for s in self.specs}
            running = {rid for rid, r in self.records.items() if r.running}
            rows = [self._row(rid, desired.get(rid)) for rid in sorted(set(desired) | running)]
            return {"plan": None if self.plan is None else self.plan.name, "replicas": rows,
                    "routers": self.router_addresses(), "metricsUrl": self.metrics_url(), "loops": self.loops,
                    "adopted": self.adopted, "events": self.events[-20:], "prometheusSd": self.options["prometheusSd"],
                    "routerMetricsUrls": sorted(f"http://{r['metrics']}/metrics" for r in self.router_endpoints),
                    "pid": os.getpid(), "routerPids": sorted(r["pid"] for r in self.router_endpoints if "pid" in r)}

    def _row(self, rid: str, spec: ReplicaSpec | None) -> dict[str, Any]:
        rec = self.records.get(rid) or ReplicaRecord(rid)
        d = rec.description
        return {"id": rid, "state": rec.state.value if rec.running else "missing", "desired": spec is not None,
                "draining": rec.draining_since is not None,
                **({"labels": spec.labels, "nodes": spec.nodes, "devices": spec.devices, "weight": spec.weight}
                   if spec else {}),
                "url": d.get("url"), "enginePid": d.get("enginePid"), "restarts": rec.restarts,
                "replacements": rec.replacements,
                "unschedulable": (u := self.unschedulable.get(rid)) and u.to_json(),
                "lastError": d.get("lastError", "") or _waiting_for(rec, spec, u), "log": d.get("log"),
                "host": d.get("host"), "nodeId": d.get("nodeId"), "stages": d.get("stages") or [],
                "actorPid": d.get("actorPid"), "engineStartSeconds": _engine_start_s(d)}

    # -- rollouts (``moxin rollout ...``) ---------------------------------------------------------------------------
    def rollout_apply(self, name: str, spec: dict[str, Any], canary: dict[str, Any],
                      fits_beside: list[int] | None = None, readiness_budget_s: float = 600.0,
                      prompts: list[str] | None = None) -> dict[str, Any]:
        """Start a rollout of ``spec`` (a RolloutSpec document) whose new side is ``canary`` (the deployment's
        assignment planned on the target, at full size; ``fits_beside`` from ``rollout.capacity.check``, None:
        surge; ``prompts``: the quality gate's golden prompts, None: built-in). Saved in GCS before the loop acts on it. A rollout of the same name still running is replaced only
        when its spec is the same (then nothing changes)."""
        rs = RolloutSpec.model_validate(spec)
        new_side = Assignment.model_validate(canary)
        with self._runs_lock:
            return self._rollout_apply(name, rs, new_side, fits_beside, readiness_budget_s, tuple(prompts or ()))

    def _rollout_apply(self, name: str, rs: RolloutSpec, new_side: Assignment, fits_beside: list[int] | None,
                       readiness_budget_s: float, prompts: tuple[str, ...]) -> dict[str, Any]:
        with self._lock:
            plan, runs = self.plan, dict(self.runs)
        if plan is None:
            raise ValueError("no plan is applied: `moxin up` or `moxin apply` first")
        old = runs.get(name)
        if old is not None and old.active:
            if machine.spec_digest(rs) == old.state.digest:
                return self.rollout_status(name)
            raise ValueError(f"rollout {name!r} is running ({old.state.phase.value}); abort it first")
        for other in runs.values():
            if other.active and other.spec.deployment == rs.deployment and other.name != name:
                raise ValueError(f"deployment {rs.deployment!r} already has rollout {other.name!r} running")
        stable = sides.stable_replicas(plan, rs)
        if stable == 0:
            raise ValueError(f"deployment {rs.deployment!r} has no replica matching 'from' in the plan")
        sides.canary_name(plan, rs, new_side)  # ValueError: the new side would share a kept assignment's name
        config = machine.config_for(rs, stable, new_side.replicas, readiness_budget_s, fits_beside)
        run = rollouts.Run(name, rs, new_side, machine.start(name, rs, config),
                           notes=(f"capacity: {config.mode}",), prompts=prompts)
        self._save_runs({**runs, name: run})
        self._event(f"rollout {name!r} applied: {rs.deployment} to {new_side.variant}/{new_side.pool} "
                    f"({config.mode})")
        self._wake.set()
        return self.rollout_status(name)

    def rollout_command(self, name: str, verb: str) -> dict[str, Any]:
        """promote | promoteFull | pause | resume | abort: queued with a new id, applied once by the next loop."""
        if verb not in ("promote", "promoteFull", "pause", "resume", "abort"):
            raise ValueError(f"unknown command {verb!r}")
        with self._runs_lock:
            runs = dict(self.runs)
            if name not in runs:
                raise KeyError(f"no rollout {name!r}; rollouts: {sorted(runs)}")
            runs[name] = runs[name].with_command(verb)
            self._save_runs(runs)
        self._wake.set()
        return self.rollout_status(name)

    def rollout_delete(self, name: str, force: bool = False) -> dict[str, Any]:
        """Forget a finished rollout: its status and its metrics go (so MoxinRolloutFailed stops once an operator
        has read it). One not finished (running, paused, or Failed with both sides up) is refused unless ``force``;
        then it ends as an abort would: the plan is still the one without its new side, so that side is removed and
        all traffic goes back to the old side. Returns the rollouts left."""
        with self._runs_lock:
            runs = dict(self.runs)
            run = runs.pop(name, None)
            if run is None:
                raise KeyError(f"no rollout {name!r}; rollouts: {sorted(self.runs)}")
            if run.active and not force:
                raise ValueError(f"rollout {name!r} is not finished ({run.state.phase.value}): `moxin rollout abort "
                                 f"{name}` first, or delete it with --force (which aborts it)")
            self._save_runs(runs)  # in GCS first: a restarted controller does not bring it back
        self._event(f"rollout {name!r} deleted" + (f" while {run.state.phase.value}: aborted, its new side is "
                                                   "removed and all traffic is on the old side" if run.active else ""))
        self._wake.set()
        return self.rollout_status()

    def rollout_status(self, name: str | None = None) -> dict[str, Any]:
        """Each rollout (or the named one): phase, step, weight, replicas, gates, decision log."""
        runs = self.runs
        if name is not None and name not in runs:
            raise KeyError(f"no rollout {name!r}; rollouts: {sorted(runs)}")
        return {n: {"name": n, "deployment": r.spec.deployment, "to": {"variant": r.canary.variant,
                                                                        "pool": r.canary.pool},
                    "finished": r.finished, **machine.status(r.spec, r.state)}
                for n, r in sorted(runs.items()) if name is None or n == name}

    def _save_runs(self, runs: dict[str, rollouts.Run]) -> None:
        """GCS first, then memory: what the loop acts on is saved (the caller holds ``_runs_lock``)."""
        self.cluster.kv_put(KV_ROLLOUTS, {n: r.to_json() for n, r in runs.items()})
        self.runs = runs

    def routing_table(self) -> dict[str, list[dict]]:
        return self.table  # replaced whole each loop: no lock, so routers never wait on a slow loop

    def routing_document(self) -> dict[str, Any]:
        """What the routers take: {"deployments": table, "splits": {deployment: {"canaryPercent": W}}}."""
        table, splits = self.table, self.splits  # each replaced whole: no lock
        return {"deployments": table, "splits": {d: s for d, s in splits.items() if d in table}}

    def logs(self, rid: str, tail: int = 200) -> str:
        with self._lock:
            rec = self.records.get(rid)
            handle = rec.handle if rec else None
            known = sorted(r for r, x in self.records.items() if x.running)
        if handle is None:
            raise KeyError(f"no replica {rid!r}; replicas: {known}")
        return self.cluster.logs(handle, tail, LOGS_TIMEOUT_S)

    def set_prometheus_sd(self, path: str | None) -> None:
        with self._lock:
            self.options = options = {**self.options, "prometheusSd": path}
        with self._sd_lock:
            self._sd_written = None
        self.cluster.kv_put(KV_OPTIONS, options)
        self._write_sd()

    def set_prometheus_url(self, url: str | None) -> None:
        """Where the rollout gates query Prometheus (``moxin up`` starts one); None: from the routers' /metrics."""
        with self._lock:
            options = {**self.options, "prometheusUrl": url}
        self.cluster.kv_put(KV_OPTIONS, options)
        with self._lock:
            self.options = options

    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def router_addresses(self) -> list[str]:
        bound = self.options["routerHost"]
        host = self.host if bound in ("0.0.0.0", "::") else bound
        return [f"http://{host}:{self.options['routerPort']}"] if self.routers else []

    def shutdown(self) -> list[str]:
        """Drain the routers (their ports close, their requests in flight finish, for up to their drain_seconds),
        then stop every replica (SIGTERM, grace, SIGKILL), kill the routers, and forget the plan. The caller kills
        the controller afterwards."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(SHUTDOWN_WAIT_LOOP_S)  # no loop acts while replicas are stopped here
        self.cluster.kv_del(KV_PLAN)
        self.cluster.kv_del(KV_COUNTERS)  # the next plan's replicas start from 0
        self.cluster.kv_del(KV_ROLLOUTS)
        self.runs = {}
        with self._lock:
            handles = {rid: r.handle for rid, r in self.records.items() if r.running}
            routers, self.routers = list(self.routers.values()), {}
            drain_s = RouterLimits.model_validate(self.options.get("routerLimits") or {}).drain_seconds
        self.cluster.drain_routers(routers, drain_s + ROUTER_DRAIN_MARGIN_S)
        refs = {rid: self.cluster.stop_replica(h) for rid, h in handles.items()}
        self.cluster.poll_stopped(refs, STOP_TIMEOUT_S)
        for rid in handles:
            self._forget(rid)
        with self._lock:
            for rec in self.records.values():
                rec.carried_restarts = rec.replacements = rec.failures = 0
                rec.last_failure = 0.0
            self._counters_saved = {}
        for handle in routers:
            self.cluster.kill(handle)
        return sorted(refs)

    def ping(self) -> int:
        return os.getpid()

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.reconcile_once()
            self._wake.wait(LOOP_S)
            self._wake.clear()

    def reconcile_once(self, now: float | None = None) -> list[Action]:
        """One loop: routers, then observe -> decide -> save desired -> act, then record. Returns the actions
        decided. ``now`` defaults to the clock."""
        t0 = time.perf_counter()
        now = self.clock() if now is None else now
        actions: list[Action] = []
        with self._step("ensure_routers"):
            self._ensure_routers()
        with self._step("rollouts"):
            self._rollouts_once(now)
        with self._step("reconcile"):
            view = self._view()
            snapshot = self._observe(view)                                     # 1. observe (reads only)
            desired = self._desired(view.plan, snapshot.nodes)
            observed, failures = self._remember(snapshot, view, desired, now)
            actions = decide(desired, observed, failures, now, float(view.options["drainSeconds"]))  # 2. decide
            self._save_desired(view.plan)                                      # 3. save desired
            self._act_all(actions, view, now)                                  # 4. act
        with self._step("save_counters"):
            self._save_counters()                                              # 5. record
        with self._step("record"):
            self._record()
        self.metrics.reconcile.observe(time.perf_counter() - t0)
        self.loops += 1
        return actions

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception:  # a failing step is logged and retried next loop; it never kills the loop
            self.metrics.reconcile_errors.labels(name).inc()
            self._event(f"{name} failed: {traceback.format_exc(limit=3)}")

    def _view(self) -> _View:
        with self._lock:
            return _View(self.plan, dict(self.options),
                         handles={rid: r.handle for rid, r in self.records.items() if r.running and not r.stopping},
                         stops={rid: r.stop_ref for rid, r in self.records.items() if r.stopping and not r.stop_done})

    def _observe(self, view: _View) -> Snapshot:
        """Read the cluster: nodes, finished stops, descriptions (waits up to OBSERVE_TIMEOUT_S). Changes nothing."""
        nodes = frozenset(self.cluster.known_nodes())
        stopped = frozenset(self.cluster.poll_stopped(view.stops))
        replies = self.cluster.describe_all(view.handles, OBSERVE_TIMEOUT_S)
        return Snapshot(nodes, replies, stopped)

    def _remember(self, snapshot: Snapshot, view: _View, desired: list[ReplicaSpec], now: float,
                  ) -> tuple[dict[str, Observed], dict[str, tuple[int, float]]]:
        """Fold a snapshot into the records (under the lock, no cluster call); what ``decide`` reads."""
        with self._lock:
            self.nodes = snapshot.nodes
            for rid, reply in snapshot.replies.items():
                rec = self.records.get(rid)
                if rec is None or rec.handle is not view.handles[rid]:
                    continue  # not the actor that was described
                if isinstance(reply, State):
                    rec.state = reply
                else:
                    rec.description, rec.state = reply, State(reply["state"])
                if rec.state == State.READY:
                    rec.failures, rec.last_failure = 0, 0.0
                if rec.state != State.PENDING:
                    rec.pending_since = None
                elif rec.pending_since is None:  # adopted while waiting: from now on
                    rec.pending_since = now
            for rid in snapshot.stopped:
                if rid in self.records:
                    self.records[rid].stop_done = True
            if self.plan is view.plan:  # an apply meanwhile has set its own
                self.specs = desired
            observed = {rid: r.observed() for rid, r in self.records.items() if r.running}
            failures = {rid: (r.failures, r.last_failure) for rid, r in self.records.items() if r.failures}
        return observed, failures

    def _desired(self, plan: Plan | None, nodes: set[str] | frozenset[str]) -> list[ReplicaSpec]:
        """The plan's replicas, each active rollout's sides at the sizes its state says."""
        if plan is None:
            return []
        for run in self.runs.values():
            if not run.active:
                continue
            try:
                plan = sides.sides_plan(plan, run.spec, run.canary, machine.desired(run.state))
            except ValueError as exc:  # the plan changed under the rollout: its sides wait for a plan that fits
                self._event(f"rollout {run.name!r}: sides not planned: {exc}")
        return replica_specs(plan, known_nodes=set(nodes))

    # -- rollouts: due -> measure -> step -> save -> act (the sides follow the state through ``_desired``) ---------
    def _rollouts_once(self, now: float) -> None:
        """due -> measure (no lock held) -> step -> save to GCS; the reconcile that follows acts on the saved
        state (``_desired``, the split in ``_record``)."""
        measured: dict[str, tuple[machine.State, dict[int, Any], int]] = {}
        if any(r.active for r in self.runs.values()) and not self.options.get("prometheusUrl"):
            try:
                self._read_pages(now)
            except (OSError, ValueError) as exc:
                self._event(f"rollouts: the routers' /metrics not read: {exc}")
        for name, run in self.runs.items():
            if run.active:
                due = machine.due(run.spec, run.state, now)
                readings = self._measure(run, due, now) if due else {}
                measured[name] = (run.state, readings, self._canary_ready(run))
        if not measured:
            return
        with self._runs_lock:  # one writer of the rollouts; an apply or a command meanwhile is kept
            runs = dict(self.runs)
            for name, (seen, readings, ready) in measured.items():
                run = runs.get(name)
                if run is None or not run.active:
                    continue
                readings = readings if run.state == seen else {}  # measured for a state that has moved: next loop
                obs = machine.Observation(now, ready, readings, run.commands)
                state, actions = machine.step(run.spec, run.state, obs)
                done = state.phase in (machine.Phase.SUCCEEDED, machine.Phase.ROLLED_BACK)
                runs[name] = replace(run, state=state, finished=done,
                                     commands=tuple(c for c in run.commands if c.id > state.last_command))
                for action in actions:
                    if isinstance(action, machine.Record):
                        self._event(f"rollout {name!r}: {action.message}")
            promoted = [r for n, r in runs.items() if r.finished and not self.runs[n].finished
                        and r.state.phase == machine.Phase.SUCCEEDED]
            if promoted:
                with self._lock:
                    plan = self.plan
                for run in promoted:
                    plan = None if plan is None else sides.promoted_plan(plan, run.spec, run.canary)
                if plan is not None:  # the deployment's only side from now on: saved before the rollout lets go
                    self.cluster.kv_put(KV_PLAN, plan.to_json())
                    with self._lock:
                        self.plan = self._saved_plan = plan
            if runs != self.runs:
                self._save_runs(runs)  # in GCS before this loop's reconcile acts on it

    def _canary_ready(self, run: rollouts.Run) -> int:
        """New-side replicas the router would route: ready, running the launch the plan gives them."""
        with self._lock:
            specs, routable = list(self.specs), self._routing_table(list(self.specs))
        names = {row["name"] for rows in routable.values() for row in rows}
        return sum(1 for spec in specs if spec.id in names and rollouts.is_canary(spec.labels, run))

    def _measure(self, run: rollouts.Run, due: list[machine.Due], now: float) -> dict[int, Any]:
        """The due gates' readings: from Prometheus when the controller has its URL, else from two readings of the
        routers' /metrics the window apart; the quality gate from both sides' replicas. A gate that cannot be read
        now is left out (it is measured at a later loop)."""
        with self._lock:
            plan, options, specs = self.plan, dict(self.options), list(self.specs)
        stable_side = None
        if plan is not None and (olds := sides.stable_assignments(plan, run.spec)):
            stable_side = gates.Side(run.spec.deployment, olds[0].variant, olds[0].pool)
        canary_side = gates.Side(run.spec.deployment, run.canary.variant, run.canary.pool)
        out: dict[int, Any] = {}
        for d in due:
            try:
                if d.gate.metric == "quality":
                    report = self._quality(run, specs)
                    if report is not None:
                        out[d.index] = report
                elif url := options.get("prometheusUrl"):
                    out[d.index] = measure.from_prometheus(lambda q, u=url: self.probe.query(u, q), d.gate.metric,
                                                           canary_side, stable_side, d.window_s)
                elif (before := self._page_at(now - d.window_s)) is not None and self._pages:
                    out[d.index] = measure.from_snapshots(before, self._pages[-1], d.gate.metric, canary_side,
                                                          stable_side, lambda s: self._ready_of(s, specs))
            except (OSError, ValueError, MoxinError) as exc:  # ProbeError: a side did not answer the prompts
                self._event(f"rollout {run.name!r}: gate {d.gate.metric} not measured: {exc}")
        return out

    def _read_pages(self, now: float) -> None:
        """One reading of the routers' /metrics (kept as long as the longest gate window needs)."""
        urls = sorted(f"http://{r['metrics']}/metrics" for r in self.router_endpoints)
        if not urls:
            return
        snap = measure.snapshot(self.probe.metrics_pages(urls), now)
        keep_s = max([g.interval_seconds for r in self.runs.values() for a in r.spec._analyses() for g in a[1].gates]
                     or [60.0]) + 2 * LOOP_S + OBSERVE_TIMEOUT_S
        self._pages = [p for p in self._pages if p.time_s >= now - keep_s] + [snap]

    def _page_at(self, since: float) -> Any:
        """The latest reading taken at or before ``since`` (the window's start); None when none is that old."""
        older = [p for p in self._pages if p.time_s <= since + 1e-6]
        return older[-1] if older else None

    def _ready_of(self, side: gates.Side, specs: list[ReplicaSpec]) -> int:
        with self._lock:
            table = self._routing_table(specs)
        names = {row["name"] for rows in table.values() for row in rows}
        return sum(1 for s in specs if s.id in names and s.labels.get("variant") == side.variant
                   and s.labels.get("pool") == side.pool and s.deployment == side.deployment)

    def _quality(self, run: rollouts.Run, specs: list[ReplicaSpec]) -> Any:
        """The golden prompts, greedy, on one ready replica of each side, compared; None without both replicas."""
        q = run.spec.quality
        if q is None:
            return None
        with self._lock:
            table = self._routing_table(specs)
        rows = table.get(run.spec.deployment, [])
        canary = next((r for r in rows if r.get("side") == "canary"), None)
        stable = next((r for r in rows if r.get("side", "stable") == "stable"), None)
        if canary is None or stable is None:
            return None
        prompts = list(run.prompts or quality.BUILTIN_PROMPTS)
        olds = self.probe.answer_prompts(stable["url"], stable["requestModel"], prompts, q)
        news = self.probe.answer_prompts(canary["url"], canary["requestModel"], prompts, q)
        return quality.compare(prompts, olds, news, q)

    def _save_desired(self, plan: Plan | None) -> None:
        """No action on a plan that is not in GCS: a controller restarted meanwhile must act on it too. ``apply``
        writes its plan before accepting it, so this writes only a plan no one has saved."""
        if plan is not None and plan is not self._saved_plan:
            self.cluster.kv_put(KV_PLAN, plan.to_json())
            self._saved_plan = plan

    # -- the executor: the only code that turns actions into cluster calls ---------------------------------------
    def _act_all(self, actions: list[Action], view: _View, now: float) -> None:
        for action in actions:
            if self._stopped.is_set() or self.plan is not view.plan:
                return  # shutting down, or a new plan arrived: decide again on it first
            with self._step("act"):
                self._act(action, view, now)

    def _act(self, action: Action, view: _View, now: float) -> None:
        self.metrics.actions.labels(type(action).__name__.lower()).inc()
        if isinstance(action, Start):
            spec = action.spec
            handle = self.cluster.start_replica(spec, str(view.options["logDir"]), float(view.options["graceSeconds"]))
            with self._lock:
                rec = self.records.setdefault(spec.id, ReplicaRecord(spec.id))
                rec.handle, rec.spec_hash, rec.state, rec.description = handle, spec.spec_hash, State.PENDING, {}
                rec.pending_since = now
            self._event(f"start {spec.id} ({action.reason})")
        elif isinstance(action, Drain):
            with self._lock:
                self.records[action.id].draining_since = now
            self._event(f"drain {action.id} ({action.reason})")
        elif isinstance(action, Undrain):
            with self._lock:
                self.records[action.id].draining_since = None
            self._event(f"undrain {action.id} ({action.reason})")
        elif isinstance(action, Stop):
            ref = self.cluster.stop_replica(self.records[action.id].handle)
            with self._lock:
                rec = self.records[action.id]
                if action.failed:
                    rec.failures, rec.last_failure = rec.failures + 1, now
                    rec.replacements += 1
                rec.stop_ref, rec.stop_since, rec.stop_done, rec.state = ref, now, False, State.STOPPING
            self._event(f"stop {action.id} ({action.reason})")
        elif isinstance(action, Forget):
            self._forget(action.id)
            self._event(f"forget {action.id} ({action.reason})")

    def _forget(self, rid: str) -> None:
        self.cluster.forget(rid, self.records[rid].handle)
        with self._lock:
            rec = self.records[rid]
            rec.carried_restarts += rec.description.get("restarts", 0)  # the engine restarts it counted
            rec.handle, rec.spec_hash, rec.description, rec.state = None, "", {}, State.PENDING
            rec.draining_since = rec.pending_since = None
            rec.stop_ref, rec.stop_since, rec.stop_done = None, None, False

    def _adopt(self) -> list[str]:
        """Find the replicas and routers a previous controller started (named, detached actors); take them over."""
        for rid, handle in self.cluster.list_replicas().items():
            self.records[rid] = ReplicaRecord(rid, handle)
        self.routers = self.cluster.list_routers()
        adopted = sorted(self.records)
        if adopted:
            self._event(f"adopted {len(adopted)} running replica(s): {', '.join(adopted)}")
        return adopted

    def _load_counters(self) -> dict[str, dict[str, Any]]:
        """The counters and backoffs a previous controller saved, into the records (adopted or not: an id may be
        between two actors)."""
        saved = self.cluster.kv_get(KV_COUNTERS) or {}
        loaded: dict[str, dict[str, Any]] = {}
        for rid, c in saved.items() if isinstance(saved, dict) else ():
            if not isinstance(c, dict):
                continue
            rec = self.records.setdefault(rid, ReplicaRecord(rid))
            rec.carried_restarts = _count(c.get("engineRestarts"))
            rec.replacements = _count(c.get("replacements"))
            rec.failures = _count(c.get("failures"))
            last = c.get("lastFailure")
            rec.last_failure = float(last) if rec.failures and isinstance(last, int | float) and \
                not isinstance(last, bool) and math.isfinite(last) else 0.0
            loaded[rid] = rec.counters()
        return loaded

    def _save_counters(self) -> None:
        """Counters to GCS when they changed since the last save (read under the lock, written outside it)."""
        with self._lock:
            counters = {rid: c for rid, r in self.records.items() if any((c := r.counters()).values())}
        if counters != self._counters_saved:
            self.cluster.kv_put(KV_COUNTERS, counters)
            self._counters_saved = counters

    def _ensure_routers(self) -> None:
        with self._lock:
            options, routers = self.options, dict(self.routers)
        for i in range(int(options["routers"])):
            name = f"{ROUTER_PREFIX}{i}"
            if name not in routers:
                routers[name] = self.cluster.start_router(name, options["routerHost"], int(options["routerPort"]),
                                                          options.get("apiKeys"), options.get("routerLimits") or {})
                with self._lock:
                    self.routers = dict(routers)
                self._event(f"started router {name} on port {options['routerPort']}")
        # Idempotent: serves once, and again after Ray restarted a router actor. A bind error surfaces here.
        endpoints = self.cluster.serve_routers(list(routers.values()), ROUTER_START_TIMEOUT_S)
        with self._lock:
            self.router_endpoints = endpoints

    # -- record --------------------------------------------------------------------------------------------------
    def _record(self) -> None:
        with self._lock:
            plan, specs = self.plan, list(self.specs)
            self.table = table = self._routing_table(specs)
            self.splits = rollouts.split(list(self.runs.values()))
            restarts = {s.id: (self.records.get(s.id) or ReplicaRecord(s.id)).restarts for s in specs}
            before, self.unschedulable = self.unschedulable, self._unschedulable(plan, specs)
            stuck = self.unschedulable
        for rid in sorted(set(stuck) - set(before)):
            self._event(f"{rid} is unschedulable: {stuck[rid].reason}. To fix: {stuck[rid].fix}")
        m = self.metrics
        for g in (m.pool_devices, m.pool_allocated, m.desired, m.ready, m.pending, m.unschedulable, m.restarts,
                  m.capacity, m.output_tokens, m.batch, m.cost, m.slo_target):
            g.clear()
        if plan is None:
            return
        used = plan.status.devices_used if plan.status else {}
        for p in plan.spec.pools:
            labels = {"pool": p.name, "hardware": p.hardware, "emulated": str(p.emulated).lower()}
            m.pool_devices.labels(**labels).set(p.nodes * p.devices_per_node)
            m.pool_allocated.labels(**labels).set(used.get(p.name, 0))
        routed = {r["name"] for rows in table.values() for r in rows}
        for spec in specs:
            m.desired.labels(**spec.labels).inc()
            m.capacity.labels(**spec.labels).inc(spec.weight)
            m.cost.labels(**spec.labels).inc(spec.cost_usd_per_hour or 0.0)
            m.ready.labels(**spec.labels).inc(1 if spec.id in routed else 0)
            m.pending.labels(**spec.labels).inc(0 if spec.id in routed else 1)
            m.unschedulable.labels(**spec.labels).inc(1 if spec.id in stuck else 0)
            m.output_tokens.labels(**spec.labels).inc(spec.output_tokens_per_second)
            m.batch.labels(**spec.labels).inc(spec.batch)
            m.restarts.labels(**spec.labels).inc(restarts[spec.id])
        for deployment, slo in plan.spec.slo.items():
            for objective, target in (("ttft_p95", slo.ttft_seconds), ("tpot_p95", slo.tpot_seconds)):
                if target is not None:
                    m.slo_target.labels(deployment=deployment, objective=objective).set(target)
        self._record_rollouts()
        self._write_sd()

    def _unschedulable(self, plan: Plan | None, specs: list[ReplicaSpec]) -> dict[str, Unschedulable]:
        """The plan's replicas waiting for resources past the pending deadline (under the lock)."""
        if plan is None:
            return {}
        pool_nodes = {p.name: list(p.node_names) for p in plan.spec.pools}
        deadline = float(self.options.get("pendingDeadlineSeconds") or PENDING_DEADLINE_S)
        out = {}
        for spec in specs:
            rec = self.records.get(spec.id)
            if rec is not None and rec.running and not rec.stopping and rec.state == State.PENDING:
                u = unschedulable(spec, rec.pending_since, self.nodes, pool_nodes, self.clock(), deadline)
                if u is not None:
                    out[spec.id] = u
        return out

    def _record_rollouts(self) -> None:
        """Each rollout's phase (one-hot), step, weight, wait against its deadline, and its gates' last readings."""
        m, now = self.metrics, self.clock()
        for g in (m.rollout_phase, m.rollout_step, m.rollout_weight, m.rollout_gate_value, m.rollout_gate_passing,
                  m.rollout_waiting, m.rollout_deadline):
            g.clear()
        for name, run in self.runs.items():
            ids = {"rollout": name, "deployment": run.spec.deployment}
            s = run.state
            for phase in machine.Phase:
                m.rollout_phase.labels(**ids, phase=phase.value).set(1 if s.phase == phase else 0)
            m.rollout_step.labels(**ids).set(s.step)
            m.rollout_weight.labels(**ids).set(s.weight)
            m.rollout_deadline.labels(**ids).set(s.config.deadline_s)
            waiting = now - s.waiting_since if s.waiting_since is not None and not s.phase.terminal else 0.0
            m.rollout_waiting.labels(**ids).set(max(0.0, waiting))
            for gate in machine.status(run.spec, s)["gates"]:
                if gate["outcome"] is None:
                    continue
                for side in ("canary", "stable", "limit"):
                    if gate[side] is not None:
                        m.rollout_gate_value.labels(**ids, gate=gate["metric"], side=side).set(gate[side])
                m.rollout_gate_passing.labels(**ids, gate=gate["metric"]).set(
                    {"pass": 1, "fail": 0}.get(gate["outcome"], -1))

    def _routing_table(self, desired: list[ReplicaSpec]) -> dict[str, list[dict]]:
        """Ready replicas of the plan, not draining nor stopping, running the plan's launch (under the lock)."""
        table: dict[str, list[dict]] = {spec.deployment: [] for spec in desired}
        for spec in desired:
            rec = self.records.get(spec.id)
            if rec is None or not rec.running or rec.state != State.READY or rec.draining_since is not None \
                    or rec.stopping or rec.description.get("specHash") != spec.spec_hash:
                continue
            row = {"name": spec.id, "url": rec.description["url"], "requestModel": spec.request_model,
                   "weight": spec.weight, "labels": spec.labels}
            if any(run.active and rollouts.is_canary(spec.labels, run) for run in self.runs.values()):
                row["side"] = "canary"
            table[spec.deployment].append(row)
        return table

    def _sd_targets(self) -> list[dict[str, Any]]:
        """Prometheus targets: this controller, the routers, and engines that serve /metrics (under the lock)."""
        targets = [{"targets": [f"{self.host}:{self.metrics_port}"], "labels": {"job": SCRAPE_JOBS["controller"]}}]
        if self.router_endpoints:
            targets.append({"targets": sorted(r["metrics"] for r in self.router_endpoints),
                            "labels": {"job": SCRAPE_JOBS["router"]}})
        for spec in self.specs:
            rec = self.records.get(spec.id)
            url = rec.description.get("url") if rec and rec.running else None
            path = spec.launch.metrics_path
            if path and url and rec.state == State.READY:
                targets.append({"targets": [url.split("://", 1)[1]],
                                "labels": {"job": SCRAPE_JOBS["engine"], "replica": spec.id, "__metrics_path__": path,
                                           **spec.labels}})
        return targets

    def _write_sd(self) -> None:
        with self._lock:
            path = self.options.get("prometheusSd")
            targets = self._sd_targets() if path else []
        if not path:
            return
        text = json.dumps(targets, indent=1, sort_keys=True) + "\n"
        with self._sd_lock:
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
        with self._lock:
            self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
            del self.events[:-200]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _engine_start_s(description: dict[str, Any]) -> float | None:
    """Seconds its engine now serving took from start to ready (its last start, restarts included)."""
    started, ready = description.get("engineStartedAt"), description.get("readyAt")
    return None if started is None or ready is None else round(ready - started, 1)


def _waiting_for(rec: ReplicaRecord, spec: ReplicaSpec | None, stuck: Unschedulable | None = None) -> str:
    if spec is None or rec.state != State.PENDING or not rec.running:
        return ""
    if stuck is not None:
        return f"unschedulable for {stuck.waiting_s:.0f} s: {stuck.reason}. To fix: {stuck.fix}"
    return (f"waiting for Ray resources: {spec.strategy} {spec.bundles} (a node must declare them: "
            "moxin node-resources)")
