"""A measured curve read as capacity: the largest concurrency whose measured latencies meet an SLO. Pure.

A ``Benchmark`` (spec/benchmark.py) holds one replica's latencies and throughput at a few concurrency levels.
Between two measured levels the figures are read linearly in concurrency (a straight line between the two
points: latency and throughput grow smoothly with concurrency between levels a few apart, and a straight line
is the simplest reading that never invents a bend). Nothing is read above the highest measured level: capacity
there is capped at the last measured point that meets the SLO ("beyond the measured range"). Below the
lowest level latencies are taken as the lowest level's (fewer sequences are never slower) and throughput
shrinks in proportion (Little's law with latencies no longer than measured: a lower bound).

A level with more failed requests than ``MAX_ERROR_RATE`` is not used, and neither is any level above it:
a replica that fails at concurrency 8 is not trusted at 16 even if 16 happened to go well. Levels driven by a
request rate instead of a concurrency are not read (capacity is a concurrency here).

The SLO is on p95 latencies (``Slo``'s targets are p95), so the p95 figures are what is checked.
``capacity_from_curve`` returns the concurrency, the figures there, what bound it and the reasons, as a value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.spec.benchmark import CurvePoint, Latency

MAX_ERROR_RATE = 0.01
"""A level with more than 1% failed requests is not used: its latencies describe a replica that is shedding
load, and its throughput counts only the requests that got through."""


@dataclass(frozen=True)
class Target:
    """What a concurrency must meet: p95 TTFT and p95 TPOT targets, in seconds (None: no target)."""

    ttft_s: float | None = None
    tpot_s: float | None = None


@dataclass(frozen=True)
class Reading:
    """The curve read at one concurrency: measured there, or linear between the measured levels around it."""

    concurrency: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    requests_per_second: float
    output_tokens_per_second: float
    how: str
    """'measured' (a measured level), 'interpolated' (between two) or 'below-range' (under the lowest level:
    its latencies, throughput scaled down)."""

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Per sequence, from the median TPOT."""
        return 1 / self.tpot_p50_s if self.tpot_p50_s else None


@dataclass(frozen=True)
class Usable:
    """The levels a curve can be read at (concurrency, in increasing order), and why others were left out."""

    points: tuple[CurvePoint, ...]
    reasons: tuple[str, ...]

    @property
    def highest(self) -> int | None:
        return self.points[-1].concurrency if self.points else None

    @property
    def lowest(self) -> int | None:
        return self.points[0].concurrency if self.points else None


@dataclass(frozen=True)
class CurveCapacity:
    """The largest concurrency meeting the target, read from a curve; ``reading`` is None when none does."""

    reading: Reading | None
    binding: str
    """What stops a larger concurrency: 'ttft-slo', 'tpot-slo', 'measured-range' (the highest usable level meets
    the target; nothing above it is read) or 'limit' (the ``limit`` given); with no reading, the target the
    lowest level misses ('ttft-slo', 'tpot-slo') or 'no-usable-point'."""
    reasons: tuple[str, ...]
    measured_range: tuple[int, int] | None
    """The lowest and highest usable concurrency."""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


def usable_points(points: Iterable[CurvePoint], max_error_rate: float = MAX_ERROR_RATE,
                  needs: Sequence[str] = ()) -> Usable:
    """The concurrency levels below the first one with too many errors or without a figure in ``needs``
    ('ttft', 'tpot'), in increasing concurrency."""
    levels = sorted((p for p in points if p.concurrency is not None), key=lambda p: p.concurrency or 0)
    reasons = []
    rates = sum(1 for p in points if p.concurrency is None)
    if rates:
        reasons.append(f"{rates} level(s) driven by a request rate are not read (capacity is read by concurrency)")
    kept: list[CurvePoint] = []
    for p in levels:
        bad = None
        if p.error_rate > max_error_rate:
            bad = f"{p.error_rate:.1%} of its requests failed (more than {max_error_rate:.0%})"
        else:
            lacking = [n.upper() for n in needs if getattr(p, f"{n}_seconds") is None]
            if lacking:
                bad = f"it has no {' or '.join(lacking)} measured"
        if bad:
            above = " nor any level above it" if p is not levels[-1] else ""
            reasons.append(f"measured concurrency {p.concurrency} is not used{above}: {bad}")
            break
        kept.append(p)
    return Usable(tuple(kept), tuple(reasons))


def _lerp(a: float | None, b: float | None, f: float) -> float | None:
    return None if a is None or b is None else a + (b - a) * f


def _p(lat: Latency | None, which: str) -> float | None:
    return None if lat is None else getattr(lat, which)


def read_at(usable: Usable, concurrency: int) -> Reading | None:
    """The curve at ``concurrency``; None above the highest usable level (nothing is read beyond it)."""
    pts = usable.points
    if not pts or concurrency > (usable.highest or 0):
        return None
    lo = pts[0]
    if concurrency <= (lo.concurrency or 0):
        share = concurrency / (lo.concurrency or 1)
        how = "measured" if concurrency == lo.concurrency else "below-range"
        return Reading(concurrency, _p(lo.ttft_seconds, "p50"), _p(lo.ttft_seconds, "p95"), _p(lo.tpot_seconds, "p50"),
                       _p(lo.tpot_seconds, "p95"), lo.requests_per_second * share,
                       lo.output_tokens_per_second * share, how)
    for a, b in itertools.pairwise(pts):
        ca, cb = a.concurrency or 0, b.concurrency or 0
        if ca < concurrency <= cb:
            f = (concurrency - ca) / (cb - ca)
            how = "measured" if concurrency == cb else "interpolated"
            val = {}
            for metric in ("ttft", "tpot"):
                for q in ("p50", "p95"):
                    val[f"{metric}_{q}_s"] = _lerp(_p(getattr(a, f"{metric}_seconds"), q),
                                                   _p(getattr(b, f"{metric}_seconds"), q), f)
            return Reading(concurrency, val["ttft_p50_s"], val["ttft_p95_s"], val["tpot_p50_s"], val["tpot_p95_s"],
                           a.requests_per_second + (b.requests_per_second - a.requests_per_second) * f,
                           a.output_tokens_per_second + (b.output_tokens_per_second - a.output_tokens_per_second) * f,
                           how)
    raise AssertionError("unreachable: concurrency within the usable range")


def _needs(target: Target) -> list[str]:
    return [m for m, t in (("ttft", target.ttft_s), ("tpot", target.tpot_s)) if t is not None]


def _misses(p: CurvePoint, target: Target) -> list[tuple[str, float, float]]:
    """(metric, measured p95, target) for each target the level misses."""
    out = []
    for metric in _needs(target):
        value = getattr(p, f"{metric}_seconds").p95
        goal = getattr(target, f"{metric}_s")
        if value > goal:
            out.append((metric, value, goal))
    return out


def _crossing(a: CurvePoint, b: CurvePoint, metric: str, goal: float) -> float:
    """The concurrency at which the straight line from a to b reaches ``goal`` (a meets it, b does not)."""
    va, vb = getattr(a, f"{metric}_seconds").p95, getattr(b, f"{metric}_seconds").p95
    ca, cb = a.concurrency or 0, b.concurrency or 0
    return ca + (goal - va) / (vb - va) * (cb - ca)


def capacity_from_curve(points: Iterable[CurvePoint], target: Target, *, limit: int | None = None,
                        max_error_rate: float = MAX_ERROR_RATE) -> CurveCapacity:
    """The largest concurrency at which the measured p95 TTFT and TPOT (linear between measured levels) meet
    ``target``, never above the highest usable level nor above ``limit`` (what the replica can hold: KV
    memory, the engine's sequence limit), with the figures read there and the reasons."""
    usable = usable_points(points, max_error_rate, _needs(target))
    reasons = list(usable.reasons)
    pts = usable.points
    if not pts:
        return CurveCapacity(None, "no-usable-point", (*reasons, "no usable concurrency level in the curve"), None)
    lo_c, hi_c = usable.lowest or 1, usable.highest or 1
    span = (lo_c, hi_c)
    missed = _misses(pts[0], target)
    if missed:
        said = ", ".join(f"{m.upper()} p95 {_ms(v)} > target {_ms(g)}" for m, v, g in missed)
        below = f"; nothing below concurrency {lo_c} was measured" if lo_c > 1 else ""
        return CurveCapacity(None, f"{missed[0][0]}-slo", (
            *reasons, f"misses the SLO at the lowest measured concurrency ({lo_c}): {said}{below}"), span)
    best, binding = hi_c, "measured-range"
    for a, b in itertools.pairwise(pts):
        missed = _misses(b, target)
        if not missed:
            continue
        crossings = sorted((_crossing(a, b, m, g), m) for m, _, g in missed)
        at, metric = crossings[0]
        best, binding = max(a.concurrency or 1, math.floor(at + 1e-9)), f"{metric}-slo"
        goal = getattr(target, f"{metric}_s")
        reasons.append(f"{metric.upper()} p95 reaches the {_ms(goal)} target at concurrency {at:.3g}, between the "
                       f"measured {a.concurrency} and {b.concurrency} (read linearly in concurrency): {best} is the "
                       "largest that meets the SLO")
        break
    else:
        reasons.append(f"beyond the measured range (max concurrency {hi_c}): the highest measured level meets the "
                       "SLO and nothing above it is assumed; measure higher concurrency to find more")
    if limit is not None and limit < best:
        best, binding = limit, "limit"
    reading = read_at(usable, best)
    assert reading is not None
    return CurveCapacity(reading, binding, tuple(reasons), span)
