"""``matrix()``: every variant of a model against every hardware profile. Pure.

Given Benchmark documents (and the calibration entries fitted to them, estimate/fit.py), a cell whose replica
was measured shows the measured decode speed at one sequence, and every cell says where its speed comes from
(``speed_source``: 'measured', 'calibrated', 'roofline').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.estimate.calibration import Calibration
from orchestrator.estimate.datasheet import UncertainFigure
from orchestrator.estimate.estimator import Estimate, estimate
from orchestrator.spec.benchmark import Benchmark
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
    """Per sequence at batch 1: measured where a Benchmark of the replica says, else the roofline's."""
    why_not: str | None
    estimate: Estimate

    @property
    def speed_source(self) -> str | None:
        """'measured', 'calibrated', 'roofline', or None without a speed (Estimate.speed_source)."""
        return self.estimate.speed_source if self.decode_tokens_per_second is not None else None

    @property
    def measured_by(self) -> str | None:
        """The Benchmark the speed was measured by."""
        m = self.estimate.measured
        return m.benchmark if m and m.reading and self.speed_source == "measured" else None

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
                "decodeTokensPerSecond": self.decode_tokens_per_second, "speedSource": self.speed_source,
                "measuredBy": self.measured_by,
                "calibratedFrom": self.estimate.calibration.get("benchmark") if self.estimate.calibration
                and self.speed_source == "calibrated" else None,
                "whyNot": self.why_not,
                "uncertainInputs": [str(u) for u in self.uncertain_inputs]}


def matrix(model: Model, profiles: list[HardwareProfile], context: int | None = None, *,
           benchmarks: Sequence[Benchmark] = (), calibrations: Sequence[Calibration] = ()) -> list[Cell]:
    cells = []
    for variant in model.spec.variants:
        for profile in profiles:
            e = estimate(model, variant, profile, context=context, benchmarks=benchmarks, calibrations=calibrations)
            why = None if e.fits and e.support == "supported" else (e.reasons[0] if e.reasons else "does not fit")
            measured = e.measured.reading.decode_tokens_per_second if (
                e.speed_source == "measured" and e.measured and e.measured.reading) else None
            speed = measured if measured is not None else e.decode_tokens_per_second
            cells.append(Cell(variant.name, profile.name, e.support, e.engine, e.fits, e.devices,
                              e.max_context_tokens if e.fits else None, speed if e.fits else None, why, e))
    return cells
