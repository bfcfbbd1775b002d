"""A rollout as the Ray controller keeps it: the machine's state (``rollout.machine``) and what the routing split
and the replicas' sides are read from. Pure: no Ray, no I/O.

The controller keeps one ``Run`` per Rollout in GCS (``KV_ROLLOUTS``): the spec, the new side's assignment (the
deployment planned on the target variant/pool, at the size that takes all the traffic), the machine's state and
the operator's commands. While the run is active, each loop derives the plan to reconcile from its state with
``rollout.sides.sides_plan``, the same plan of both sides the Kubernetes driver renders.
The replicas keep their ids (``<deployment>-<variant>-<pool>-<i>``), so a restarted controller adopts the same ones
and starts none twice. ``split`` is the routing table's canary share.

When the rollout succeeds, ``sides.promoted_plan`` is the plan the controller saves as its own: the deployment served
by the new assignment alone, so no later loop brings the old side back. When it rolls back, the base plan stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.rollout.machine import Command, Phase, State
from orchestrator.spec.plan import Assignment
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


def is_canary(labels: dict[str, str], run: Run) -> bool:
    """A replica (by its metric labels) of the run's new side."""
    c = run.canary
    return labels.get("deployment") == c.deployment and labels.get("variant") == c.variant \
        and labels.get("pool") == c.pool


def split(runs: list[Run]) -> dict[str, dict[str, float]]:
    """The routing table's splits: each active rollout with a new side running, its weight."""
    return {r.spec.deployment: {"canaryPercent": float(r.state.weight)} for r in runs
            if r.active and r.state.canary_replicas > 0 and r.state.phase not in (Phase.ROLLED_BACK,)}
