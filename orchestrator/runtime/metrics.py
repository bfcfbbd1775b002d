"""One metrics schema for every engine (prometheus-client). The router measures requests (the only source for
mlx-lm replicas, which export nothing); the controller exports the fleet and replica gauges.

Every replica-level series carries the same labels (``spec.plan.METRIC_LABELS``); Prometheus targets for engines that
serve their own /metrics (vLLM) get those labels too, through the file_sd list the controller writes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orchestrator.spec.plan import METRIC_LABELS

# Buckets: CPU-emulated engines answer in tens of milliseconds, real ones in milliseconds to seconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("moxin_router_requests", "Requests answered by the router, by HTTP status code.",
                                [*METRIC_LABELS, "code"], registry=r)
        self.retries = Counter("moxin_router_retries", "Requests moved to another replica before any byte.",
                               METRIC_LABELS, registry=r)
        self.in_flight = Gauge("moxin_requests_in_flight", "Requests the router is waiting on, per replica.",
                               [*METRIC_LABELS, "replica"], registry=r)
        self.ttft = Histogram("moxin_request_ttft_seconds", "Time to first token (streamed requests).", METRIC_LABELS,
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("moxin_request_tpot_seconds", "Time per output token after the first.", METRIC_LABELS,
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("moxin_request_e2e_seconds", "End-to-end request latency.", METRIC_LABELS,
                             buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("moxin_prompt_tokens", "Prompt tokens of answered requests.", METRIC_LABELS,
                                     registry=r)
        self.generation_tokens = Counter("moxin_generation_tokens", "Generated tokens of answered requests.", METRIC_LABELS,
                                         registry=r)
        self.key_requests = Counter("moxin_router_key_requests",
                                    "/v1 requests by API key name (never the key) and HTTP status code; key=\"\" for "
                                    "requests without a valid key. Only when the router has API keys.",
                                    ["key", "code"], registry=r)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        pool = ["pool", "hardware", "emulated"]
        self.pool_devices = Gauge("moxin_pool_devices", "Devices in the pool.", pool, registry=r)
        self.pool_allocated = Gauge("moxin_pool_devices_allocated", "Devices the plan allocates in the pool.", pool,
                                    registry=r)
        self.desired = Gauge("moxin_replicas_desired", "Replicas the plan asks for.", METRIC_LABELS, registry=r)
        self.ready = Gauge("moxin_replicas_ready", "Replicas serving.", METRIC_LABELS, registry=r)
        self.restarts = Gauge("moxin_replica_restarts", "Engine restarts and replica replacements so far.", METRIC_LABELS,
                              registry=r)
        self.capacity = Gauge("moxin_predicted_capacity_requests_per_second",
                              "Planned capacity (requests/s at the SLO) of the replicas the plan asks for.", METRIC_LABELS,
                              registry=r)
        self.cost = Gauge("moxin_predicted_cost_usd_per_hour", "Planned cost of the replicas the plan asks for.",
                          METRIC_LABELS, registry=r)
        self.reconcile = Histogram("moxin_controller_reconcile_duration_seconds", "One reconcile loop.",
                                   buckets=RECONCILE_BUCKETS, registry=r)
        self.reconcile_errors = Counter("moxin_controller_reconcile_errors", "Reconcile steps that raised.",
                                        ["step"], registry=r)
        self.actions = Counter("moxin_controller_actions", "Actions the controller applied.", ["action"],
                               registry=r)
