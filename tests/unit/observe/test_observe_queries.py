"""observe/queries.py: the PromQL the dashboards, alerts, `moxin top` and the rollout gates share. The strings are
checked where their shape matters; what they compute is checked by Prometheus's own evaluator (`promtool test
rules`) over made-up series: a vLLM renamed between versions, a plan without a speed, replicas sharing traffic."""

from __future__ import annotations

from orchestrator.observe import queries as q
from orchestrator.observe.queries import ASSIGNMENT, NO_FILTER, Filter
from orchestrator.spec.metrics import CONTROLLER, ROUTER, VLLM
from tests.promtool import promql_cases


def test_a_filter_matches_only_labels_the_series_has():
    v = Filter.variables()
    assert v.selector("moxin_slo_target_seconds", CONTROLLER["slo_target"].labels) == \
        'moxin_slo_target_seconds{deployment=~"$deployment"}'
    assert v.selector("moxin_pool_devices", CONTROLLER["pool_devices"].labels) == \
        'moxin_pool_devices{pool=~"$pool",hardware=~"$hardware"}'
    assert q.series(CONTROLLER["reconcile"], v, CONTROLLER["reconcile"].count) == \
        "moxin_controller_reconcile_duration_seconds_count{}"


def test_exact_filters_escape_their_values():
    assert Filter.equal(deployment='a"b\\c').selector("m", ("deployment",)) == 'm{deployment="a\\"b\\\\c"}'


def test_a_target_label_filter_scopes_every_selector_whatever_its_schema_labels():
    ns = Filter.equal(namespace="ai")
    assert q.series(CONTROLLER["reconcile"], ns, CONTROLLER["reconcile"].count) == \
        'moxin_controller_reconcile_duration_seconds_count{namespace="ai"}'
    assert q.engine_gauge(VLLM["waiting"], ns) == \
        '(vllm:num_requests_waiting{namespace="ai"} or vllm_num_requests_waiting{namespace="ai"})'
    assert q.up("engine", ns) == 'up{namespace="ai",job="moxin-engine"}'
    assert q.up("router") == 'up{job="moxin-router"}'


def test_binary_matching_increase_and_literals():
    assert q.on(("namespace", "deployment")) == "on(namespace, deployment)"
    assert q.on(("deployment",), group_left=()) == "on(deployment) group_left()"
    assert q.increase(ROUTER["requests"], NO_FILTER, "90s") == "increase(moxin_router_requests_total{}[90s])"
    assert (q.number(0.95), q.number(14.4 * 0.01), q.number(1e-9)) == ("0.95", "0.144", "1e-09")
    assert (q.duration(59.6), q.duration(0.2)) == ("60s", "1s")


def test_the_rate_window_is_a_parameter():
    assert q.rate(ROUTER["requests"], Filter.equal(deployment="chat"), "5m") == \
        'rate(moxin_router_requests_total{deployment="chat"}[5m])'
    assert q.rate(ROUTER["requests"]) == "rate(moxin_router_requests_total{}[$__rate_interval])"


def test_a_histogram_quantile_sums_buckets_by_le_and_the_grouping():
    assert q.quantile(0.95, ROUTER["ttft"], ("deployment",), NO_FILTER, "1m") == \
        "histogram_quantile(0.95, sum by (le, deployment) (rate(moxin_request_ttft_seconds_bucket{}[1m])))"


def test_a_renamed_vllm_series_is_queried_under_every_name_current_first_then_escaped():
    assert q.engine_gauge(VLLM["kv_usage"], Filter.equal(pool="a")) == \
        '(vllm:kv_cache_usage_perc{pool="a"} or vllm:gpu_cache_usage_perc{pool="a"} ' \
        'or vllm_kv_cache_usage_perc{pool="a"} or vllm_gpu_cache_usage_perc{pool="a"})'
    assert q.engine_gauge(VLLM["running"]) == "(vllm:num_requests_running{} or vllm_num_requests_running{})"
    assert q.engine_rate(VLLM["itl"], NO_FILTER, "1m", "_bucket").startswith(
        "(rate(vllm:inter_token_latency_seconds_bucket{}[1m]) or rate(vllm:time_per_output_token_seconds_bucket{}[1m]) "
        "or rate(vllm_inter_token_latency_seconds_bucket{}[1m]) or ")


def test_known_series_are_the_sample_names_of_the_schema():
    known = q.known_series()
    assert known["moxin_router_requests_total"] == ROUTER["requests"].labels
    assert "moxin_router_requests" not in known  # a counter is selected by its _total samples
    assert {"moxin_request_ttft_seconds_bucket", "moxin_request_ttft_seconds_count"} <= known.keys()
    assert {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds_bucket"} <= known.keys()
    assert {"vllm_kv_cache_usage_perc", "vllm_num_requests_running"} <= known.keys()


def test_substitute_makes_a_plain_expression():
    expr = 'rate(m{pool=~"$pool",engine=~"$engine"}[$__rate_interval])'
    assert q.substitute(expr, "5m", {"pool": "a|b"}) == 'rate(m{pool=~"a|b",engine=~".*"}[5m])'


# ---------------------------------------------------------------------------------- evaluated by Prometheus

LABELS = {"model": "m", "variant": "fp8", "hardware": "h100", "engine": "vllm", "emulated": "false"}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**LABELS, **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items())) + "}",
            "values": values}




def test_rename_robust_series_prefer_the_current_name_and_fall_back_to_the_old(tmp_path):
    by = ("pool",)
    kv = f"sum by (pool) ({q.engine_gauge(VLLM['kv_usage'])})"
    series = [
        _series("vllm:kv_cache_usage_perc", "0.5x10", deployment="d", pool="new", instance="a"),
        _series("vllm:gpu_cache_usage_perc", "0.25x10", deployment="d", pool="old", instance="b"),
        # an engine that exports both names (hidden metrics re-enabled): counted once, under the current name
        _series("vllm:kv_cache_usage_perc", "0.75x10", deployment="d", pool="both", instance="c"),
        _series("vllm:gpu_cache_usage_perc", "0.75x10", deployment="d", pool="both", instance="c"),
        # a Prometheus 2.x scrape of prometheus_client 0.26 (client_python#1177): the colon escaped
        _series("vllm_kv_cache_usage_perc", "0.125x10", deployment="d", pool="escaped", instance="d"),
        _series("vllm:prefix_cache_queries_total", "0+60x20", deployment="d", pool="new", instance="a"),
        _series("vllm:prefix_cache_hits_total", "0+15x20", deployment="d", pool="new", instance="a"),
        _series("vllm:gpu_prefix_cache_queries_total", "0+60x20", deployment="d", pool="old", instance="b"),
        _series("vllm:gpu_prefix_cache_hits_total", "0+30x20", deployment="d", pool="old", instance="b"),
    ]
    promql_cases(tmp_path, series, [
        (kv, [('{pool="new"}', 0.5), ('{pool="old"}', 0.25), ('{pool="both"}', 0.75), ('{pool="escaped"}', 0.125)]),
        (q.prefix_cache_hit_ratio(by, NO_FILTER, "5m"), [('{pool="new"}', 0.25), ('{pool="old"}', 0.5)]),
    ])


def test_cost_per_million_tokens_predicted_and_actual(tmp_path):
    series = [
        _series("moxin_predicted_cost_usd_per_hour", "2x20", deployment="d", pool="p"),
        _series("moxin_predicted_output_tokens_per_second", "100x20", deployment="d", pool="p"),
        _series("moxin_generation_tokens_total", "0+60x20", deployment="d", pool="p"),  # 1 token/s
        # an assignment on the same pool the plan has no speed for: its cost is not spread over the others' tokens
        _series("moxin_predicted_cost_usd_per_hour", "7x20", deployment="e", pool="p", variant="nospeed"),
        _series("moxin_predicted_output_tokens_per_second", "0x20", deployment="e", pool="p", variant="nospeed"),
        # a plan without a speed, and a pool that generates nothing: no sample rather than +Inf
        _series("moxin_predicted_cost_usd_per_hour", "3x20", deployment="d", pool="q"),
        _series("moxin_predicted_output_tokens_per_second", "0x20", deployment="d", pool="q"),
        _series("moxin_generation_tokens_total", "0x20", deployment="d", pool="q"),
    ]
    promql_cases(tmp_path, series, [
        (q.predicted_cost_per_million_tokens(("pool",)), [('{pool="p"}', 2 / 100 / 3600 * 1_000_000)]),
        # actual: everything the pool costs over what it generated
        (q.actual_cost_per_million_tokens(("pool",), NO_FILTER, "5m"), [('{pool="p"}', 9 / 1 / 3600 * 1_000_000)]),
    ])


def test_error_ratio_capacity_used_load_and_replica_share(tmp_path):
    series = [
        _series("moxin_router_requests_total", "0+540x20", deployment="d", pool="p", code="200"),  # 9/s
        _series("moxin_router_requests_total", "0+60x20", deployment="d", pool="p", code="503"),  # 1/s
        _series("moxin_router_requests_total", "0+60x20", deployment="e", pool="p", code="200"),
        _series("moxin_predicted_capacity_requests_per_second", "20x20", deployment="d", pool="p"),
        _series("moxin_requests_in_flight", "3x20", deployment="d", pool="p", replica="d-0"),
        _series("moxin_requests_in_flight", "5x20", deployment="d", pool="p", replica="d-1"),
        _series("moxin_planned_batch", "16x20", deployment="d", pool="p"),
    ]
    promql_cases(tmp_path, series, [
        (q.error_ratio(("deployment",), NO_FILTER, "5m"), [('{deployment="d"}', 0.1), ('{deployment="e"}', 0)]),
        (q.capacity_used(ASSIGNMENT, NO_FILTER, "5m"), [('{deployment="d",variant="fp8",pool="p"}', 0.5)]),
        (q.load_vs_planned_batch(("pool", "hardware", "engine")), [('{pool="p",hardware="h100",engine="vllm"}', 0.5)]),
        (q.in_flight_share(("deployment",), NO_FILTER, "5m"), [('{deployment="d",replica="d-0"}', 3 / 8),
                                              ('{deployment="d",replica="d-1"}', 5 / 8)]),
    ])


def test_a_quantile_over_an_old_vllm_histogram(tmp_path):
    name = "vllm:time_per_output_token_seconds_bucket"
    series = [_series(name, "0+60x20", deployment="d", pool="p", le="0.01"),
              _series(name, "0+60x20", deployment="d", pool="p", le="0.1"),
              _series(name, "0+60x20", deployment="d", pool="p", le="+Inf")]
    promql_cases(tmp_path, series, [
        (q.quantile(0.5, VLLM["itl"], ("deployment",), NO_FILTER, "5m"), [('{deployment="d"}', 0.005)]),
    ])
