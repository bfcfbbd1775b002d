"""The runtime's prometheus-client collectors, built from the one metric schema (``spec/metrics.py``): the router
measures requests (the only source for mlx-lm replicas, which export nothing); the controller exports the plan and
the fleet's state.

Every replica-level series carries the same labels (``spec.plan.METRIC_LABELS``); Prometheus targets for engines that
serve their own /metrics (vLLM) get those labels too, through the file_sd list the controller writes.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            setattr(self, attr, _collector(m, self.registry))


class RouterMetrics(_Collectors):
    TABLE = schema.ROUTER


class ControllerMetrics(_Collectors):
    TABLE = schema.CONTROLLER
