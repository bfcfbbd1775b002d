"""Gate evaluation and the PromQL of each gate by side."""

from __future__ import annotations

import pytest

from orchestrator.rollout.gates import Readings, Side, SideReading, evaluate, promql, requests_query
from orchestrator.rollout.quality import Generation, compare
from orchestrator.spec.rollout import Gate, Quality
from tests.promtool import promql_cases


def _gate(metric: str = "ttftP95", min_requests: int = 20, **threshold: float) -> Gate:
    return Gate.model_validate({"metric": metric, "threshold": threshold, "minRequests": min_requests})


def test_absolute_max_passes_at_the_bound_and_fails_above() -> None:
    gate = _gate(max=2)
    at = evaluate(gate, Readings(SideReading(50, 2.0)))
    assert (at.outcome, at.limit, at.threshold, at.reason) == ("pass", 2, "max 2", "ttftP95 2 <= 2")
    above = evaluate(gate, Readings(SideReading(50, 2.5)))
    assert (above.outcome, above.canary, above.reason) == ("fail", 2.5, "ttftP95 2.5 > 2")


def test_ratio_to_stable_is_held_to_the_stable_value_times_the_ratio() -> None:
    gate = _gate(maxRatioToStable=1.2)
    ok = evaluate(gate, Readings(SideReading(40, 0.47), SideReading(400, 0.4)))  # limit 0.48
    assert ok.outcome == "pass" and ok.limit == pytest.approx(0.48) and ok.stable == 0.4
    bad = evaluate(gate, Readings(SideReading(40, 0.49), SideReading(400, 0.4)))
    assert bad.outcome == "fail" and bad.reason == "ttftP95 0.49 > 0.48"
    tokens = _gate("outputTokensPerSecondPerReplica", minRatioToStable=0.9)
    slow = evaluate(tokens, Readings(SideReading(40, 80), SideReading(400, 100)))  # limit 90
    assert (slow.outcome, slow.limit) == ("fail", 90)


def test_too_little_traffic_or_no_data_is_inconclusive_on_either_side() -> None:
    gate = _gate(maxRatioToStable=1.2, min_requests=20)
    few = evaluate(gate, Readings(SideReading(19, 0.1), SideReading(400, 0.4)))
    assert few.outcome == "inconclusive" and "19 requests" in few.reason and few.limit is None
    assert evaluate(gate, Readings(SideReading(20, None), SideReading(400, 0.4))).outcome == "inconclusive"
    stable_few = evaluate(gate, Readings(SideReading(20, 0.1), SideReading(3, 0.4)))
    assert stable_few.outcome == "inconclusive" and "stable side" in stable_few.reason
    assert evaluate(gate, Readings(SideReading(20, 0.1))).outcome == "inconclusive"
    # an absolute threshold needs no stable side
    assert evaluate(_gate(max=1), Readings(SideReading(20, 0.1))).outcome == "pass"


def test_error_ratio_min_requests_zero_judges_even_one_request() -> None:
    gate = _gate("errorRatio", min_requests=0, max=0.01)
    assert evaluate(gate, Readings(SideReading(1, 1.0))).outcome == "fail"


def test_quality_gate_reads_the_comparison() -> None:
    gate = Gate(metric="quality")
    same = [Generation("a"), Generation("b")]
    passed = evaluate(gate, compare(["p", "q"], same, same, Quality(min_exact_match=0.9)))
    assert (passed.outcome, passed.canary, passed.limit) == ("pass", 1.0, 0.9)
    assert passed.details["exact"] == 2 and passed.details["mean_kl"] is None  # the status shows the comparison
    failed = evaluate(gate, compare(["p", "q"], same, [Generation("a"), Generation("c")], Quality()))
    assert failed.outcome == "fail" and failed.canary == 0.5 and "exact match 0.5 < 0.9" in failed.reason
    none = evaluate(gate, compare(["p"], [None], [None], Quality()))
    assert none.outcome == "inconclusive"


SIDE = Side("chat", "fp8", "h100-a")


def test_promql_selects_one_side_with_the_schema_names() -> None:
    sel = '{deployment="chat",variant="fp8",pool="h100-a"}'
    assert promql("ttftP95", SIDE, 60) == (
        f"histogram_quantile(0.95, sum by (le) (rate(moxin_request_ttft_seconds_bucket{sel}[60s])))")
    assert promql("tpotP95", SIDE, 30).startswith("histogram_quantile(0.95, sum by (le) "
                                                  "(rate(moxin_request_tpot_seconds_bucket{")
    answers = f"sum (rate(moxin_router_requests_total{sel}[120s]))"
    assert promql("errorRatio", SIDE, 120) == (  # 0 where the side answered without a 5xx, none without requests
        '(sum (rate(moxin_router_requests_total{deployment="chat",variant="fp8",pool="h100-a",code=~"5.."}[120s])) '
        f"or 0 * {answers}) / ({answers} > 0)")
    assert promql("outputTokensPerSecondPerReplica", SIDE, 60) == (
        f"sum (rate(moxin_generation_tokens_total{sel}[60s])) / (sum (moxin_replicas_ready{sel}) > 0)")
    assert promql("quality", SIDE, 60) is None
    assert requests_query(SIDE, 90) == f"sum (increase(moxin_router_requests_total{sel}[90s]))"
    assert requests_query(SIDE, 0.2).endswith("[1s]))")  # a window of whole seconds, at least one


def test_label_values_are_escaped() -> None:
    assert 'deployment="a\\"b\\nc"' in promql("e2eP95", Side('a"b\nc', "v", "p"), 60)


def test_side_queries_as_prometheus_evaluates_them(tmp_path) -> None:
    """promtool over a canary that answers without a 5xx (error ratio 0, not "no data"), a stable side with 10% 5xx,
    and a side without a ready replica (no tokens per replica rather than +Inf)."""
    canary, stable, idle = SIDE, Side("chat", "int4", "h100-a"), Side("chat", "bf16", "h100-a")

    def series(name: str, side: Side, values: str, **extra: str) -> dict[str, str]:
        labels = {**side.labels(), **extra}
        return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}

    input_series = [
        series("moxin_router_requests_total", canary, "0+60x10", code="200"),  # 1/s
        series("moxin_router_requests_total", stable, "0+540x10", code="200"),
        series("moxin_router_requests_total", stable, "0+60x10", code="503"),
        series("moxin_generation_tokens_total", canary, "0+6000x10"),  # 100 tokens/s
        series("moxin_replicas_ready", canary, "2x10"),
        series("moxin_generation_tokens_total", idle, "0+6000x10"),
        series("moxin_replicas_ready", idle, "0x10"),
        series("moxin_request_ttft_seconds_bucket", canary, "0+60x10", le="0.5"),
        series("moxin_request_ttft_seconds_bucket", canary, "0+60x10", le="+Inf"),
    ]
    cases = [(promql("errorRatio", canary, 300), [0]), (promql("errorRatio", stable, 300), [0.1]),
             (promql("outputTokensPerSecondPerReplica", canary, 300), [50]),
             (promql("outputTokensPerSecondPerReplica", idle, 300), []),
             (promql("ttftP95", canary, 300), [0.475]),  # 95% of the way through the 0-0.5 s bucket
             (requests_query(canary, 300), [300])]
    promql_cases(tmp_path, input_series, [(expr, [("{}", v) for v in values]) for expr, values in cases])
