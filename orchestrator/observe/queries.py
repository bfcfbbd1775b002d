"""PromQL built from the metric schema (``spec/metrics.py``): the one place a query over moxin's or vLLM's series
is spelled. The dashboards (``dashboards.py``) use it with Grafana's variables, the alert rules (``alerts.py``)
with a namespace and their own windows, the rollout gates (``rollout/gates.py``) with one side's labels.

Every builder takes a ``Filter`` (label matchers, applied only to the series that carry the label) and, where it
rates, a ``window`` (``$__rate_interval`` on a dashboard, ``5m`` in an alert, ``1m`` in a test). Aggregations
group by labels of ``METRIC_LABELS``, which the router's and the controller's series share, so a ratio of two
``sum by (...)`` joins one-to-one (the router's ``moxin_requests_in_flight`` has an extra ``replica`` label, summed
away). Ratios divide by ``(... > 0)``: no sample instead of NaN or +Inf where the denominator is 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.spec.metrics import CONTROLLER, ROUTER, SCRAPE_JOBS, VLLM, EngineMetric, Metric, Source
from orchestrator.spec.plan import METRIC_LABELS

RATE_INTERVAL = "$__rate_interval"
"""Grafana's rate window: at least four scrape intervals, so a rate never sees fewer than two samples."""

FILTER_LABELS = ("deployment", "pool", "hardware", "engine")
"""The labels a dashboard filters by (one template variable each)."""

ASSIGNMENT = ("deployment", "variant", "pool")
"""The labels that name one assignment of the plan (one model variant on one pool)."""

POOL_GROUP = ("pool", "hardware", "engine")

SECONDS_PER_HOUR = 3600
TOKENS_PER_COST_UNIT = 1_000_000
"""Costs per token are shown per million output tokens, as price lists quote them."""

TARGET_LABELS = ("namespace", "job", "instance")
"""Labels Prometheus gives every series from the target it scrapes it through (``namespace`` only on Kubernetes,
where it tells releases apart): a filter on them applies to every selector, whatever the schema says."""

VLLM_LABELS = METRIC_LABELS
"""vLLM's series get ``METRIC_LABELS`` from the Prometheus target they are scraped through."""

MLX_ENGINE = "mlx-lm"
"""The engine that exports no metrics of its own: the router's measurements are all there is."""


@dataclass(frozen=True)
class Filter:
    """Label matchers ``(label, op, value)``; ``op`` is one of ``=``, ``!=``, ``=~``, ``!~``. A selector applies a
    matcher only where the series has the label, so one filter serves series of different label sets."""

    matchers: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def variables(cls, labels: Iterable[str] = FILTER_LABELS) -> Filter:
        """``label=~"$label"`` for each label: a Grafana template variable per label (multi-value, "All" = ``.*``)."""
        return cls(tuple((name, "=~", f"${name}") for name in labels))

    @classmethod
    def equal(cls, **values: str) -> Filter:
        """Exact matches, e.g. ``Filter.equal(deployment="chat", variant="fp8")`` for a rollout gate."""
        return cls(tuple((name, "=", value) for name, value in values.items()))

    def and_(self, label: str, op: str, value: str) -> Filter:
        """This filter and one more matcher."""
        return Filter((*self.matchers, (label, op, value)))

    def selector(self, series: str, labels: Iterable[str]) -> str:
        """``series{...}`` with the matchers on labels the series has (``labels``, and ``TARGET_LABELS``); braces
        always, so a reader (and the dashboard linter) sees every selector's matchers."""
        have = {*labels, *TARGET_LABELS}
        inside = ",".join(f'{name}{op}"{_escape(value)}"' for name, op, value in self.matchers if name in have)
        return f"{series}{{{inside}}}"


NO_FILTER = Filter()
"""No matchers: every series."""


def _escape(value: str) -> str:
    """``value`` as the inside of a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _by(labels: Sequence[str]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def number(x: float) -> str:
    """A float as a PromQL literal (and as a threshold reads in prose): ``0.95``, ``14.4``, ``1e-09``."""
    return f"{x:g}"


def duration(seconds: float) -> str:
    """A window of ``seconds`` as a Prometheus duration, in whole seconds (at least 1)."""
    return f"{max(1, round(seconds))}s"


def aggregate(op: str, by: Sequence[str], expr: str) -> str:
    """``op by (by) (expr)``: ``op`` is ``sum``, ``avg``, ``max``... (no ``by`` for no labels)."""
    return f"{op}{_by(by)} ({expr})"


def sum_by(by: Sequence[str], expr: str) -> str:
    """``sum by (by) (expr)`` (plain ``sum`` for no labels)."""
    return aggregate("sum", by, expr)


def ratio(numerator: str, denominator: str) -> str:
    """``numerator / (denominator > 0)``: no sample where the denominator is 0."""
    return f"{numerator} / ({denominator} > 0)"


def on(labels: Sequence[str], group_left: Sequence[str] | None = None) -> str:
    """The matching of a binary operator (``a > on(x) b``, ``a and on(x) b``): only ``labels`` must be equal;
    ``group_left``: many samples of the left side to one of the right, copying these labels from the right."""
    many = "" if group_left is None else f" group_left({', '.join(group_left)})"
    return f"on({', '.join(labels)}){many}"


# --------------------------------------------------------------------------------------------- moxin series

def series(metric: Metric, flt: Filter = NO_FILTER, sample: str | None = None) -> str:
    """A selector of one moxin series (``sample``: the sample name, default ``metric.series``)."""
    return flt.selector(sample or metric.series, metric.labels)


def rate(metric: Metric, flt: Filter = NO_FILTER, window: str = RATE_INTERVAL, sample: str | None = None) -> str:
    """``rate(<counter>_total{...}[window])`` (or of ``sample``, e.g. a histogram's ``_count``)."""
    return f"rate({series(metric, flt, sample)}[{window}])"


def increase(metric: Metric, flt: Filter = NO_FILTER, window: str = RATE_INTERVAL, sample: str | None = None) -> str:
    """``increase(<counter>_total{...}[window])``: how much the counter grew over the window."""
    return f"increase({series(metric, flt, sample)}[{window}])"


def up(source: Source, flt: Filter = NO_FILTER) -> str:
    """``up{job="..."}`` of the targets of ``source`` (``SCRAPE_JOBS``): 0 where Prometheus's last scrape failed."""
    return flt.and_("job", "=", SCRAPE_JOBS[source]).selector("up", TARGET_LABELS)


def quantile(q: float, metric: Metric | EngineMetric, by: Sequence[str] = (), flt: Filter = NO_FILTER,
             window: str = RATE_INTERVAL) -> str:
    """``histogram_quantile(q, sum by (le, by) (rate(<m>_bucket{...}[window])))``; for a vLLM histogram over every
    name it has had (``or``)."""
    if isinstance(metric, EngineMetric):
        rates = engine_rate(metric, flt, window, suffix="_bucket")
    else:
        rates = rate(metric, flt, window, sample=metric.bucket)
    return f"histogram_quantile({number(q)}, {sum_by(('le', *by), rates)})"


def request_rate(by: Sequence[str] = (), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """Requests/s the router answered (every status code)."""
    return sum_by(by, rate(ROUTER["requests"], flt, window))


def error_ratio(by: Sequence[str] = (), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """The share of the router's answers that are 5xx (0-1): 0 where every answer succeeded (``or 0 * all``: a
    group without a 5xx series still gets a sample), none where there was no request."""
    errors = sum_by(by, rate(ROUTER["requests"], flt.and_("code", "=~", "5.."), window))
    answers = request_rate(by, flt, window)
    return ratio(f"({errors} or 0 * {answers})", answers)


def token_rate(kind: str, by: Sequence[str] = (), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """Tokens/s the router counted: ``kind`` is ``prompt_tokens`` or ``generation_tokens``."""
    return sum_by(by, rate(ROUTER[kind], flt, window))


def in_flight_share(by: Sequence[str] = ("deployment",), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL
                    ) -> str:
    """Each replica's share (0-1) of its group's in-flight requests, averaged over ``window``
    (``moxin_requests_in_flight`` is the router's only per-replica series; at one instant short requests leave it
    at 0 between them)."""
    averaged = f"avg_over_time({series(ROUTER['in_flight'], flt)}[{window}])"
    return f"{sum_by((*by, 'replica'), averaged)} / {on(by, group_left=())} ({sum_by(by, averaged)} > 0)"


# ------------------------------------------------------------------------------------------ plan vs measured

def predicted_cost_per_million_tokens(by: Sequence[str] = (), flt: Filter = NO_FILTER) -> str:
    """What the plan expects one million output tokens to cost (USD): planned cost/hour over planned decode
    tokens/s, of the assignments the plan has a speed for (the others' cost would count without their tokens); no
    sample where it has none."""
    tokens_series = series(CONTROLLER["output_tokens"], flt)
    cost = sum_by(by, f"{series(CONTROLLER['cost'], flt)} and ({tokens_series} > 0)")
    return _per_million_tokens(cost, sum_by(by, tokens_series))


def actual_cost_per_million_tokens(by: Sequence[str] = (), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """What one million output tokens cost as served (USD): planned cost/hour over the generated tokens/s the router
    measured; no sample while nothing is generated."""
    cost = sum_by(by, series(CONTROLLER["cost"], flt))
    return _per_million_tokens(cost, token_rate("generation_tokens", by, flt, window))


def _per_million_tokens(cost_per_hour: str, tokens_per_second: str) -> str:
    """USD/hour over tokens/s, as USD per ``TOKENS_PER_COST_UNIT`` tokens; no sample where no token is made."""
    return f"{ratio(cost_per_hour, tokens_per_second)} / {SECONDS_PER_HOUR} * {TOKENS_PER_COST_UNIT}"


def predicted_capacity(by: Sequence[str] = ASSIGNMENT, flt: Filter = NO_FILTER) -> str:
    """Requests/s the plan expects the replicas to serve within the SLO."""
    return sum_by(by, series(CONTROLLER["capacity"], flt))


def capacity_used(by: Sequence[str] = ASSIGNMENT, flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """Measured requests/s over the planned capacity (1 = as planned, above 1 = past what the SLO was planned
    for)."""
    return ratio(request_rate(by, flt, window), predicted_capacity(by, flt))


def load_vs_planned_batch(by: Sequence[str] = POOL_GROUP, flt: Filter = NO_FILTER) -> str:
    """Requests in flight over the concurrent sequences the plan assumed (1 = the planned batch is full)."""
    in_flight = sum_by(by, series(ROUTER["in_flight"], flt))
    return ratio(in_flight, sum_by(by, series(CONTROLLER["batch"], flt)))


def slo_target(objective: str, flt: Filter = NO_FILTER) -> str:
    """A deployment's latency target (seconds) for ``objective`` (one of ``SLO_OBJECTIVES``)."""
    return series(CONTROLLER["slo_target"], flt.and_("objective", "=", objective))


# ------------------------------------------------------------------------------------------------ vLLM series

def engine_names(metric: EngineMetric) -> tuple[str, ...]:
    """Every name a vLLM series may reach Prometheus under, preferred first: the schema's (current, then older),
    then the same with ``:`` escaped to ``_``. prometheus_client (0.26) escapes the colon in OpenMetrics sample
    lines when the scraper does not ask for UTF-8 names, as Prometheus 2.x does (prometheus/client_python#1177),
    so such a Prometheus stores ``vllm_num_requests_running``."""
    return (*metric.names, *(name.replace(":", "_") for name in metric.names))


def engine_series(metric: EngineMetric, flt: Filter = NO_FILTER, suffix: str = "") -> list[str]:
    """One selector per name of ``engine_names``, preferred first."""
    return [flt.selector(name + suffix, VLLM_LABELS) for name in engine_names(metric)]


def either(exprs: Sequence[str]) -> str:
    """``(a or b)``: a's samples, and b's where a has none with the same labels (``or`` ignores the metric name)."""
    return exprs[0] if len(exprs) == 1 else f"({' or '.join(exprs)})"


def engine_gauge(metric: EngineMetric, flt: Filter = NO_FILTER) -> str:
    """A vLLM gauge under whichever name the engine exports."""
    return either(engine_series(metric, flt))


def engine_rate(metric: EngineMetric, flt: Filter = NO_FILTER, window: str = RATE_INTERVAL, suffix: str = "") -> str:
    """The per-second rate of a vLLM counter (or a histogram's ``suffix`` series) under whichever name it has:
    ``or`` over rates, as ``rate`` takes a selector and not an ``or``."""
    return either([f"rate({s}[{window}])" for s in engine_series(metric, flt, suffix)])


def prefix_cache_hit_ratio(by: Sequence[str] = (), flt: Filter = NO_FILTER, window: str = RATE_INTERVAL) -> str:
    """The share (0-1) of prefix-cache lookups that hit; no sample without lookups."""
    hits = sum_by(by, engine_rate(VLLM["prefix_hits"], flt, window))
    return ratio(hits, sum_by(by, engine_rate(VLLM["prefix_queries"], flt, window)))


def known_series() -> dict[str, tuple[str, ...]]:
    """Every sample name the schema defines (moxin's and every vLLM name of ``engine_names``, histograms'
    ``_bucket``/``_count``/``_sum``), with the labels its series carry: what a query may select."""
    out: dict[str, tuple[str, ...]] = {}
    for m in (*ROUTER.values(), *CONTROLLER.values()):
        names = (m.bucket, m.count, m.sum) if m.kind == "histogram" else (m.series,)
        out.update(dict.fromkeys(names, m.labels))
    for e in VLLM.values():
        for name in engine_names(e):
            names = (f"{name}_bucket", f"{name}_count", f"{name}_sum") if e.kind == "histogram" else (name,)
            out.update(dict.fromkeys(names, VLLM_LABELS))
    return out


def substitute(expr: str, window: str = "1m", values: Mapping[str, str] | None = None) -> str:
    """``expr`` as Prometheus takes it outside Grafana: ``$__rate_interval`` -> ``window`` and each ``$label`` ->
    its value in ``values`` (default ``.*``, Grafana's "All")."""
    values = values or {}

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return window if name == "__rate_interval" else values.get(name, ".*")

    return re.sub(r"\$(\w+)", one, expr)
