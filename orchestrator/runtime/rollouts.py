"""A rollout as the Ray controller runs it: the machine's state (``rollout.machine``) -> the plan the loop
reconciles and the routing split. Pure: no Ray, no I/O.

The controller keeps one ``Run`` per Rollout in GCS (``KV_ROLLOUTS``): the spec, the new side's assignment (the
deployment planned on the target variant/pool, at the size that takes all the traffic), the machine's state and
the operator's commands. Each loop it derives the plan to reconcile with ``sided_plan``: the old side's
assignments cut to ``state.stable_replicas`` (replace mode removes the highest replica indices first) and the new
assignment at ``state.canary_replicas``. The replicas keep their ids (``<deployment>-<variant>-<pool>-<i>``), so a
restarted controller adopts the same ones and starts none twice. ``split`` is the routing table's canary share.

When the rollout succeeds, ``promoted_plan`` is the plan the controller saves as its own: the deployment served by
the new assignment alone, so no later loop brings the old side back. When it rolls back, the base plan stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.rollout.machine import Command, Phase, State
from orchestrator.spec.plan import Assignment, Plan
from orchestrator.spec.rollout import RolloutSpec


@dataclass(frozen=True)
class Run:
    """One Rollout in the controller: what GCS holds for it."""

    name: str
    spec: RolloutSpec
    canary: Assignment
    """The new side at full size."""
    state: State
    commands: tuple[Command, ...] = ()
    finished: bool = False
    """Its end has been applied to the controller's plan (promoted, or rolled back): it no longer shapes it."""
    notes: tuple[str, ...] = field(default=())
    """What the controller adds to the decision log (capacity mode and reasons)."""
    prompts: tuple[str, ...] = ()
    """The quality gate's golden prompts, read by the CLI (built-in or the Rollout's file)."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.model_dump(mode="json", by_alias=True),
                "canary": self.canary.model_dump(mode="json", by_alias=True), "state": self.state.to_json(),
                "commands": [{"id": c.id, "verb": c.verb} for c in self.commands], "finished": self.finished,
                "notes": list(self.notes), "prompts": list(self.prompts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(data["name"], RolloutSpec.model_validate(data["spec"]), Assignment.model_validate(data["canary"]),
                   State.from_json(data["state"]), tuple(Command(c["id"], c["verb"]) for c in data["commands"]),
                   bool(data["finished"]), tuple(data.get("notes", ())), tuple(data.get("prompts", ())))

    @property
    def active(self) -> bool:
        """It shapes the plan: not finished (a terminal phase is finished by the controller once applied)."""
        return not self.finished

    def with_command(self, verb: str) -> Run:
        last = max([c.id for c in self.commands] + [self.state.last_command])
        return replace(self, commands=(*self.commands, Command(last + 1, verb)))  # type: ignore[arg-type]


def is_stable(a: Assignment, spec: RolloutSpec) -> bool:
    """An assignment of the old side: the rollout's deployment, matching ``from`` where it names something, and not
    the new side."""
    return (a.deployment == spec.deployment and a.replicas > 0
            and (spec.from_.variant is None or a.variant == spec.from_.variant)
            and (spec.from_.pool is None or a.pool == spec.from_.pool))


def is_canary(labels: dict[str, str], run: Run) -> bool:
    """A replica (by its metric labels) of the run's new side."""
    c = run.canary
    return labels.get("deployment") == c.deployment and labels.get("variant") == c.variant \
        and labels.get("pool") == c.pool


def resized(a: Assignment, replicas: int) -> Assignment:
    """The assignment with its first ``replicas`` replicas (indices 0..replicas-1), cost scaled to them."""
    replicas = max(0, min(replicas, a.replicas))
    cost = None if a.cost_usd_per_hour is None else a.cost_usd_per_hour * replicas / max(1, a.replicas)
    return a.model_copy(update={"replicas": replicas, "placements": [p for p in a.placements if p.replica < replicas],
                                "cost_usd_per_hour": cost})


def stable_assignments(plan: Plan, spec: RolloutSpec) -> list[Assignment]:
    return [a for a in plan.spec.assignments if is_stable(a, spec) and not _same(a, spec)]


def stable_count(plan: Plan, spec: RolloutSpec) -> int:
    return sum(a.replicas for a in plan.spec.assignments if is_stable(a, spec) and not _same(a, spec))


def _same(a: Assignment, spec: RolloutSpec) -> bool:
    """The assignment already is the target (variant and pool): it is not part of the old side."""
    variant = spec.to.variant if spec.to.variant is not None else a.variant
    pool = spec.to.pool if spec.to.pool is not None else a.pool
    return (a.variant, a.pool) == (variant, pool)


def _with(plan: Plan, assignments: list[Assignment]) -> Plan:
    return plan.model_copy(update={"spec": plan.spec.model_copy(update={"assignments": assignments})})


def sided_plan(plan: Plan, run: Run) -> Plan:
    """The plan the loop reconciles while ``run`` is active: the old side cut to the state's count (the highest
    indices of the last old assignment go first), the new side at the state's count."""
    if not run.active:
        return plan
    keep = run.state.stable_replicas
    out: list[Assignment] = []
    for a in plan.spec.assignments:
        if _key(a) == _key(run.canary):
            continue  # the new side is the run's, at the run's size
        if is_stable(a, run.spec) and not _same(a, run.spec):
            a = resized(a, keep)
            keep -= a.replicas
            if a.replicas == 0:
                continue
        out.append(a)
    if run.state.canary_replicas > 0:
        out.append(resized(run.canary, run.state.canary_replicas))
    return _with(plan, out)


def promoted_plan(plan: Plan, run: Run) -> Plan:
    """The deployment served by the new side alone, at full size: the plan a succeeded rollout leaves."""
    out = [a for a in plan.spec.assignments
           if not (is_stable(a, run.spec) and not _same(a, run.spec)) and _key(a) != _key(run.canary)]
    return _with(plan, [*out, run.canary])


def _key(a: Assignment) -> tuple[str, str, str]:
    return a.deployment, a.variant, a.pool


def split(runs: list[Run]) -> dict[str, dict[str, float]]:
    """The routing table's splits: each active rollout with a new side running, its weight."""
    return {r.spec.deployment: {"canaryPercent": float(r.state.weight)} for r in runs
            if r.active and r.state.canary_replicas > 0 and r.state.phase not in (Phase.ROLLED_BACK,)}
