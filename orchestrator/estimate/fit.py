"""Calibration fitted to Benchmark documents: the bandwidth efficiency a measurement implies. Pure.

For a Benchmark of real hardware whose profile gives the datasheet figures a roofline needs, the bandwidth
efficiency is the one at which ``estimate()`` at the Benchmark's conditions (its model, variant, parallelism and
KV dtype; batch = the lowest usable concurrency; context = mean prompt + half the mean output, as the
published figures of estimate/calibration.py are read) gives a decode step equal to the measured median TPOT
there. The compute efficiency is kept from the calibration table: a TTFT at the prompt lengths a benchmark
sends is mostly queueing, scheduling and the first decode step, not prefill arithmetic, and fitting compute to it
would make long prompts look far slower than they are.

Each fitted entry holds for the hardware profile measured (by name), its engine, and weights of the same format
class and architecture class (dense or MoE, which reach very different shares of the bandwidth), for every model
and parallelism; the estimate then says "calibrated from Benchmark <name>". Where several Benchmarks fit the
same key, the latest measured one wins. A Benchmark measured on an emulated pool describes the CPU and fits
nothing; a profile without a datasheet bandwidth has nothing to take a share of, so there only a Benchmark of
exactly the replica (estimate/benchmarks.py) gives a speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.estimate.calibration import Calibration, architecture_class, format_class, lookup
from orchestrator.estimate.estimator import estimate
from orchestrator.estimate.measured import usable_points
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.model import Model

LOWEST_EFFICIENCY = 1e-3
"""Below this the measurement is far more likely wrong (or of another replica) than the hardware that slow."""


@dataclass(frozen=True)
class Fits:
    """The entries fitted to Benchmarks, and why the other Benchmarks fit nothing."""

    calibrations: tuple[Calibration, ...] = ()
    not_fitted: tuple[tuple[str, str], ...] = ()
    """(Benchmark name, reason)."""


def fit_bandwidth(benchmark: Benchmark, model: Model, profile: HardwareProfile) -> Calibration | str:
    """The calibration entry ``benchmark`` implies for its (engine, hardware, format class, architecture class),
    or the reason it implies none."""
    s = benchmark.spec
    if s.where.emulated:
        return "measured on an emulated pool: its figures describe the CPU, not the hardware's efficiency"
    if profile.spec.memory_bandwidth_gbps is None:
        return (f"{profile.name} has no datasheet memory bandwidth to take a share of: only a Benchmark of exactly the "
                "replica planned makes it plannable")
    usable = usable_points(s.curve, needs=("tpot",))
    if not usable.points:
        return "no usable concurrency level with a TPOT: " + "; ".join(usable.reasons)
    point = usable.points[0]
    assert point.tpot_seconds is not None and point.concurrency is not None
    measured = point.tpot_seconds.p50
    variant = model.spec.variant(s.variant)
    assert variant is not None and model.spec.architecture is not None
    arch = model.spec.architecture
    table = lookup(s.engine, profile.spec.family, format_class(variant), architecture_class(arch))
    context = min(s.load.prompt_tokens + s.load.output_tokens // 2, arch.max_position_embeddings)

    def step(bandwidth: float) -> float | None:
        trial = Calibration("fit", s.engine, profile.spec.family, format_class(variant), bandwidth,
                            table.compute_efficiency, True, "fit", architecture=architecture_class(arch))
        return estimate(model, variant, profile, tp=s.tensor_parallel, pp=s.pipeline_parallel, ep=s.expert_parallel,
                        context=context, batch=point.concurrency, kv_dtype=s.kv_cache_dtype, engine=s.engine,
                        calibration=trial).decode_step_seconds

    fastest, slowest = step(1.0), step(LOWEST_EFFICIENCY)
    if fastest is None or slowest is None:
        return "the estimator predicts no decode step for it (a datasheet figure is missing): nothing to fit"
    if measured < fastest:
        return (f"its TPOT p50 ({measured * 1000:.3g} ms at concurrency {point.concurrency}) is faster than the whole "
                f"datasheet bandwidth allows ({fastest * 1000:.3g} ms): check its hardware and variant")
    if measured > slowest:
        return (f"its TPOT p50 ({measured * 1000:.3g} ms) would need under {LOWEST_EFFICIENCY:g} of the bandwidth: "
                "not taken as an efficiency")
    lo, hi = LOWEST_EFFICIENCY, 1.0
    for _ in range(60):  # bisection in log: the step falls as the efficiency rises
        mid = math.sqrt(lo * hi)
        t = step(mid)
        assert t is not None
        lo, hi = (mid, hi) if t > measured else (lo, mid)
    efficiency = round(math.sqrt(lo * hi), 4)
    return Calibration(
        f"benchmark/{benchmark.name}", s.engine, profile.spec.family, format_class(variant), efficiency,
        table.compute_efficiency, True,
        f"calibrated from Benchmark {benchmark.name}: bandwidth efficiency {efficiency:g} makes the decode step of "
        f"{s.model} {s.variant} tp={s.tensor_parallel} pp={s.pipeline_parallel} at concurrency {point.concurrency} "
        f"and {context} tokens of context equal its measured TPOT p50 ({measured * 1000:.3g} ms); compute "
        f"efficiency {table.compute_efficiency:g} kept from {table.key}",
        architecture=architecture_class(arch), hardware=profile.name, benchmark=benchmark.name)


def fit_benchmarks(benchmarks: Iterable[Benchmark], models: Mapping[str, Model],
                   profiles: Mapping[str, HardwareProfile]) -> Fits:
    """One entry per (engine, hardware, format class, architecture class), from the latest Benchmark that fits."""
    fitted: dict[tuple[str, str, str, str], tuple[Benchmark, Calibration]] = {}
    refused = []
    for b in sorted(benchmarks, key=lambda b: (b.spec.measured_at, b.name)):
        result = fit_bandwidth(b, models[b.spec.model], profiles[b.spec.hardware])
        if isinstance(result, str):
            refused.append((b.name, result))
            continue
        key = (result.engine, result.hardware, result.format_class, result.architecture)
        if key in fitted:
            later = (f"superseded by the later Benchmark {b.name} of the same hardware, engine, format class and "
                     "architecture class")
            refused.append((fitted[key][0].name, later))
        fitted[key] = (b, result)
    return Fits(tuple(c for _, c in fitted.values()), tuple(sorted(refused)))
