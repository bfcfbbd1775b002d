"""Run a Rollout on Kubernetes: the rollout machine (``rollout/machine.py``) driven against a cluster.

Where it sits: `moxin rollout` on Kubernetes loops ``run_once``; ``runtime/kubernetes.py`` sends the objects. Each
pass has the reconcile loop's shape:

1. observe: the saved State (a ConfigMap ``<release>-rollout-<name>``, or a fresh start), the operator's commands
   (the same ConfigMap, written by ``send_command``), the new side's ready replicas (its workload's status), and
   the readings of the gates that are due (``measure``, passed in: Prometheus queries, the quality probe);
2. decide: ``machine.step`` -> the next State (pure);
3. save the State in the ConfigMap, *before* any effect;
4. act: converge the cluster on ``machine.desired(state)``: both sides' workloads rendered from the chart (the plan
   with the stable side scaled and the new side's assignment added), applied server-side; objects the pass no
   longer renders (a removed side) are pruned. The split is the router's routing table (its ConfigMap, which the
   router reloads without a restart): the new side's routes carry ``"side": "canary"`` and
   ``splits[deployment].canaryPercent`` is the weight.

Acting converges on absolute counts and a weight, never replays actions, so a pass interrupted between saving and
applying is finished by the next one, and applying twice creates nothing twice.

The plan of each pass comes from ``rollout/sides.py`` (pure); the objects from a Renderer passed in
(``render/rollout.py``: the chart, the split, the routers' configuration checksum kept at the running plan's so
that moving the split does not roll them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import InfeasibleError
from orchestrator.rollout import machine
from orchestrator.rollout.capacity import CapacityCheck, check, new_side
from orchestrator.rollout.gates import Reading, Side
from orchestrator.rollout.machine import Command, Due, Observation, State, Verb
from orchestrator.rollout.measure import Query, from_prometheus
from orchestrator.rollout.sides import (
    Renderer,
    canary_name,
    sides_plan,
    split_of,
    stable_assignments,
    stable_replicas,
)
from orchestrator.runtime.kubernetes import FIELD_MANAGER, KubernetesError, _api_errors, apply_objects
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.names import label_value, object_name
from orchestrator.spec.plan import Assignment, Plan
from orchestrator.spec.rollout import Rollout, RolloutSpec

STATE_KEY = "state.json"
SPEC_KEY = "spec.json"
"""The Rollout's spec beside its State (``status`` reads both; the State alone does not name its gates)."""
COMMANDS_KEY = "commands.json"
STATE_MANAGER = f"{FIELD_MANAGER}-rollout"
"""Field manager of the State key: apart from the commands', so neither apply removes the other's key."""
COMMANDS_MANAGER = f"{FIELD_MANAGER}-rollout-commands"
ROLLOUT_LABEL = "moxin.dev/rollout"

Measure = Callable[[Sequence[Due]], Mapping[int, Reading]]
"""Measure the gates that are due (by their index in the current analysis)."""


@dataclass(frozen=True)
class Target:
    """Where and on what a rollout runs: the plan running now, the new side's assignment at full size, and how to
    render a plan (``render.rollout.renderer``, passed in: the runtime does not render)."""

    namespace: str
    release: str
    """The chart's release (``render.kubernetes.RELEASE``); the state ConfigMap is ``<release>-rollout-<name>``."""
    plan: Plan
    canary: Assignment
    """The new side with the replicas it needs for all the traffic (``canary_assignment``)."""
    render: Renderer
    fits_beside: tuple[int, ...] | None = None
    """``capacity.check``'s room for the new side as the old one shrinks (None: surge, the new side fits beside)."""


@dataclass(frozen=True)
class Where:
    """Where a rollout's ConfigMap is, for the commands that need no plan (status, promote, pause, ...)."""

    namespace: str
    release: str


@dataclass(frozen=True)
class Pass:
    """What one ``run_once`` did."""

    state: State
    actions: tuple[machine.Action, ...]
    lines: tuple[str, ...]


# --- the two sides as a plan ------------------------------------------------------------------------------------

def make_target(namespace: str, release: str, plan: Plan, fleet: Fleet, catalog: Catalog, spec: RolloutSpec,
                render: Renderer) -> Target:
    """The Target of a rollout of ``plan``: its new side and the room for it, from ``capacity.check``."""
    fit = check(plan, fleet, catalog, spec)
    if fit.mode == "none":
        raise KubernetesError("the new side does not fit: " + "; ".join(fit.reasons))
    return Target(namespace, release, plan, canary_assignment(plan, fleet, catalog, spec, fit), render,
                  None if fit.mode == "surge" else fit.fits_beside)


def canary_assignment(plan: Plan, fleet: Fleet, catalog: Catalog, spec: RolloutSpec,
                      fit: CapacityCheck | None = None) -> Assignment:
    """The new side at full size: ``capacity.new_side``, the planner's own assignment of the deployment kept to the
    target variant and pool at the capacity check's count of replicas (the one the Ray controller is given). On
    Kubernetes the scheduler places the pods, so the plan's node names for it do not matter."""
    fit = fit or check(plan, fleet, catalog, spec)
    try:
        return new_side(fleet, catalog, spec, fit)
    except InfeasibleError as exc:
        raise KubernetesError(f"{exc}: {'; '.join(exc.reasons)}\n"
                              "  To fix: check `moxin plan` for that target") from None


def objects_for(target: Target, spec: RolloutSpec, state: State) -> list[dict[str, Any]]:
    """Every object of the plan as the rollout state wants it: both sides' workloads, and the router's table with
    the split (none once the rollout has ended)."""
    want = machine.desired(state)
    try:
        plan = sides_plan(target.plan, spec, target.canary, want)
    except ValueError as exc:
        raise KubernetesError(str(exc)) from None
    split = None if state.phase.terminal else split_of(target.plan, spec, target.canary, want.canary_percent)
    return target.render(plan, split)


# --- state in the cluster ---------------------------------------------------------------------------------------

def state_name(release: str, rollout: str) -> str:
    return object_name(f"{release}-rollout-{rollout}")


def _config_map(api: Any) -> Any:
    return api.resources.get(api_version="v1", kind="ConfigMap")


def _not_found(exc: BaseException) -> bool:
    """The API's 404 (a KeyError from a dict-backed stand-in)."""
    return getattr(exc, "status", None) == 404 or isinstance(exc, KeyError)


def read_saved(api: Any, target: Target | Where, rollout: str) -> tuple[State | None, tuple[Command, ...]]:
    """The State saved in the cluster (None before the first pass) and the commands sent so far."""
    try:
        live = _config_map(api).get(name=state_name(target.release, rollout), namespace=target.namespace).to_dict()
    except (*_api_errors(), KeyError) as exc:  # NotFoundError is an API error (404)
        if _not_found(exc):
            return None, ()
        raise KubernetesError(f"reading the rollout state: {exc}") from None
    data = live.get("data") or {}
    try:
        state = State.from_json(json.loads(data[STATE_KEY])) if data.get(STATE_KEY) else None
        commands = tuple(Command(int(c["id"]), c["verb"]) for c in json.loads(data.get(COMMANDS_KEY) or "[]"))
    except (ValueError, KeyError, TypeError) as exc:
        raise KubernetesError(f"ConfigMap {state_name(target.release, rollout)} does not hold a rollout state "
                              f"({exc})\n  To fix: delete it to start the rollout over") from None
    return state, commands


def _apply_keys(api: Any, target: Target | Where, rollout: str, data: dict[str, str], manager: str) -> None:
    name = state_name(target.release, rollout)
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": target.namespace,
                         "labels": {ROLLOUT_LABEL: label_value(rollout),
                                    "app.kubernetes.io/managed-by": "moxin"}},
            "data": data}
    try:
        _config_map(api).server_side_apply(body=body, name=name, namespace=target.namespace, field_manager=manager,
                                           force_conflicts=True)
    except _api_errors() as exc:
        raise KubernetesError(f"saving ConfigMap/{name}: {exc}") from None


def save_state(api: Any, target: Target, rollout: str, state: State, spec: RolloutSpec) -> None:
    """The State and its spec, in one apply (the keys this field manager owns)."""
    _apply_keys(api, target, rollout, {STATE_KEY: json.dumps(state.to_json(), sort_keys=True),
                                       SPEC_KEY: json.dumps(spec.model_dump(mode="json", by_alias=True),
                                                            sort_keys=True)}, STATE_MANAGER)


def read_status(api: Any, where: Target | Where, rollout: str) -> dict[str, Any]:
    """What `moxin rollout status NAME --kubernetes` shows: ``machine.status`` of the saved State and spec."""
    saved, _ = read_saved(api, where, rollout)
    name = state_name(where.release, rollout)
    if saved is None:
        raise KubernetesError(f"no rollout {rollout!r} in namespace {where.namespace} (no ConfigMap {name})\n"
                              "  To fix: check NAME, --namespace and --release")
    try:
        live = _config_map(api).get(name=name, namespace=where.namespace).to_dict()
        spec = RolloutSpec.model_validate(json.loads((live.get("data") or {})[SPEC_KEY]))
    except (*_api_errors(), KeyError, ValueError) as exc:
        raise KubernetesError(f"ConfigMap {name} holds no rollout spec ({exc})") from None
    return {"name": rollout, "deployment": spec.deployment,
            "to": {"variant": spec.to.variant, "pool": spec.to.pool},
            "finished": saved.phase in (machine.Phase.SUCCEEDED, machine.Phase.ROLLED_BACK),
            **machine.status(spec, saved)}


def delete(api: Any, where: Where, rollout: str) -> None:
    """Forget a finished rollout (`moxin rollout delete NAME --kubernetes`): its ConfigMap goes. One that has not
    finished (Failed included: both sides still up) is refused: on Kubernetes only the driver's pass can abort it."""
    status = read_status(api, where, rollout)  # an unknown rollout is refused here
    if not status["finished"]:
        raise KubernetesError(
            f"rollout {rollout!r} is {status['phase']}, not finished: deleting its state would leave both sides and "
            f"the router's split as they are\n  To fix: `moxin rollout abort {rollout} --kubernetes` and let `moxin "
            "rollout apply --kubernetes` run it to RolledBack (or promote it to the end), then delete it")
    name = state_name(where.release, rollout)
    try:
        _config_map(api).delete(name=name, namespace=where.namespace, body={})
    except (*_api_errors(), KeyError) as exc:
        if not _not_found(exc):
            raise KubernetesError(f"deleting ConfigMap/{name}: {exc}") from None


def send_command(api: Any, target: Target | Where, rollout: str, verb: Verb) -> int:
    """Queue an operator's command (`moxin rollout promote|pause|resume|abort` on Kubernetes) for the next pass;
    its id."""
    _, commands = read_saved(api, target, rollout)
    number = max((c.id for c in commands), default=0) + 1
    listed = [{"id": c.id, "verb": c.verb} for c in commands] + [{"id": number, "verb": verb}]
    _apply_keys(api, target, rollout, {COMMANDS_KEY: json.dumps(listed)}, COMMANDS_MANAGER)
    return number


# --- one pass -----------------------------------------------------------------------------------------------------

def canary_ready(api: Any, target: Target, spec: RolloutSpec) -> int:
    """Ready replicas of the new side: its Deployment's available replicas (LeaderWorkerSet: ready groups)."""
    name = canary_name(target.plan, spec, target.canary)
    kind, api_version = ("LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1") \
        if target.canary.nodes_per_replica() > 1 else ("Deployment", "apps/v1")
    try:
        live = api.resources.get(api_version=api_version, kind=kind).get(
            name=name, namespace=target.namespace).to_dict()
    except (*_api_errors(), KeyError) as exc:
        if _not_found(exc):
            return 0
        raise KubernetesError(f"reading {kind}/{name}: {exc}") from None
    status, generation = live.get("status") or {}, (live.get("metadata") or {}).get("generation", 0)
    if kind == "Deployment":
        if status.get("observedGeneration", 0) < generation:
            return 0
        return int(status.get("availableReplicas", 0))
    return int(status.get("readyReplicas", 0))


def _begin(target: Target, spec: RolloutSpec, name: str) -> State:
    stable = stable_replicas(target.plan, spec)
    if not stable:
        raise KubernetesError(f"the plan runs no replica of {spec.deployment!r} matching 'from'\n"
                              "  To fix: check spec.from against `moxin plan`")
    config = machine.config_for(spec, stable, target.canary.replicas,
                                target.canary.launch.readiness_timeout_seconds, target.fits_beside)
    return machine.start(name, spec, config)


def run_once(api: Any, rollout: Rollout, target: Target, *, measure: Measure | None = None,
             now: float | None = None, wait_s: float = 0) -> Pass:
    """One pass of the rollout on the cluster (module docstring): observe, step, save, converge."""
    spec, name = rollout.spec, rollout.name
    now = time.time() if now is None else now
    saved, commands = read_saved(api, target, name)
    state = saved if saved is not None else _begin(target, spec, name)
    if saved is None:
        save_state(api, target, name, state, spec)
    due = machine.due(spec, state, now)
    readings = dict(measure(due)) if due and measure is not None else {}
    observation = Observation(now, canary_ready(api, target, spec), readings, commands, machine.spec_digest(spec))
    state, actions = machine.step(spec, state, observation)
    save_state(api, target, name, state, spec)
    objects = objects_for(target, spec, state)
    lines = [a.message if isinstance(a, machine.Record) else f"{type(a).__name__}: {a.reason}" for a in actions]
    lines += apply_objects(objects, namespace=target.namespace, plan_name=target.plan.name, dry_run=False,
                           wait_s=wait_s, client=api)
    return Pass(state, tuple(actions), tuple(lines))


# --- the loop `moxin rollout apply --kubernetes` runs ---------------------------------------------------------------

def prometheus_measure(query: Query, spec: RolloutSpec, target: Target) -> Measure:
    """Gate readings from Prometheus by the gates' own PromQL (``rollout.measure.from_prometheus``): each side is the
    deployment's pods of that variant and pool. The quality gate is not read here (it needs both sides' engines)."""
    olds = stable_assignments(target.plan, spec)
    stable = Side(spec.deployment, olds[0].variant, olds[0].pool) if olds else None
    canary = Side(spec.deployment, target.canary.variant, target.canary.pool)

    def read(due: Sequence[Due]) -> Mapping[int, Reading]:
        return {d.index: from_prometheus(query, d.gate.metric, canary, stable, d.window_s)
                for d in due if d.gate.metric != "quality"}
    return read


def drive(api: Any, rollout: Rollout, target: Target, *, measure: Measure | None, interval_s: float = 5.0,
          clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None,
          on_pass: Callable[[Pass], None] = lambda _: None) -> Pass:
    """``run_once`` every ``interval_s`` until the rollout ends (Succeeded, RolledBack or Failed); the last pass.
    Interrupted, it is started again and goes on from the ConfigMap. ``clock``/``sleep``: ``time``'s by default."""
    clock, sleep = clock or time.time, sleep or time.sleep
    while True:
        done = run_once(api, rollout, target, measure=measure, now=clock())
        on_pass(done)
        if done.state.phase.terminal:
            return done
        sleep(interval_s)
