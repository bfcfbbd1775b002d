"""``matrix()``: every variant of a model against every hardware profile. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.estimate.datasheet import UncertainFigure
from orchestrator.estimate.estimator import Estimate, estimate
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.model import Model


@dataclass(frozen=True)
class Cell:
    variant: str
    hardware: str
    support: str
    """'supported', 'unsupported' or 'unknown' (orchestrator.compat)."""
    engine: str | None
    fits: bool
    devices: int | None
    max_context_tokens: int | None
    decode_tokens_per_second: float | None
    why_not: str | None
    estimate: Estimate

    @property
    def status(self) -> str:
        fit = "fits" if self.fits else "no fit"
        if self.support == "supported" and self.declared_by:
            return f"declared, {fit}"
        return {"supported": fit, "unknown": f"unknown, {fit}"}.get(self.support, "unsupported")

    @property
    def declared_by(self) -> str | None:
        """The profile whose declaredSupport makes this cell supported (moxin's rules alone would not)."""
        return self.estimate.declared_by

    @property
    def uncertain_inputs(self) -> list[UncertainFigure]:
        """The uncertain datasheet figures behind this cell's fit and speed."""
        return self.estimate.uncertain_inputs

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "hardware": self.hardware, "support": self.support,
                "declaredBy": self.declared_by, "engine": self.engine, "fits": self.fits,
                "minDevices": self.devices if self.fits else None, "tensorParallel": self.estimate.tensor_parallel,
                "pipelineParallel": self.estimate.pipeline_parallel, "maxContextTokens": self.max_context_tokens,
                "decodeTokensPerSecond": self.decode_tokens_per_second, "whyNot": self.why_not,
                "uncertainInputs": [str(u) for u in self.uncertain_inputs]}


def matrix(model: Model, profiles: list[HardwareProfile], context: int | None = None) -> list[Cell]:
    cells = []
    for variant in model.spec.variants:
        for profile in profiles:
            e = estimate(model, variant, profile, context=context)
            why = None if e.fits and e.support == "supported" else (e.reasons[0] if e.reasons else "does not fit")
            cells.append(Cell(variant.name, profile.name, e.support, e.engine, e.fits, e.devices,
                              e.max_context_tokens if e.fits else None, e.decode_tokens_per_second if e.fits else None,
                              why, e))
    return cells
