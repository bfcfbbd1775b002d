"""Gate readings for the machine (``machine.Observation.readings``) from what the runtime can read: Prometheus's
query API (the gates' PromQL, ``gates.promql``) or two readings of the routers' /metrics over the gate's interval
(the same arithmetic ``moxin top`` uses: ``observe.top``). Pure: the caller passes the query function or the two
snapshots.

A side with no request in the window reads as no data (``SideReading(0, None)``): ``gates.evaluate`` calls that
inconclusive, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from orchestrator.observe import top
from orchestrator.rollout.gates import Readings, Side, SideReading, promql, requests_query
from orchestrator.spec import metrics

Query = Callable[[str], float | None]
"""An instant query -> the value of its single sample (None: no sample)."""

_QUANTILE = 0.95
_BUCKETS = {"ttftP95": metrics.ROUTER["ttft"].bucket, "tpotP95": metrics.ROUTER["tpot"].bucket,
            "e2eP95": metrics.ROUTER["e2e"].bucket}
_REQUESTS = metrics.ROUTER["requests"].series
_TOKENS = metrics.ROUTER["generation_tokens"].series
SERIES = (_REQUESTS, _TOKENS, *_BUCKETS.values())
"""The router series a /metrics reading keeps."""


def from_prometheus(query: Query, metric: str, canary: Side, stable: Side | None, window_s: float) -> Readings:
    """Each side's requests in the window and the metric's value, by the gates' own PromQL."""
    def side(s: Side) -> SideReading:
        requests = query(requests_query(s, window_s))
        q = promql(metric, s, window_s)
        value = None if q is None else query(q)
        n = 0 if requests is None or not math.isfinite(requests) else round(requests)
        return SideReading(n, value if value is not None and math.isfinite(value) else None)
    return Readings(side(canary), None if stable is None else side(stable))


def parse(text: str, instance: str) -> list[top.Sample]:
    """The samples of a router /metrics page the gates read."""
    from prometheus_client.parser import text_string_to_metric_families
    wanted = set(SERIES)
    return [top.Sample.of(s.name, {**s.labels, "instance": instance}, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples if s.name in wanted]


def _increase(before: top.Snapshot, after: top.Snapshot, name: str, side: Side) -> dict[tuple, float]:
    """Per series (labels), the increase of counter ``name`` restricted to ``side``; a reset counts from zero."""
    want = side.labels()
    old = {s.labels: s.value for s in before.samples if s.name == name}
    out = {}
    for s in after.samples:
        labels = dict(s.labels)
        if s.name == name and all(labels.get(k) == v for k, v in want.items()):
            start = old.get(s.labels, 0.0)
            out[s.labels] = s.value - start if s.value >= start else s.value
    return out


def _sum(increases: dict[tuple, float], keep: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    return sum(v for labels, v in increases.items() if keep(dict(labels)))


def from_snapshots(before: top.Snapshot, after: top.Snapshot, metric: str, canary: Side, stable: Side | None,
                   ready: Callable[[Side], int]) -> Readings:
    """The same readings from two /metrics snapshots (``ready``: a side's ready replicas, for the per-replica
    throughput)."""
    seconds = after.time_s - before.time_s
    if seconds <= 0:
        raise ValueError(f"the second reading must be later than the first ({seconds} s apart)")

    def side(s: Side) -> SideReading:
        requests = _increase(before, after, _REQUESTS, s)
        n = round(_sum(requests))
        if n == 0:
            return SideReading(0, None)
        if metric == "errorRatio":
            return SideReading(n, _sum(requests, lambda lab: lab.get("code", "").startswith("5")) / n)
        if metric in _BUCKETS:
            buckets: dict[float, float] = {}
            for labels, v in _increase(before, after, _BUCKETS[metric], s).items():
                le = float(dict(labels)["le"])
                buckets[le] = buckets.get(le, 0.0) + v
            return SideReading(n, top.histogram_quantile(_QUANTILE, buckets))
        if metric == "outputTokensPerSecondPerReplica":
            replicas = ready(s)
            tokens = _sum(_increase(before, after, _TOKENS, s))
            return SideReading(n, tokens / seconds / replicas if replicas else None)
        raise ValueError(f"gate metric {metric!r} is not read from /metrics")
    return Readings(side(canary), None if stable is None else side(stable))


def snapshot(pages: Iterable[tuple[str, str]], time_s: float) -> top.Snapshot:
    """A reading of several routers' /metrics pages: (instance, text) each."""
    samples: list[top.Sample] = []
    for instance, text in pages:
        samples += parse(text, instance)
    return top.Snapshot(time_s, tuple(samples))
