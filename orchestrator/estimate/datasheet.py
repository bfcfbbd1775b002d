"""Which datasheet figures an estimate rests on, and how sure they are. Pure.

A profile marks figures that are published but not sure (second-hand, varying by SKU) with a source
``uncertain: true``. The estimator still uses them; it lists each one it used as "uncertain datasheet
figure: <field> (<source>)" (``Estimate.uncertain_inputs``), and the planner passes them on to the plan
and prefers certain hardware at equal cost. A capacity measured by a Benchmark of the replica rests on no
speed figure (``is_speed_figure``: the planner drops those from a measured candidate's uncertain figures).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.spec.hardware import HardwareProfile

SPEED_FIELDS = ("memoryBandwidthGBps", "peakTflops", "interconnect.bandwidthGBps")
"""The figures a roofline speed rests on (peakTflops: the format the matrix multiplies run in)."""


@dataclass(frozen=True, order=True)
class UncertainFigure:
    """One uncertain datasheet figure a result rests on."""

    hardware: str
    field: str
    """Its path under the profile's spec, e.g. 'memoryBandwidthGBps'."""
    source: str
    """The reference of the source that gives it."""

    def __str__(self) -> str:
        return f"uncertain datasheet figure: {self.field} ({self.source})"


def uncertain_figures(profile: HardwareProfile, paths: Iterable[str]) -> list[UncertainFigure]:
    """The figures of ``paths`` whose source is uncertain, in the order given."""
    return [UncertainFigure(profile.name, path, source.ref)
            for path, source in profile.spec.uncertain_figures(dict.fromkeys(paths))]


def is_speed_figure(path: str) -> bool:
    """Whether the figure at ``path`` is one a roofline speed rests on (a measured speed does not)."""
    return any(path == f or path.startswith(f + ".") for f in SPEED_FIELDS)


def speed_paths(profile: HardwareProfile) -> list[str]:
    """The field paths of every speed figure the profile gives."""
    return [p for p in profile.spec.numbers() if is_speed_figure(p)]


def speed_inputs_certain(profile: HardwareProfile) -> bool:
    """Whether a datasheet speed on ``profile`` rests on certain figures only: it gives a memory bandwidth and a
    peak, and none of its speed figures is uncertain (no speed at all is not certain speed). A measured speed
    does not ask this: it rests on no datasheet speed figure at all."""
    spec = profile.spec
    has_speed = spec.memory_bandwidth_gbps is not None and any(v is not None for v in spec.peak_tflops.model_dump().values())
    return has_speed and not uncertain_figures(profile, speed_paths(profile))
