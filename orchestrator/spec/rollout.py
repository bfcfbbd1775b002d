"""``Rollout``: a change of variant or pool for a deployment, in metric-gated steps (schema only for now)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import MAX_SECONDS, Document, FiniteFloat, Name, Strict


class Target(Strict):
    variant: Name | None = None
    """Variant to move from / to; null keeps the current one."""
    pool: Name | None = None
    """Pool to move from / to; null keeps the current one."""


class Step(Strict):
    weight_percent: FiniteFloat = Field(ge=0, le=100)
    """Share of traffic on the new target during this step."""
    pause_seconds: FiniteFloat = Field(0, ge=0, le=MAX_SECONDS)
    """How long the step holds, with gates checked, before the next."""


class Gate(Strict):
    metric: Literal["ttftP95Seconds", "tpotP95Seconds", "errorRate", "e2eP95Seconds"]
    """What is measured on the new target."""
    max: FiniteFloat = Field(ge=0)
    """The step fails if the metric exceeds this."""


class RolloutSpec(Strict):
    deployment: Name
    """The ModelDeployment to change."""
    strategy: Literal["canary", "blueGreen"] = "canary"
    """Canary: traffic moves in steps; blue-green: all at once after the new side is ready."""
    from_: Target = Field(default_factory=Target, alias="from")
    """What runs now."""
    to: Target
    """What should run afterwards."""
    steps: list[Step] = Field(default_factory=list)
    """Traffic steps (canary)."""
    gates: list[Gate] = Field(default_factory=list)
    """Checks at every step; a failing gate rolls back."""
    rollback_on_failure: bool = True
    """Return all traffic to the old target when a gate fails."""

    @model_validator(mode="after")
    def _changes_something(self) -> RolloutSpec:
        if self.to.variant is None and self.to.pool is None:
            raise ValueError("'to' must name a variant, a pool, or both")
        weights = [s.weight_percent for s in self.steps]
        if weights != sorted(weights):
            raise ValueError("steps[].weightPercent must not decrease")
        return self


class Rollout(Document[RolloutSpec]):
    kind: Literal["Rollout"]
    """'Rollout'."""
    spec: RolloutSpec
