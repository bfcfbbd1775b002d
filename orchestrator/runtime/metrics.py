"""The runtime's prometheus-client collectors, built from the one metric schema (``spec/metrics.py``): the router
measures requests (the only source for mlx-lm replicas, which export nothing); the controller exports the plan and
the fleet's state.

Every replica-level series carries the same labels (``spec.plan.METRIC_LABELS``); Prometheus targets for engines that
serve their own /metrics (vLLM) get those labels too, through the file_sd list the controller writes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from orchestrator.spec import metrics as schema


def _collector(m: schema.Metric, registry: CollectorRegistry) -> Any:
    if m.kind == "counter":
        return Counter(m.name, m.help, list(m.labels), registry=registry)
    if m.kind == "gauge":
        return Gauge(m.name, m.help, list(m.labels), registry=registry)
    return Histogram(m.name, m.help, list(m.labels), buckets=m.buckets, registry=registry)


class _Collectors:
    """One attribute per entry of a schema table (``self.requests`` is ``ROUTER["requests"]``)."""

    TABLE: dict[str, schema.Metric] = {}

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        for attr, m in self.TABLE.items():
            setattr(self, attr, self.make(m, self.registry))

    make = staticmethod(_collector)


class _Value:
    """A counter's or gauge's child: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Buckets:
    """A histogram's child: a count per bucket (not cumulative: summed when exported) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: over every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in its bucket
        self.sum += value


class Unlocked:
    """A counter, gauge or histogram of the router's, with prometheus-client's ``labels(...)`` and its exposition
    (less the ``_created`` samples), kept in plain numbers: no lock and no checks per update. The router updates
    its metrics several times per request, all on one thread (its event loop, which also serves /metrics), where
    prometheus-client's lock per value and checks per call cost 8 us of the ~60 us of Python the data plane spends
    per request (issue #18, ``benchmarks/router.py --peer``); these cost 2. Not for metrics updated from several
    threads (the controller's keep prometheus-client's)."""

    def __init__(self, m: schema.Metric, registry: CollectorRegistry) -> None:
        self.m = m
        self.names = tuple(m.labels)
        self.bounds = tuple(b for b in m.buckets if b != float("inf"))
        self.les = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # the bounds as the exposition writes them
        self.children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: Any, **by_name: Any) -> Any:
        if by_name:
            if values or by_name.keys() != set(self.names):
                raise ValueError(f"{self.m.name}: labels {sorted(by_name)} given, {list(self.names)} expected")
            values = tuple(by_name[n] for n in self.names)
        elif len(values) != len(self.names):
            raise ValueError(f"{self.m.name}: {len(values)} label values given, {len(self.names)} expected")
        key = tuple(str(v) for v in values)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = _Buckets(self.bounds) if self.m.kind == "histogram" else _Value()
        return child

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Any:
        m = self.m
        if m.kind == "counter":
            return CounterMetricFamily(m.name, m.help, labels=self.names)
        if m.kind == "gauge":
            return GaugeMetricFamily(m.name, m.help, labels=self.names)
        return HistogramMetricFamily(m.name, m.help, labels=self.names)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, child in list(self.children.items()):
            if isinstance(child, _Buckets):
                total, cumulative = 0, []
                for le, n in zip(self.les, child.counts, strict=True):
                    total += n
                    cumulative.append((le, total))
                family.add_metric(list(key), cumulative, child.sum)
            else:
                family.add_metric(list(key), child.value)
        yield family


class RouterMetrics(_Collectors):
    TABLE = schema.ROUTER
    make = Unlocked


class ControllerMetrics(_Collectors):
    TABLE = schema.CONTROLLER
