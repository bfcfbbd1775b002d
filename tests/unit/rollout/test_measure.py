"""Gate readings from two /metrics readings and from Prometheus query results (rollout.measure), on hand-worked
figures."""

from __future__ import annotations

import math

import pytest

from orchestrator.rollout.gates import Readings, Side, SideReading, promql, requests_query
from orchestrator.rollout.measure import from_prometheus, from_snapshots, snapshot

CANARY, STABLE = Side("d", "mlx-3bit", "mac"), Side("d", "bf16", "gpu")


def page(requests: dict[tuple[str, str], float], ttft: dict[str, dict[float, float]] | None = None,
         tokens: dict[str, float] | None = None) -> str:
    """A router /metrics page: requests by (variant, code), TTFT buckets (cumulative) and tokens by variant."""
    pool = {"mlx-3bit": "mac", "bf16": "gpu"}
    lines = []
    for (variant, code), v in requests.items():
        lines.append(f'moxin_router_requests_total{{deployment="d",variant="{variant}",pool="{pool[variant]}",'
                     f'code="{code}"}} {v}')
    for variant, buckets in (ttft or {}).items():
        for le, v in buckets.items():
            le_text = "+Inf" if le == math.inf else repr(le)
            lines.append(f'moxin_request_ttft_seconds_bucket{{deployment="d",variant="{variant}",'
                         f'pool="{pool[variant]}",le="{le_text}"}} {v}')
    for variant, v in (tokens or {}).items():
        lines.append(f'moxin_generation_tokens_total{{deployment="d",variant="{variant}",pool="{pool[variant]}"}} {v}')
    return "# TYPE moxin_router_requests counter\n# TYPE moxin_request_ttft_seconds histogram\n" \
           "# TYPE moxin_generation_tokens counter\n" + "\n".join(lines) + "\n"


def test_error_ratio_per_side_from_the_increase_between_two_readings():
    before = snapshot([("r:1", page({("mlx-3bit", "200"): 10, ("bf16", "200"): 100}))], 0.0)
    after = snapshot([("r:1", page({("mlx-3bit", "200"): 28, ("mlx-3bit", "503"): 2, ("bf16", "200"): 180}))], 60.0)
    got = from_snapshots(before, after, "errorRatio", CANARY, STABLE, lambda s: 1)
    assert got == Readings(SideReading(20, 0.1), SideReading(80, 0.0))


def test_a_side_without_requests_reads_as_no_data_and_two_routers_add_up():
    before = snapshot([("r:1", page({("bf16", "200"): 5})), ("r:2", page({("bf16", "200"): 7}))], 0.0)
    after = snapshot([("r:1", page({("bf16", "200"): 6})), ("r:2", page({("bf16", "200"): 9}))], 10.0)
    got = from_snapshots(before, after, "errorRatio", CANARY, STABLE, lambda s: 1)
    assert got == Readings(SideReading(0, None), SideReading(3, 0.0))


def test_latency_p95_from_bucket_increases_and_tokens_per_replica():
    before = snapshot([("r:1", page({("mlx-3bit", "200"): 0},
                                    {"mlx-3bit": {0.1: 0, 1.0: 0, math.inf: 0}}, {"mlx-3bit": 0}))], 0.0)
    # 20 requests: 10 under 0.1 s, 10 between 0.1 and 1 s. p95 rank 19: 0.1 + 0.9 * 9/10 = 0.91
    after = snapshot([("r:1", page({("mlx-3bit", "200"): 20},
                                   {"mlx-3bit": {0.1: 10, 1.0: 20, math.inf: 20}}, {"mlx-3bit": 600}))], 10.0)
    got = from_snapshots(before, after, "ttftP95", CANARY, None, lambda s: 1)
    assert got.canary.requests == 20 and got.canary.value == pytest.approx(0.91) and got.stable is None
    tokens = from_snapshots(before, after, "outputTokensPerSecondPerReplica", CANARY, None, lambda s: 2)
    assert tokens.canary.value == pytest.approx(30.0)  # 600 tokens / 10 s / 2 replicas


def test_a_counter_reset_counts_from_zero_and_readings_must_be_apart():
    before = snapshot([("r:1", page({("mlx-3bit", "200"): 50}))], 0.0)
    after = snapshot([("r:1", page({("mlx-3bit", "200"): 4}))], 5.0)
    assert from_snapshots(before, after, "errorRatio", CANARY, None, lambda s: 1).canary == SideReading(4, 0.0)
    with pytest.raises(ValueError, match="later"):
        from_snapshots(after, before, "errorRatio", CANARY, None, lambda s: 1)


def test_prometheus_readings_ask_the_gates_own_queries():
    answers = {requests_query(CANARY, 120): 42.4, promql("errorRatio", CANARY, 120): 0.02,
               requests_query(STABLE, 120): 300.0, promql("errorRatio", STABLE, 120): None}
    asked = []

    def query(q: str) -> float | None:
        asked.append(q)
        return answers[q]

    got = from_prometheus(query, "errorRatio", CANARY, STABLE, 120)
    assert got == Readings(SideReading(42, 0.02), SideReading(300, None)) and set(asked) == set(answers)
