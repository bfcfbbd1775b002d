"""Desired replicas vs observed replicas -> actions, as values (STYLE.md: decisions are values).

Pure and idempotent: the controller calls ``decide`` every loop with what it observed; the executor applies the
actions. Nothing here touches Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from orchestrator.runtime.desired import ReplicaSpec

DRAIN_S = 10.0
"""How long a replica leaves the routing tables before it is stopped (routers refresh every second)."""
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
STARTING_MARGIN_S = 120.0
"""How long a replica may stay STARTING or RESTARTING beyond its engine's readiness timeout before it counts as
stuck. The longest a healthy replica's supervisor spends in one of these states past that timeout: starting the
guard (up to 40 s), a last readiness probe (up to 32 s) and stopping an engine that did not get ready (grace + 5 s,
20 s at the default grace); a RESTARTING backoff is at most 30 s plus the guard's start."""
PENDING_DEADLINE_S = 120.0
"""How long a replica may wait for its placement group (Ray resources) before it is reported unschedulable. Ray
places a group in seconds when the resources are there, and a node that restarts rejoins well within this; an
engine's readiness budget does not count here (nothing has started yet)."""
STOP_TIMEOUT_S = 40.0
"""How long a replica's stop (its engine's SIGTERM, grace, SIGKILL) may take before it is forgotten anyway."""


class State(str, Enum):
    PENDING = "pending"          # actor or placement group not created yet / waiting for resources
    STARTING = "starting"        # engine process started, not ready yet
    READY = "ready"
    RESTARTING = "restarting"    # the engine crashed; the replica restarts it (backoff)
    FAILED = "failed"            # the replica gave up (engine cannot start)
    STOPPING = "stopping"
    DEAD = "dead"                # the actor is gone (node lost, actor crashed)


@dataclass(frozen=True)
class Observed:
    id: str
    spec_hash: str
    state: State
    draining_since: float | None = None
    since: float | None = None
    """When the replica entered ``state`` (its node's clock; seconds of skew do not matter here), None if unknown.
    For STOPPING: when the controller asked it to stop."""
    stopped: bool = False
    """STOPPING only: its stop call has returned."""


@dataclass(frozen=True)
class Start:
    spec: ReplicaSpec
    reason: str


@dataclass(frozen=True)
class Drain:
    id: str
    reason: str


@dataclass(frozen=True)
class Stop:
    id: str
    reason: str
    failed: bool = False
    """The replica is stopped because it failed: its restart is delayed by the backoff."""


@dataclass(frozen=True)
class Undrain:
    """A draining replica the plan wants again, unchanged (a rollout's new side with the id of a side just
    removed): it goes back into the routing tables instead of staying out of them, drained, forever."""
    id: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """The replica's stop finished (or ran past ``STOP_TIMEOUT_S``): kill its actor, remove its placement group."""
    id: str
    reason: str


Action = Start | Drain | Undrain | Stop | Forget


def backoff_s(failures: int) -> float:
    """Delay before starting a replica again after ``failures`` consecutive failures: none after the first (a replica
    lost once, with its node or its actor, is replaced at once), then BACKOFF_BASE_S doubling up to BACKOFF_MAX_S
    (a replica that fails again before it is ready is crash-looping)."""
    return 0.0 if failures <= 1 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 2))


def readiness_budget_s(spec: ReplicaSpec) -> float:
    """How long the replica may stay STARTING (or RESTARTING) before the controller treats it as failed."""
    return spec.launch.readiness_timeout_seconds + STARTING_MARGIN_S


def decide(desired: list[ReplicaSpec], observed: dict[str, Observed], failures: dict[str, tuple[int, float]],
           now: float, drain_s: float = DRAIN_S) -> list[Action]:
    """``failures`` maps a replica id to (consecutive failures, time of the last one). A replica forgotten here is
    started again in the same pass (after its Forget) if the plan wants it and its backoff allows."""
    actions: list[Action] = []
    wanted = {s.id: s for s in desired}
    for rid, obs in sorted(observed.items()):
        spec = wanted.get(rid)
        if obs.state == State.STOPPING:                # on its way out; started again once forgotten
            if obs.stopped:
                actions.append(Forget(rid, "stopped"))
            elif obs.since is not None and now - obs.since > STOP_TIMEOUT_S:
                actions.append(Forget(rid, f"stop took over {STOP_TIMEOUT_S:.0f} s"))
            continue
        if obs.state in (State.DEAD, State.FAILED):
            actions.append(Stop(rid, f"replica is {obs.state.value}", failed=spec is not None))
        elif spec is None or spec.spec_hash != obs.spec_hash:
            why = "not in the plan" if spec is None else "its launch changed in the plan"
            if obs.state != State.READY:
                actions.append(Stop(rid, why))         # nothing routed to it: no drain needed
            elif obs.draining_since is None:
                actions.append(Drain(rid, why))
            elif now - obs.draining_since >= drain_s:
                actions.append(Stop(rid, why))
        elif obs.draining_since is not None:
            actions.append(Undrain(rid, "wanted again by the plan, unchanged"))
        elif obs.state in (State.STARTING, State.RESTARTING) and obs.since is not None:
            budget = readiness_budget_s(spec)
            if now - obs.since > budget:  # its supervisor is stuck or gone: it would never be READY nor FAILED
                actions.append(Stop(rid, f"{obs.state.value} for {now - obs.since:.0f} s, past its readiness "
                                         f"budget of {budget:.0f} s", failed=True))
    gone = {a.id for a in actions if isinstance(a, Forget)}
    for rid, spec in wanted.items():
        if rid in observed and rid not in gone:
            continue
        count, last = failures.get(rid, (0, 0.0))
        if now - last >= backoff_s(count):
            actions.append(Start(spec, "missing" if count == 0 else f"restart after {count} failure(s)"))
    return actions


@dataclass(frozen=True)
class Unschedulable:
    """A replica that has waited for its resources past the pending deadline: why, from the plan's placement and the
    nodes in the cluster, and what would let it run."""
    id: str
    waiting_s: float
    reason: str
    fix: str

    def to_json(self) -> dict[str, object]:
        return {"waitingSeconds": round(self.waiting_s), "reason": self.reason, "fix": self.fix}


def unschedulable(spec: ReplicaSpec, pending_since: float | None, nodes: set[str] | frozenset[str],
                  pool_nodes: dict[str, list[str]], now: float,
                  deadline_s: float = PENDING_DEADLINE_S) -> Unschedulable | None:
    """None while the replica has waited ``deadline_s`` or less (or is not waiting). ``nodes``: the fleet nodes live
    Ray nodes declare; ``pool_nodes``: every pool's nodes in the plan. A plan node missing from the cluster leaves
    its replica unpinned (``desired.replica_specs``), so still waiting means no other node holds it either."""
    if pending_since is None or now - pending_since <= deadline_s:
        return None
    pool, hardware = spec.labels.get("pool", "?"), spec.labels.get("hardware", "?")
    planned = list(dict.fromkeys(spec.nodes))
    missing = [n for n in planned if n not in nodes]
    devices = max((len(d) for d in spec.node_devices), default=len(spec.devices))
    replan = (f"or lower replicas.min of deployment {spec.deployment} (or leave pool {pool} out of it) and "
              "re-plan: `moxin plan`, `moxin apply`")
    if not nodes:
        reason = (f"no Ray node declares a fleet node: the plan places it on {', '.join(planned)} (pool {pool}), "
                  f"whose resources {spec.bundles} no node offers")
        fix = (f"start the pool's nodes with its resources: ray start --resources \"$(moxin node-resources -H "
               f"{hardware} --node {planned[0]})\"")
    elif missing:
        others = [n for n in pool_nodes.get(pool, []) if n in nodes and n not in planned]
        where = (f"no other node of pool {pool} ({', '.join(others)}) has {devices} free device(s) for it" if others
                 else f"no other node of pool {pool} is in it")
        reason = f"node {', '.join(missing)} (pool {pool}) is not in the Ray cluster; {where}"
        fix = (f"bring node {missing[0]} back or add a node of pool {pool} (ray start --resources "
               f"\"$(moxin node-resources -H {hardware} --node NAME)\"), {replan}")
    else:
        reason = (f"node {', '.join(planned)} (pool {pool}) is in the Ray cluster, but its free resources do not hold "
                  f"{spec.strategy} {spec.bundles}: something outside the plan holds them")
        fix = f"free them (`ray status` shows what is used), {replan}"
    return Unschedulable(spec.id, now - pending_since, reason, fix)
