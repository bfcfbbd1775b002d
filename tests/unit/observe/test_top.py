"""moxin top's numbers from two readings of the metrics, checked against figures worked out by hand."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from orchestrator.observe.top import (
    Sample,
    Snapshot,
    between,
    from_query,
    histogram_quantile,
    parse,
    rates,
    top,
)
from orchestrator.runtime.metrics import ControllerMetrics, RouterMetrics

GPU = {"deployment": "chat", "model": "m", "variant": "bf16", "pool": "gpu", "hardware": "h100", "engine": "vllm",
       "emulated": "false"}
MAC = {**GPU, "variant": "mlx-3bit", "pool": "mac", "hardware": "m2", "engine": "mlx-lm", "emulated": "true"}
NO_REPLICA = {k: "" for k in GPU} | {"deployment": "chat"}


def s(name: str, labels: dict[str, str], value: float, **extra: str) -> Sample:
    return Sample.of(name, {**labels, **extra}, value)


def ttft(labels: dict[str, str], counts: dict[str, float], instance: str = "r1") -> list[Sample]:
    return [s("moxin_request_ttft_seconds_bucket", labels, v, le=le, instance=instance) for le, v in counts.items()]


BEFORE = Snapshot(100.0, (
    s("moxin_router_requests_total", GPU, 100, code="200", instance="r1"),
    s("moxin_router_requests_total", GPU, 10, code="502", instance="r1"),
    s("moxin_router_requests_total", MAC, 20, code="200", instance="r1"),
    s("moxin_router_requests_total", MAC, 7, code="200", instance="r2"),
    s("moxin_generation_tokens_total", GPU, 1000, instance="r1"),
    s("moxin_generation_tokens_total", MAC, 500, instance="r1"),
    *ttft(GPU, {"0.1": 10, "0.5": 20, "+Inf": 20}),
))
AFTER = Snapshot(110.0, (  # 10 s later
    s("moxin_router_requests_total", GPU, 150, code="200", instance="r1"),   # +50
    s("moxin_router_requests_total", GPU, 12, code="502", instance="r1"),    # +2, server errors
    s("moxin_router_requests_total", MAC, 40, code="200", instance="r1"),    # +20
    s("moxin_router_requests_total", MAC, 4, code="200", instance="r2"),     # router r2 restarted: +4
    s("moxin_router_requests_total", MAC, 3, code="499", instance="r1"),     # new series: +3, the client's
    s("moxin_router_requests_total", NO_REPLICA, 5, code="503", instance="r1"),  # new: +5, no pool
    s("moxin_generation_tokens_total", GPU, 1500, instance="r1"),            # +500
    s("moxin_generation_tokens_total", MAC, 700, instance="r1"),             # +200
    *ttft(GPU, {"0.1": 30, "0.5": 60, "+Inf": 60}),                          # +20, +40, +40
    s("moxin_requests_in_flight", GPU, 3, replica="gpu-0", instance="r1"),
    s("moxin_requests_in_flight", MAC, 1, replica="mac-0", instance="r1"),
    s("moxin_requests_in_flight", MAC, 2, replica="mac-0", instance="r2"),
    s("moxin_replicas_desired", GPU, 1), s("moxin_replicas_ready", GPU, 1),
    s("moxin_replicas_desired", MAC, 1), s("moxin_replicas_ready", MAC, 0),
    s("moxin_predicted_capacity_requests_per_second", GPU, 10),
    s("moxin_predicted_capacity_requests_per_second", MAC, 2),
    s("moxin_predicted_output_tokens_per_second", GPU, 400),
    s("moxin_predicted_output_tokens_per_second", MAC, 100),
    s("moxin_predicted_cost_usd_per_hour", GPU, 2.5),
    s("moxin_predicted_cost_usd_per_hour", MAC, 0.5),
    s("moxin_slo_target_seconds", {"deployment": "chat"}, 2, objective="ttft_p95"),
    s("moxin_slo_target_seconds", {"deployment": "chat"}, 0.1, objective="tpot_p95"),
))


def test_an_assignment_row_from_two_readings_ten_seconds_apart():
    (view,) = between(BEFORE, AFTER)
    gpu, mac = view.assignments
    assert gpu.labels == GPU and mac.labels == MAC
    assert gpu.requests_per_second == pytest.approx(5.2)            # (50 + 2) / 10
    assert gpu.error_ratio == pytest.approx(0.2 / 5.2)              # the 502s
    assert gpu.output_tokens_per_second == pytest.approx(50)        # 500 / 10
    # rates per bucket 2, 4, 4: rank 0.95 * 4 = 3.8 falls in (0.1, 0.5]: 0.1 + 0.4 * (3.8 - 2) / (4 - 2)
    assert gpu.ttft_p95_seconds == pytest.approx(0.46)
    assert gpu.tpot_p95_seconds is None                             # no streamed requests measured
    assert gpu.load == pytest.approx(0.52)                          # 5.2 of 10 planned
    assert gpu.predicted_usd_per_million_output_tokens == pytest.approx(2.5 / (400 * 3600) * 1e6)  # $1.736
    assert gpu.actual_usd_per_million_output_tokens == pytest.approx(2.5 / (50 * 3600) * 1e6)      # $13.89
    assert (gpu.replicas_ready, gpu.replicas_desired, gpu.in_flight) == (1, 1, 3)


def test_routers_are_summed_a_reset_counts_from_zero_and_4xx_are_no_errors():
    (view,) = between(BEFORE, AFTER)
    mac = view.assignments[1]
    assert mac.requests_per_second == pytest.approx(2.7)            # (20 + 4 + 3) / 10
    assert mac.error_ratio == 0
    assert mac.in_flight == 3 and mac.in_flight_by_replica == {"mac-0": 3}
    assert (mac.replicas_ready, mac.replicas_desired) == (0, 1)
    assert mac.actual_usd_per_million_output_tokens == pytest.approx(0.5 / (20 * 3600) * 1e6)   # $6.94


def test_the_deployment_row_adds_its_assignments_and_the_requests_no_replica_took():
    (view,) = between(BEFORE, AFTER)
    total = view.total
    assert total.labels == {"deployment": "chat"}
    assert total.requests_per_second == pytest.approx(8.4)          # 5.2 + 2.7 + 0.5 (the 503s)
    assert total.error_ratio == pytest.approx(0.7 / 8.4)            # 502s and 503s
    assert total.capacity_requests_per_second == 12 and total.load == pytest.approx(0.7)
    assert total.cost_usd_per_hour == 3.0
    assert total.predicted_usd_per_million_output_tokens == pytest.approx(3.0 / (500 * 3600) * 1e6)  # $1.67
    assert total.actual_usd_per_million_output_tokens == pytest.approx(3.0 / (70 * 3600) * 1e6)      # $11.90
    assert total.in_flight == 6 and total.ttft_p95_seconds == pytest.approx(0.46)
    assert view.slo_seconds == {"tpot_p95": 0.1, "ttft_p95": 2}
    doc = view.to_json()
    assert doc["requestsPerSecond"] == pytest.approx(8.4) and len(doc["assignments"]) == 2
    assert doc["assignments"][0]["variant"] == "bf16"


def test_idle_replicas_have_a_planned_cost_per_token_but_no_actual_one():
    gauges = [s("moxin_predicted_cost_usd_per_hour", GPU, 2.5), s("moxin_predicted_output_tokens_per_second", GPU, 0)]
    (view,) = top(gauges, [])
    row = view.assignments[0]
    assert row.requests_per_second == 0 and row.error_ratio is None and row.load is None
    assert row.predicted_usd_per_million_output_tokens is None and row.actual_usd_per_million_output_tokens is None


def test_rates_need_the_second_reading_later():
    with pytest.raises(ValueError):
        rates(AFTER, BEFORE)


@pytest.mark.parametrize(("buckets", "expected"), [
    ({0.1: 0, 0.5: 0, math.inf: 0}, None),                  # nothing observed
    ({0.1: 10, 0.5: 10, math.inf: 10}, 0.095),              # rank 9.5 in the first bucket: 0 + 0.1 * 9.5 / 10
    ({0.1: 1, 0.5: 1, math.inf: 10}, 0.5),                  # rank in +Inf: the highest finite bound
    ({0.1: 5, 0.5: 4.9, math.inf: 10}, 0.5),                # 0.5 made monotonic (5), rank 9.5 still in +Inf
    ({0.25: 0, 1.0: 20, math.inf: 20}, 0.25 + 0.75 * 19 / 20),
    ({math.inf: 3}, None),                                  # no finite bound
])
def test_histogram_quantile_follows_prometheus(buckets, expected):
    got = histogram_quantile(0.95, buckets)
    assert got == (None if expected is None else pytest.approx(expected))


def test_the_exposition_the_router_and_controller_serve_parses_into_the_same_rows():
    """From real prometheus-client pages: 3 requests answered 200 with TTFTs 0.02, 0.02, 0.3 s and 24 tokens
    between two readings 2 s apart; the controller plans one replica, 4 req/s, $2.5/h, 200 tok/s."""
    router, controller = RouterMetrics(), ControllerMetrics()
    controller.desired.labels(**GPU).set(1)
    controller.capacity.labels(**GPU).set(4)
    controller.cost.labels(**GPU).set(2.5)
    controller.output_tokens.labels(**GPU).set(200)
    router.requests.labels(**GPU, code="200").inc(10)

    def read(t: float) -> Snapshot:
        return Snapshot(t, (*parse(generate_latest(router.registry).decode(), "127.0.0.1:1"),
                            *parse(generate_latest(controller.registry).decode(), "127.0.0.1:2")))

    before = read(0.0)
    for seconds in (0.02, 0.02, 0.3):
        router.requests.labels(**GPU, code="200").inc()
        router.ttft.labels(**GPU).observe(seconds)
    router.generation_tokens.labels(**GPU).inc(24)
    (view,) = between(before, read(2.0))
    row = view.assignments[0]
    assert row.requests_per_second == 1.5 and row.output_tokens_per_second == 12
    # per-second bucket rates: le 0.025 -> 1, le 0.05..0.25 -> 1, le 0.5.. -> 1.5; rank 1.425 in (0.25, 0.5]
    assert row.ttft_p95_seconds == pytest.approx(0.25 + 0.25 * (1.425 - 1) / 0.5)
    assert row.load == pytest.approx(1.5 / 4)
    assert row.actual_usd_per_million_output_tokens == pytest.approx(2.5 / (12 * 3600) * 1e6)


def test_prometheus_query_results_become_samples_named_by_their_query():
    result = [{"metric": {**GPU, "code": "200", "instance": "x", "job": "moxin-router"}, "value": [1.0, "5.2"]}]
    (sample,) = from_query("moxin_router_requests_total", result)
    assert sample.name == "moxin_router_requests_total" and sample.value == 5.2 and sample.label("code") == "200"
    gauge = [{"metric": {"__name__": "moxin_replicas_ready", **GPU}, "value": [1.0, "1"]}]
    assert from_query("", gauge)[0].name == "moxin_replicas_ready"
    (view,) = top(from_query("", gauge), [sample])
    assert view.total.requests_per_second == 5.2 and view.total.replicas_ready == 1
