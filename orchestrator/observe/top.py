"""``moxin top``'s numbers, pure: from the gauges of a moment and the per-second rates of the counters over a
window, one row per deployment and one per assignment (a variant on a pool) under it.

Where it sits: the CLI gets the samples either from Prometheus's query API (``rate()`` over a window) or by reading
the router's and the controller's /metrics twice (``parse`` each, then ``rates``); both end in ``top``, so the two
sources give the same numbers for the same traffic. The series read are the schema's (``spec/metrics.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.spec.metrics import CONTROLLER, ROUTER
from orchestrator.spec.plan import METRIC_LABELS

QUANTILE = 0.95
SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MILLION = 1e6

RATE_SERIES = (ROUTER["requests"].series, ROUTER["generation_tokens"].series, ROUTER["ttft"].bucket,
               ROUTER["tpot"].bucket)
"""Counters ``top`` reads as per-second rates."""
GAUGE_SERIES = (ROUTER["in_flight"].series, CONTROLLER["desired"].series, CONTROLLER["ready"].series,
                CONTROLLER["capacity"].series, CONTROLLER["output_tokens"].series, CONTROLLER["cost"].series,
                CONTROLLER["slo_target"].series)
"""Gauges ``top`` reads as they are now."""
_ASSIGNMENT = tuple(k for k in METRIC_LABELS if k != "deployment")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    """Sorted (label, value) pairs."""
    value: float

    @staticmethod
    def of(name: str, labels: Mapping[str, str], value: float) -> Sample:
        return Sample(name, tuple(sorted(labels.items())), float(value))

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


@dataclass(frozen=True)
class Snapshot:
    """The samples of the moxin endpoints read at one moment; ``time_s`` on any clock two snapshots share."""

    time_s: float
    samples: tuple[Sample, ...]


def parse(text: str, instance: str) -> list[Sample]:
    """The samples of one /metrics page (Prometheus text format) that ``top`` reads, labelled ``instance`` as
    Prometheus labels a target: two routers export the same series, and their counters must stay apart."""
    wanted = set(RATE_SERIES) | set(GAUGE_SERIES)
    return [Sample.of(s.name, {**s.labels, "instance": instance}, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples if s.name in wanted]


def from_query(name: str, result: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """Samples from the ``data.result`` of a Prometheus instant query that returned a vector: ``name`` names them
    where the query dropped ``__name__`` (``rate(x[1m])`` does); a series' own ``__name__`` wins."""
    out = []
    for series in result:
        labels = dict(series["metric"])
        out.append(Sample.of(labels.pop("__name__", name), labels, float(series["value"][1])))
    return out


def rates(before: Snapshot, after: Snapshot) -> list[Sample]:
    """Per-second increase of every counter from ``before`` to ``after``. A counter that went down was reset (its
    process restarted) and counts from zero, as Prometheus's ``rate`` does; one that is new counts from zero too:
    a labelled series appears on its first increment, which happened within the window."""
    seconds = after.time_s - before.time_s
    if seconds <= 0:
        raise ValueError(f"the second snapshot must be later than the first ({seconds} s apart)")
    old = {(s.name, s.labels): s.value for s in before.samples if s.name in RATE_SERIES}
    out = []
    for s in after.samples:
        if s.name in RATE_SERIES:
            start = old.get((s.name, s.labels), 0.0)
            increase = s.value - start if s.value >= start else s.value
            out.append(Sample(s.name, s.labels, increase / seconds))
    return out


def prometheus_queries(window_s: float) -> dict[str, str]:
    """The PromQL of one frame, keyed by the sample name its results get (``from_query``): each counter's
    ``rate`` over the window, and every gauge at once (its results keep their names)."""
    window = f"{max(1, round(window_s))}s"
    return {**{name: f"rate({name}[{window}])" for name in RATE_SERIES},
            "": "{__name__=~\"" + "|".join(GAUGE_SERIES) + "\"}"}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts (or rates) keyed by upper bound ``le``:
    linear within the bucket the rank falls in (from 0 in the first bucket), the highest finite bound when the rank
    falls in +Inf; counts made monotonic first, as Prometheus does (rates of buckets need not be). None without
    observations or without a +Inf bucket and one finite bound."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    cumulative, highest = [], 0.0
    for le in bounds:
        highest = max(highest, buckets[le])
        cumulative.append(highest)
    rank = q * cumulative[-1]
    if rank <= 0:
        return None
    lower, below = 0.0, 0.0
    for le, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            return lower if le == math.inf else lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass
class _Sums:
    """What a row adds up: over routers, replicas and (for a deployment) assignments."""

    requests: float = 0.0
    errors: float = 0.0
    tokens: float = 0.0
    in_flight: float = 0.0
    in_flight_by_replica: dict[str, float] = field(default_factory=dict)
    ttft: dict[float, float] = field(default_factory=dict)
    tpot: dict[float, float] = field(default_factory=dict)
    desired: float = 0.0
    ready: float = 0.0
    capacity: float = 0.0
    predicted_tokens: float = 0.0
    cost: float = 0.0

    def add(self, s: Sample) -> None:
        if s.name == ROUTER["requests"].series:
            self.requests += s.value
            self.errors += s.value if s.label("code").startswith("5") else 0.0
        elif s.name == ROUTER["generation_tokens"].series:
            self.tokens += s.value
        elif s.name in (ROUTER["ttft"].bucket, ROUTER["tpot"].bucket):
            buckets = self.ttft if s.name == ROUTER["ttft"].bucket else self.tpot
            le = float(s.label("le"))
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name == ROUTER["in_flight"].series:
            self.in_flight += s.value
            replica = s.label("replica")
            self.in_flight_by_replica[replica] = self.in_flight_by_replica.get(replica, 0.0) + s.value
        else:
            attr = _GAUGE_ATTR.get(s.name)
            if attr is not None:
                setattr(self, attr, getattr(self, attr) + s.value)


_GAUGE_ATTR = {CONTROLLER["desired"].series: "desired", CONTROLLER["ready"].series: "ready",
               CONTROLLER["capacity"].series: "capacity", CONTROLLER["output_tokens"].series: "predicted_tokens",
               CONTROLLER["cost"].series: "cost"}


def _per_million(usd_per_hour: float, tokens_per_second: float) -> float | None:
    if tokens_per_second <= 0:
        return None
    return usd_per_hour / (tokens_per_second * SECONDS_PER_HOUR) * TOKENS_PER_MILLION


@dataclass(frozen=True)
class Row:
    """One deployment (``labels`` holds only ``deployment``) or one of its assignments (every ``METRIC_LABELS``)."""

    labels: dict[str, str]
    replicas_ready: int
    replicas_desired: int
    requests_per_second: float
    """Every request the routers answered, whatever its status."""
    error_ratio: float | None
    """Server errors (status 5xx) per request; None without requests. 4xx and 499 (the client went away) are the
    client's."""
    in_flight: float
    in_flight_by_replica: dict[str, float]
    ttft_p95_seconds: float | None
    tpot_p95_seconds: float | None
    output_tokens_per_second: float
    capacity_requests_per_second: float
    """Planned: requests/s at the SLO of the replicas the plan asks for."""
    predicted_output_tokens_per_second: float
    cost_usd_per_hour: float
    """Planned cost of the replicas the plan asks for (paid whether they serve or idle)."""

    @property
    def load(self) -> float | None:
        """Actual requests/s over planned capacity; None where the plan gives no capacity."""
        return self.requests_per_second / self.capacity_requests_per_second if self.capacity_requests_per_second \
            else None

    @property
    def predicted_usd_per_million_output_tokens(self) -> float | None:
        return _per_million(self.cost_usd_per_hour, self.predicted_output_tokens_per_second)

    @property
    def actual_usd_per_million_output_tokens(self) -> float | None:
        """The cost per hour over the tokens generated now: None while nothing is generated."""
        return _per_million(self.cost_usd_per_hour, self.output_tokens_per_second)

    def to_json(self) -> dict[str, Any]:
        return {**self.labels, "replicasReady": self.replicas_ready, "replicasDesired": self.replicas_desired,
                "requestsPerSecond": self.requests_per_second, "errorRatio": self.error_ratio,
                "inFlight": self.in_flight, "inFlightByReplica": self.in_flight_by_replica,
                "ttftP95Seconds": self.ttft_p95_seconds, "tpotP95Seconds": self.tpot_p95_seconds,
                "outputTokensPerSecond": self.output_tokens_per_second,
                "capacityRequestsPerSecond": self.capacity_requests_per_second, "load": self.load,
                "predictedOutputTokensPerSecond": self.predicted_output_tokens_per_second,
                "costUsdPerHour": self.cost_usd_per_hour,
                "predictedUsdPerMillionOutputTokens": self.predicted_usd_per_million_output_tokens,
                "actualUsdPerMillionOutputTokens": self.actual_usd_per_million_output_tokens}


def _row(labels: dict[str, str], s: _Sums) -> Row:
    return Row(labels=labels, replicas_ready=round(s.ready), replicas_desired=round(s.desired),
               requests_per_second=s.requests, error_ratio=s.errors / s.requests if s.requests > 0 else None,
               in_flight=s.in_flight, in_flight_by_replica=dict(sorted(s.in_flight_by_replica.items())),
               ttft_p95_seconds=histogram_quantile(QUANTILE, s.ttft),
               tpot_p95_seconds=histogram_quantile(QUANTILE, s.tpot), output_tokens_per_second=s.tokens,
               capacity_requests_per_second=s.capacity, predicted_output_tokens_per_second=s.predicted_tokens,
               cost_usd_per_hour=s.cost)


@dataclass(frozen=True)
class DeploymentView:
    total: Row
    assignments: tuple[Row, ...]
    slo_seconds: dict[str, float]
    """The deployment's latency targets by objective (``ttft_p95``, ``tpot_p95``), as the controller exports them."""

    def to_json(self) -> dict[str, Any]:
        return {**self.total.to_json(), "sloSeconds": self.slo_seconds,
                "assignments": [a.to_json() for a in self.assignments]}


def top(gauges: Iterable[Sample], counter_rates: Iterable[Sample]) -> list[DeploymentView]:
    """Rows from the gauges of a moment and the per-second rates of the counters (``rates``, or Prometheus's
    ``rate``); other series in either are left out (a snapshot's raw counters among its gauges). Series are
    summed over every label outside ``METRIC_LABELS`` (router instance, replica, code); a series without a pool (a
    503 for a deployment with no ready replica) counts toward its deployment only."""
    deployments: dict[str, _Sums] = {}
    assignments: dict[str, dict[tuple[str, ...], _Sums]] = {}
    slo: dict[str, dict[str, float]] = {}
    samples = [*(g for g in gauges if g.name in GAUGE_SERIES), *(r for r in counter_rates if r.name in RATE_SERIES)]
    for s in samples:
        name = s.label("deployment")
        if not name or math.isnan(s.value):
            continue
        if s.name == CONTROLLER["slo_target"].series:
            slo.setdefault(name, {})[s.label("objective")] = s.value
            continue
        deployments.setdefault(name, _Sums()).add(s)
        key = tuple(s.label(k) for k in _ASSIGNMENT)
        if s.label("pool"):
            assignments.setdefault(name, {}).setdefault(key, _Sums()).add(s)
    return [DeploymentView(_row({"deployment": d}, sums),
                           tuple(_row({"deployment": d, **dict(zip(_ASSIGNMENT, key, strict=True))}, a)
                                 for key, a in sorted(assignments.get(d, {}).items())),
                           dict(sorted(slo.get(d, {}).items())))
            for d, sums in sorted(deployments.items())]


def between(before: Snapshot, after: Snapshot) -> list[DeploymentView]:
    """``top`` from two readings of the /metrics endpoints: gauges as of ``after``, rates over the gap."""
    return top(after.samples, rates(before, after))
