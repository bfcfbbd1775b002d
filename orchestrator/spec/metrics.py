"""moxin's metric schema: every series the runtime exports, and the vLLM series it reads, in one place.

The runtime builds its prometheus-client collectors from it (``runtime/metrics.py``); the dashboards, the alert
rules, ``moxin top`` and the rollout gates build their queries from it (``orchestrator/observe``). A name, a label
or a unit changes here or nowhere.

Every replica-level moxin series carries ``METRIC_LABELS``; vLLM's own series get the same labels from the
Prometheus target they are scraped through (the file_sd list on Ray, the PodMonitor on Kubernetes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.spec.plan import METRIC_LABELS

Kind = Literal["counter", "gauge", "histogram"]
Source = Literal["router", "controller", "engine"]

# Buckets: CPU-emulated engines answer in tens of milliseconds, real ones in milliseconds to seconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)

POOL_LABELS = ("pool", "hardware", "emulated")
SLO_OBJECTIVES = ("ttft_p95", "tpot_p95")
"""The ``objective`` label values of ``moxin_slo_target_seconds``: a deployment's ``slo`` fields."""

SCRAPE_JOBS: dict[Source, str] = {"controller": "moxin-controller", "router": "moxin-router", "engine": "moxin-engine"}
"""The ``job`` label of each kind of Prometheus target: the controller's file_sd list writes them on Ray, the chart's
PodMonitor and ServiceMonitor relabel to them on Kubernetes, so ``up{job=...}`` selects the same targets on both."""


@dataclass(frozen=True)
class Metric:
    """One exported series family. ``name`` is the family name as prometheus-client takes it (a counter's
    samples end in ``_total``, a histogram's in ``_bucket``/``_sum``/``_count``)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    unit: str
    """Grafana's unit id for panels: ``s``, ``reqps``, ``short``, ``percentunit``, ``currencyUSD``, ``tokps``..."""
    source: Source
    buckets: tuple[float, ...] = ()

    @property
    def series(self) -> str:
        """The sample name a query selects (histograms: use ``bucket``/``count``/``sum``)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    @property
    def bucket(self) -> str:
        return f"{self.name}_bucket"

    @property
    def count(self) -> str:
        return f"{self.name}_count"

    @property
    def sum(self) -> str:
        return f"{self.name}_sum"


def _m(name: str, kind: Kind, help: str, labels: tuple[str, ...], unit: str, source: Source,
       buckets: tuple[float, ...] = ()) -> Metric:
    return Metric(name, kind, help, labels, unit, source, buckets)


_R = tuple(METRIC_LABELS)

ROUTER = {
    "requests": _m("moxin_router_requests", "counter", "Requests answered by the router, by HTTP status code.",
                   (*_R, "code"), "reqps", "router"),
    "retries": _m("moxin_router_retries", "counter", "Requests moved to another replica before any byte.", _R,
                  "reqps", "router"),
    "in_flight": _m("moxin_requests_in_flight", "gauge", "Requests the router is waiting on, per replica.",
                    (*_R, "replica"), "short", "router"),
    "circuit_open": _m("moxin_router_circuit_open", "gauge",
                       "1 while the router's circuit breaker keeps a replica out (consecutive failures), 0 once a "
                       "probe closed it again.", (*_R, "replica"), "short", "router"),
    "ttft": _m("moxin_request_ttft_seconds", "histogram", "Time to first token (streamed requests).", _R, "s",
               "router", TTFT_BUCKETS),
    "tpot": _m("moxin_request_tpot_seconds", "histogram", "Time per output token after the first.", _R, "s",
               "router", TPOT_BUCKETS),
    "e2e": _m("moxin_request_e2e_seconds", "histogram", "End-to-end request latency.", _R, "s", "router",
              E2E_BUCKETS),
    "prompt_tokens": _m("moxin_prompt_tokens", "counter", "Prompt tokens of answered requests.", _R, "tokps",
                        "router"),
    "generation_tokens": _m("moxin_generation_tokens", "counter", "Generated tokens of answered requests.", _R,
                            "tokps", "router"),
    "key_requests": _m("moxin_router_key_requests", "counter",
                       "/v1 requests by API key name (never the key) and HTTP status code; key=\"\" for requests "
                       "without a valid key. Only when the router has API keys.", ("key", "code"), "reqps",
                       "router"),
}
"""What the router measures: the only source of request metrics for mlx-lm replicas, which export none."""

CONTROLLER = {
    "pool_devices": _m("moxin_pool_devices", "gauge", "Devices in the pool.", POOL_LABELS, "short", "controller"),
    "pool_allocated": _m("moxin_pool_devices_allocated", "gauge", "Devices the plan allocates in the pool.",
                         POOL_LABELS, "short", "controller"),
    "desired": _m("moxin_replicas_desired", "gauge", "Replicas the plan asks for.", _R, "short", "controller"),
    "ready": _m("moxin_replicas_ready", "gauge", "Replicas serving.", _R, "short", "controller"),
    "pending": _m("moxin_replicas_pending", "gauge",
                  "Replicas the plan asks for that are not serving yet (starting, or waiting for resources).", _R,
                  "short", "controller"),
    "unschedulable": _m("moxin_replicas_unschedulable", "gauge",
                        "Replicas the plan asks for that have waited for Ray resources past the pending deadline "
                        "(120 s): `moxin status` says why and what would fix it.", _R, "short", "controller"),
    "restarts": _m("moxin_replica_restarts", "gauge", "Engine restarts and replica replacements so far.", _R,
                   "short", "controller"),
    "capacity": _m("moxin_predicted_capacity_requests_per_second", "gauge",
                   "Planned capacity (requests/s at the SLO) of the replicas the plan asks for.", _R, "reqps",
                   "controller"),
    "output_tokens": _m("moxin_predicted_output_tokens_per_second", "gauge",
                        "Planned decode throughput (tokens/s: batch x per-sequence decode speed) of the replicas the "
                        "plan asks for; 0 where the plan has no speed for them.", _R, "tokps", "controller"),
    "batch": _m("moxin_planned_batch", "gauge",
                "Concurrent sequences the plan assumes for the replicas it asks for (per replica x replicas).", _R,
                "short", "controller"),
    "cost": _m("moxin_predicted_cost_usd_per_hour", "gauge", "Planned cost of the replicas the plan asks for.", _R,
               "currencyUSD", "controller"),
    "slo_target": _m("moxin_slo_target_seconds", "gauge",
                     "A deployment's latency target from its ModelDeployment (objective: ttft_p95 or tpot_p95).",
                     ("deployment", "objective"), "s", "controller"),
    "reconcile": _m("moxin_controller_reconcile_duration_seconds", "histogram", "One reconcile loop.", (), "s",
                    "controller", RECONCILE_BUCKETS),
    "reconcile_errors": _m("moxin_controller_reconcile_errors", "counter", "Reconcile steps that raised.",
                           ("step",), "short", "controller"),
    "actions": _m("moxin_controller_actions", "counter", "Actions the controller applied.", ("action",), "short",
                  "controller"),
    "rollout_phase": _m("moxin_rollout_phase", "gauge",
                        "A rollout's phase, one-hot: 1 for the phase it is in (Pending, Progressing, Paused, "
                        "Promoting, Succeeded, RolledBack, Failed), 0 for the others.",
                        ("rollout", "deployment", "phase"), "short", "controller"),
    "rollout_step": _m("moxin_rollout_step", "gauge", "The step a rollout is at (0-based; steps done when equal to "
                       "the number of steps).", ("rollout", "deployment"), "short", "controller"),
    "rollout_weight": _m("moxin_rollout_canary_weight_percent", "gauge",
                         "Percent of the deployment's requests the router sends to the rollout's new side.",
                         ("rollout", "deployment"), "percent", "controller"),
    "rollout_gate_value": _m("moxin_rollout_gate_value", "gauge",
                             "The last measurement of a gate of the current analysis, per side (canary, stable), "
                             "and the bound the canary was held to (side=limit).",
                             ("rollout", "deployment", "gate", "side"), "short", "controller"),
    "rollout_gate_passing": _m("moxin_rollout_gate_passing", "gauge",
                               "The last outcome of a gate of the current analysis: 1 pass, 0 fail, -1 "
                               "inconclusive.", ("rollout", "deployment", "gate"), "short", "controller"),
    "rollout_waiting": _m("moxin_rollout_waiting_seconds", "gauge",
                          "How long a rollout has waited for its new side's replicas at this step (0: not waiting).",
                          ("rollout", "deployment"), "s", "controller"),
    "rollout_deadline": _m("moxin_rollout_progress_deadline_seconds", "gauge",
                           "A rollout's progress deadline: the longest wait for the new side at one step.",
                           ("rollout", "deployment"), "s", "controller"),
}
"""What the controller exports: the plan (desired, predicted, SLO targets) and the fleet's state."""


@dataclass(frozen=True)
class EngineMetric:
    """A vLLM series, under every name vLLM versions have used: ``names[0]`` is the current one, the rest older
    names a fleet on older vLLM still exports (``../shared/facts/observability.md``). Queries select ``a or b``."""

    names: tuple[str, ...]
    kind: Kind
    help: str
    unit: str


def _e(names: tuple[str, ...], kind: Kind, help: str, unit: str) -> EngineMetric:
    return EngineMetric(names, kind, help, unit)


VLLM = {
    "running": _e(("vllm:num_requests_running",), "gauge", "Requests in the engine's running batch.", "short"),
    "waiting": _e(("vllm:num_requests_waiting",), "gauge", "Requests waiting for a batch slot.", "short"),
    "kv_usage": _e(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "gauge",
                   "KV-cache blocks in use (0-1).", "percentunit"),
    "preemptions": _e(("vllm:num_preemptions_total", "vllm:num_preemptions"), "counter",
                      "Sequences preempted for KV-cache space.", "short"),
    "prefix_queries": _e(("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"), "counter",
                         "Prefix-cache lookups (tokens).", "short"),
    "prefix_hits": _e(("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"), "counter",
                      "Prefix-cache hits (tokens).", "short"),
    "queue_time": _e(("vllm:request_queue_time_seconds",), "histogram", "Time requests waited in the queue.", "s"),
    "ttft": _e(("vllm:time_to_first_token_seconds",), "histogram", "The engine's time to first token.", "s"),
    "itl": _e(("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"), "histogram",
              "The engine's time between output tokens.", "s"),
    "e2e": _e(("vllm:e2e_request_latency_seconds",), "histogram", "The engine's request latency.", "s"),
    "prompt_tokens": _e(("vllm:prompt_tokens_total",), "counter", "Prompt tokens the engine processed.", "tokps"),
    "generation_tokens": _e(("vllm:generation_tokens_total",), "counter", "Tokens the engine generated.", "tokps"),
}
"""vLLM's series that moxin's dashboards and alerts read."""

ALL: tuple[Metric, ...] = (*ROUTER.values(), *CONTROLLER.values())
