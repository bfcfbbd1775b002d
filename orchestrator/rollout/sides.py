"""The two sides of a rollout as one plan: the old side scaled, the new side's assignment added. Pure.

Where it sits: each runtime turns ``machine.desired(state)`` into the plan of that moment with ``sides_plan``: the
Kubernetes driver (``runtime/k8s_rollout.py``) renders it with the split (``Split``) of the router's table, the Ray
controller (``runtime/controller.py``) reconciles its replicas. Resizing keeps an assignment's first replicas, so
replica ids (``<deployment>-<variant>-<pool>-<i>``) stay stable and a restarted controller adopts the same ones.
The old side shrinks in ``capacity.check``'s removal order (``in_removal_order``), the order its ``fits_beside``
counts were computed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.rollout.machine import Desired
from orchestrator.spec.names import object_name
from orchestrator.spec.plan import Assignment, Plan, assignment_names
from orchestrator.spec.rollout import RolloutSpec


@dataclass(frozen=True)
class Split:
    """A deployment's traffic split: ``canary_percent`` of its requests to the routes named in ``canary``."""

    deployment: str
    canary: frozenset[str]
    """Object names (assignment ids) of the new side's routes."""
    canary_percent: float


Renderer = Callable[[Plan, Split | None], list[dict[str, Any]]]
"""A plan's objects with a split (None: no split, as after the rollout ended); ``render/rollout.py`` makes one."""


def stable_assignments(plan: Plan, spec: RolloutSpec) -> list[Assignment]:
    """The old side: the deployment's assignments matching ``from`` (``capacity.check`` reads the same)."""
    return [a for a in plan.spec.assignments if a.deployment == spec.deployment and a.replicas > 0
            and (spec.from_.variant is None or a.variant == spec.from_.variant)
            and (spec.from_.pool is None or a.pool == spec.from_.pool)]


def stable_replicas(plan: Plan, spec: RolloutSpec) -> int:
    """The old side's replicas in ``plan``."""
    return sum(a.replicas for a in stable_assignments(plan, spec))


def in_removal_order(stable: list[Assignment], pool: str) -> list[Assignment]:
    """The old side's assignments in the order replace mode shrinks them: first those on the new side's ``pool``
    (where removing frees room for it), then by key; within one, the highest replica index goes first."""
    return sorted(stable, key=lambda a: (a.pool != pool, a.key))


def resized(a: Assignment, replicas: int) -> Assignment:
    """``a`` with its first ``replicas`` replicas (never more than it has placements for), its cost scaled to
    them (the per-replica cost stays)."""
    if replicas > a.replicas:
        raise ValueError(f"{a.label} has {a.replicas} replicas placed, not {replicas}")
    cost = None if a.cost_usd_per_hour is None else a.cost_usd_per_hour * replicas / max(1, a.replicas)
    return a.model_copy(update={"replicas": replicas, "cost_usd_per_hour": cost,
                                "placements": [p for p in a.placements if p.replica < replicas]})


def object_names(assignments: list[Assignment]) -> list[str]:
    """The assignments' object names, as the chart names their workloads (``render.helm.assignment_ids``)."""
    return [object_name(n) for n in assignment_names(assignments)]


def sides_plan(plan: Plan, spec: RolloutSpec, canary: Assignment, want: Desired) -> Plan:
    """``plan`` with the old side at ``want.stable_replicas`` (an assignment at 0 is removed) and the new side at
    ``want.canary_replicas`` (absent at 0). The old side shrinks in ``capacity.check``'s removal order: first the
    assignments on the new side's pool, where that frees room. ValueError when the new side would share an
    object name with an assignment the plan keeps."""
    stable = stable_assignments(plan, spec)
    gone = max(0, sum(a.replicas for a in stable) - want.stable_replicas)
    sizes: dict[int, int] = {}
    for a in in_removal_order(stable, canary.pool):
        cut = min(a.replicas, gone)
        sizes[id(a)] = a.replicas - cut
        gone -= cut
    out = []
    for a in plan.spec.assignments:
        if id(a) not in sizes:
            out.append(a)
        elif sizes[id(a)]:
            out.append(resized(a, sizes[id(a)]))
    if want.canary_replicas:
        out.append(resized(canary, want.canary_replicas))
    names = object_names(out)
    if len(set(names)) != len(names):
        raise ValueError(f"the new side {canary.label} would share its object name with an assignment the plan "
                         "keeps: roll out to another variant or pool, or plan the deployment without that "
                         "assignment first")
    return plan.model_copy(update={"spec": plan.spec.model_copy(update={"assignments": out})})


def promoted_plan(plan: Plan, spec: RolloutSpec, canary: Assignment) -> Plan:
    """The deployment served by the new side alone, at full size: the plan a succeeded rollout leaves."""
    return sides_plan(plan, spec, canary, Desired(canary.replicas, 0, 100))


def canary_name(plan: Plan, spec: RolloutSpec, canary: Assignment) -> str:
    """The new side's object name (its Deployment, Service and route)."""
    return object_names(sides_plan(plan, spec, canary, Desired(1, 0, 0)).spec.assignments)[-1]


def split_of(plan: Plan, spec: RolloutSpec, canary: Assignment, canary_percent: float) -> Split:
    return Split(spec.deployment, frozenset({canary_name(plan, spec, canary)}), canary_percent)
