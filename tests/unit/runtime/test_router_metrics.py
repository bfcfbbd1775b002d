"""The router's lock-free collectors (``metrics.Unlocked``) export what prometheus-client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.runtime.metrics import RouterMetrics, _collector, _Collectors
from orchestrator.spec import metrics as schema
from orchestrator.spec.plan import METRIC_LABELS

LABELS = {k: f"v-{k}" for k in METRIC_LABELS}


class _Reference(_Collectors):
    """The same schema on prometheus-client's locked Counter, Gauge and Histogram (``_Collectors``' default)."""

    TABLE = schema.ROUTER


def _updates(m) -> None:
    other = {**LABELS, "deployment": "b"}
    for status in ("200", "200", "503", "429"):
        m.requests.labels(**LABELS, code=status).inc()
    m.requests.labels(*other.values(), "200").inc()  # positional, as prometheus-client takes them
    m.retries.labels(**LABELS).inc()
    m.in_flight.labels(**LABELS, replica="r1").inc()
    m.in_flight.labels(**LABELS, replica="r1").inc()
    m.in_flight.labels(**LABELS, replica="r1").dec()
    m.circuit_open.labels(**LABELS, replica="r2").set(1)
    m.circuit_open.labels(**LABELS, replica="r2").set(0)
    m.prompt_tokens.labels(**LABELS).inc(12)
    m.generation_tokens.labels(**LABELS).inc(3.5)
    bounds = [b for b in schema.ROUTER["e2e"].buckets if b != float("inf")]
    # on a bound (le: counted in it), between bounds, under the first, over the last
    for value in (bounds[0], bounds[2], (bounds[3] + bounds[4]) / 2, 0.0, bounds[-1] * 10):
        m.e2e.labels(**LABELS).observe(value)
        m.ttft.labels(**other).observe(value / 7)
    m.tpot.labels(**LABELS).observe(0.02)
    m.key_requests.labels(key="team-a", code="200").inc()


def _text(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_the_exposition_is_prometheus_clients():
    fast, reference = RouterMetrics(), _Reference()
    _updates(fast)
    _updates(reference)
    got, want = _text(fast.registry), _text(reference.registry)
    assert got == want
    assert any(line.startswith("moxin_request_e2e_seconds_bucket") and 'le="+Inf"' in line and line.endswith(" 5.0")
               for line in got)


def test_no_created_series():
    """Unlike prometheus-client's, no ``_created`` sample per child: half the router's series for nothing."""
    fast = RouterMetrics()
    fast.requests.labels(**LABELS, code="200").inc()
    assert not [line for line in generate_latest(fast.registry).decode().splitlines() if "_created" in line]


@pytest.mark.parametrize("call", [
    lambda m: m.requests.labels(**LABELS),  # code missing
    lambda m: m.requests.labels(**LABELS, code="200", replica="r"),  # one too many
    lambda m: m.retries.labels("only-one"),
])
def test_wrong_labels_are_refused(call):
    with pytest.raises(ValueError, match="label"):
        call(RouterMetrics())


def test_a_second_family_of_the_same_name_is_refused():
    fast = RouterMetrics()
    with pytest.raises(ValueError, match="Duplicated"):
        _collector(schema.ROUTER["requests"], fast.registry)
