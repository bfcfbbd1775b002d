"""estimate/measured.py on hand-made curves: reading between levels, the SLO bound between two levels, the cap at
the highest measured level, curves that meet nothing, and levels left out for their errors."""

from __future__ import annotations

import math

import pytest

from orchestrator.estimate.measured import MAX_ERROR_RATE, Target, capacity_from_curve, read_at, usable_points
from orchestrator.spec.benchmark import CurvePoint


def point(c: int | None, ttft: float | None, tpot: float | None, rps: float, errors: float = 0.0,
          rate: float | None = None) -> CurvePoint:
    """A level whose p50 is 80% of its p95 (the figures below are p95)."""
    doc: dict = {"concurrency": c, "rateRequestsPerSecond": rate, "requests": 100, "outputTokensPerSecond": rps * 100,
                 "requestsPerSecond": rps, "errorRate": errors}
    if ttft is not None:
        doc["ttftSeconds"] = {"p50": ttft * 0.8, "p95": ttft}
    if tpot is not None:
        doc["tpotSeconds"] = {"p50": tpot * 0.8, "p95": tpot}
    return CurvePoint.model_validate(doc)


# TTFT p95 0.2 -> 0.3 -> 0.5 -> 0.9 s, TPOT p95 20 -> 25 -> 35 -> 60 ms, 1 -> 1.8 -> 3.0 -> 4.4 req/s.
CURVE = [point(1, 0.2, 0.020, 1.0), point(2, 0.3, 0.025, 1.8), point(4, 0.5, 0.035, 3.0), point(8, 0.9, 0.060, 4.4)]


def test_a_concurrency_between_two_levels_is_read_linearly() -> None:
    r = read_at(usable_points(CURVE), 3)
    assert r is not None and r.how == "interpolated" and r.concurrency == 3
    assert math.isclose(r.ttft_p95_s, 0.4) and math.isclose(r.tpot_p95_s, 0.030)
    assert math.isclose(r.tpot_p50_s, 0.024) and math.isclose(r.requests_per_second, 2.4)
    assert math.isclose(r.decode_tokens_per_second, 1 / 0.024)
    six = read_at(usable_points(CURVE), 6)
    assert six is not None and math.isclose(six.requests_per_second, 3.7) and math.isclose(six.tpot_p95_s, 0.0475)
    assert read_at(usable_points(CURVE), 4).how == "measured"


def test_nothing_is_read_above_the_highest_level() -> None:
    assert read_at(usable_points(CURVE), 9) is None


def test_below_the_lowest_level_latencies_are_the_lowest_levels_and_throughput_shrinks_in_proportion() -> None:
    curve = [point(4, 0.5, 0.035, 3.0), point(8, 0.9, 0.060, 4.4)]
    r = read_at(usable_points(curve), 2)
    assert r is not None and r.how == "below-range"
    assert r.ttft_p95_s == 0.5 and r.tpot_p95_s == 0.035 and math.isclose(r.requests_per_second, 1.5)


def test_the_tpot_target_crossed_between_two_levels_bounds_the_concurrency_there() -> None:
    # TPOT p95 35 ms at 4, 60 ms at 8: the 50 ms target is reached at 4 + (50-35)/(60-35)*4 = 6.4 -> 6.
    cap = capacity_from_curve(CURVE, Target(ttft_s=2.0, tpot_s=0.050))
    assert cap.reading is not None and cap.reading.concurrency == 6 and cap.binding == "tpot-slo"
    assert math.isclose(cap.reading.requests_per_second, 3.7)  # 3.0 + (4.4 - 3.0) * 2/4
    assert math.isclose(cap.reading.tpot_p95_s, 0.0475) and cap.reading.tpot_p95_s <= 0.050
    assert cap.reasons == (("TPOT p95 reaches the 50 ms target at concurrency 6.4, between the measured 4 and 8 (read "
                            "linearly in concurrency): 6 is the largest that meets the SLO"),)
    assert cap.measured_range == (1, 8)


def test_the_ttft_target_binds_when_it_is_crossed_first() -> None:
    # TTFT p95 0.3 at 2, 0.5 at 4: 0.45 s is reached at 3.5 -> 3; TPOT 50 ms would allow 6.
    cap = capacity_from_curve(CURVE, Target(ttft_s=0.45, tpot_s=0.050))
    assert cap.reading.concurrency == 3 and cap.binding == "ttft-slo"
    assert math.isclose(cap.reading.requests_per_second, 2.4)


def test_a_target_met_exactly_at_a_level_keeps_that_level() -> None:
    cap = capacity_from_curve(CURVE, Target(tpot_s=0.035))
    assert cap.reading.concurrency == 4 and cap.reading.how == "measured" and cap.binding == "tpot-slo"


def test_beyond_the_measured_range_capacity_stops_at_the_highest_level_that_meets_the_slo() -> None:
    cap = capacity_from_curve(CURVE, Target(ttft_s=2.0, tpot_s=0.1))
    assert cap.reading.concurrency == 8 and cap.binding == "measured-range"
    assert cap.reading.requests_per_second == 4.4
    assert cap.reasons[0].startswith("beyond the measured range (max concurrency 8)")


def test_no_level_meets_the_slo() -> None:
    cap = capacity_from_curve(CURVE, Target(tpot_s=0.010))
    assert cap.reading is None and cap.binding == "tpot-slo"
    assert cap.reasons == ("misses the SLO at the lowest measured concurrency (1): TPOT p95 20 ms > target 10 ms",)
    higher = capacity_from_curve(CURVE[2:], Target(ttft_s=0.1, tpot_s=0.010))
    assert higher.reading is None and higher.binding == "ttft-slo"
    assert higher.reasons[-1] == ("misses the SLO at the lowest measured concurrency (4): TTFT p95 500 ms > target "
                                  "100 ms, TPOT p95 35 ms > target 10 ms; nothing below concurrency 4 was measured")


def test_a_level_with_too_many_errors_is_not_used_nor_any_above_it() -> None:
    curve = [CURVE[0], CURVE[1], point(4, 0.5, 0.035, 3.0, errors=0.05), CURVE[3]]
    cap = capacity_from_curve(curve, Target(ttft_s=2.0, tpot_s=0.1))
    assert cap.reading.concurrency == 2 and cap.binding == "measured-range" and cap.measured_range == (1, 2)
    assert cap.reasons[0] == ("measured concurrency 4 is not used nor any level above it: 5.0% of its requests failed "
                              "(more than 1%)")
    assert cap.reasons[1].startswith("beyond the measured range (max concurrency 2)")


def test_errors_up_to_the_threshold_are_tolerated() -> None:
    curve = [*CURVE[:3], point(8, 0.9, 0.060, 4.4, errors=MAX_ERROR_RATE)]
    assert capacity_from_curve(curve, Target(tpot_s=0.1)).reading.concurrency == 8


def test_a_curve_whose_first_level_fails_has_no_capacity() -> None:
    curve = [point(1, 0.2, 0.020, 1.0, errors=0.5), *CURVE[1:]]
    cap = capacity_from_curve(curve, Target(tpot_s=0.1))
    assert cap.reading is None and cap.binding == "no-usable-point" and cap.measured_range is None


def test_a_level_without_the_figure_the_slo_needs_ends_the_curve() -> None:
    curve = [CURVE[0], CURVE[1], point(4, 0.5, None, 3.0), CURVE[3]]
    cap = capacity_from_curve(curve, Target(tpot_s=0.1))
    assert cap.reading.concurrency == 2
    assert "measured concurrency 4 is not used nor any level above it: it has no TPOT measured" in cap.reasons
    assert capacity_from_curve(curve, Target(ttft_s=2.0)).reading.concurrency == 8  # no TPOT target: TTFT suffices


def test_rate_driven_levels_are_not_read() -> None:
    curve = [*CURVE, point(None, 0.3, 0.02, 2.0, rate=2.0)]
    cap = capacity_from_curve(curve, Target(tpot_s=0.1))
    assert cap.reading.concurrency == 8
    assert cap.reasons[0] == "1 level(s) driven by a request rate are not read (capacity is read by concurrency)"


@pytest.mark.parametrize("limit, concurrency, how", [(5, 5, "interpolated"), (8, 8, "measured"), (20, 8, "measured")])
def test_a_limit_below_the_curve_capacity_binds(limit: int, concurrency: int, how: str) -> None:
    cap = capacity_from_curve(CURVE, Target(tpot_s=0.1), limit=limit)
    assert cap.reading.concurrency == concurrency and cap.reading.how == how
    assert cap.binding == ("limit" if limit < 8 else "measured-range")
