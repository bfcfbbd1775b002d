"""moxin's Grafana dashboards, built with Grafana's own typed builders (grafana-foundation-sdk) from the queries
of ``queries.py``: Fleet, Deployment SLO, Pools and hardware, Engines, Controller.

What each dashboard shows is declared below as plain data (``DashboardSpec`` -> rows -> panels -> queries); the
builders turn it into Grafana's JSON. ``render_dashboards()`` gives each dashboard's file, byte-identical on every
call (sorted keys, no timestamps, fixed uids and panel ids); the chart ships those files
(``helm/moxin/dashboards``, written by ``python -m orchestrator.observe.dashboards DIR``) and
``moxin render dashboards`` writes them for an import by hand. ``panel_queries()`` lists every panel's expression,
for the linter tests and for an evaluation against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

with warnings.catch_warnings():
    # The classic dashboard model, which the Grafana sidecar, file provisioning and Import take on every Grafana
    # version; the SDK marks it deprecated in favour of schema v2, which only Grafana 12's new API reads.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_b
    from grafana_foundation_sdk.builders import dashboard as dashboard_b
    from grafana_foundation_sdk.builders import prometheus, stat, table, text, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common, dashboard
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from orchestrator.observe import queries as q
from orchestrator.observe.queries import ASSIGNMENT, FILTER_LABELS, MLX_ENGINE, POOL_GROUP, Filter
from orchestrator.output import write_atomic
from orchestrator.spec.metrics import CONTROLLER, ROUTER, VLLM

DATASOURCE_VARIABLE = "datasource"
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
"""Every panel and every target queries the Prometheus the dashboard's datasource variable names."""

VARIABLE_SOURCES = {
    "deployment": CONTROLLER["desired"].series,
    "pool": CONTROLLER["pool_devices"].series,
    "hardware": CONTROLLER["pool_devices"].series,
    "engine": CONTROLLER["desired"].series,
}
"""The series each template variable takes its values from (``label_values``): the controller's, which exist
from the first reconcile, before any request."""

TAGS = ["moxin"]
QUANTILES = (0.5, 0.95, 0.99)
SLO_OBJECTIVE = {"ttft": "ttft_p95", "tpot": "tpot_p95"}
"""The SLO target drawn over a latency panel (``SLO_OBJECTIVES``)."""

PanelKind = Literal["timeseries", "stat", "table"]


# -------------------------------------------------------------------------------------------- what to draw

@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    overlay: bool = False
    """Drawn as a dashed reference line (an SLO target, an emulated pool), not as a measurement."""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    """Grafana's unit id (``s``, ``reqps``, ``percentunit``, ``currencyUSD``...)."""
    queries: tuple[Query, ...]
    kind: PanelKind = "timeseries"
    width: int = 12
    max: float | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...] = ()
    note: str = ""
    """Markdown for a text panel at the row's start: what the row is for where it has no panels yet."""


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[RowSpec, ...]

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


@dataclass(frozen=True)
class PanelQuery:
    """One panel target as the dashboard holds it (Grafana variables and ``$__rate_interval`` unsubstituted:
    ``queries.substitute`` makes it a plain PromQL expression)."""

    uid: str
    """The dashboard's uid."""
    dashboard: str
    """The dashboard's title."""
    panel: str
    """The panel's title."""
    ref_id: str
    expr: str


VARS = Filter.variables()
"""The dashboards' filter: each FILTER_LABELS label matches its template variable."""
MLX = VARS.and_("engine", "=", MLX_ENGINE)


def _label(by: Sequence[str]) -> str:
    return " ".join(f"{{{{{name}}}}}" for name in by)


def _quantiles(metric: Any, by: Sequence[str], flt: Filter = VARS) -> tuple[Query, ...]:
    return tuple(Query(q.quantile(p, metric, by, flt), f"{_label(by)} p{p * 100:g}") for p in QUANTILES)


def _latency_panel(key: str, title: str, width: int = 8) -> PanelSpec:
    metric = ROUTER[key]
    overlay = ()
    if key in SLO_OBJECTIVE:
        overlay = (Query(q.slo_target(SLO_OBJECTIVE[key], VARS), "{{deployment}} SLO target (p95)", overlay=True),)
    target = " The dashed line is the deployment's SLO target (p95) from its ModelDeployment." if overlay else ""
    return PanelSpec(title, f"{metric.help} p50/p95/p99 per deployment, as the router measured it.{target}",
                     metric.unit, (*_quantiles(metric, ("deployment",)), *overlay), width=width)


# ------------------------------------------------------------------------------------------------ Fleet

def _fleet() -> DashboardSpec:
    desired, ready, cost = (CONTROLLER[k] for k in ("desired", "ready", "cost"))
    devices, allocated = CONTROLLER["pool_devices"], CONTROLLER["pool_allocated"]
    by_pool = ("pool", "hardware", "emulated")
    device_share = [
        Query(q.ratio(q.sum_by(by_pool, q.series(allocated, VARS.and_("emulated", "=", e))),
                      q.sum_by(by_pool, q.series(devices, VARS.and_("emulated", "=", e)))),
              "{{pool}} ({{hardware}})" + (", emulated" if e == "true" else ""), overlay=e == "true")
        for e in ("false", "true")]
    overview = RowSpec("Overview", (
        PanelSpec("Deployments", "Deployments the plan places (with at least one replica desired).", "short",
                  (Query(f"count({q.sum_by(('deployment',), q.series(desired, VARS))} > 0)"),), "stat", 4),
        PanelSpec("Replicas ready / desired", "Replicas serving, and replicas the plan asks for.", "short",
                  (Query(q.sum_by((), q.series(ready, VARS)), "ready"),
                   Query(q.sum_by((), q.series(desired, VARS)), "desired")), "stat", 4),
        PanelSpec("Requests/s", "Requests the router answered per second (every status code).", "reqps",
                  (Query(q.request_rate((), VARS)),), "stat", 4),
        PanelSpec("Error ratio", "The share of the router's answers that were 5xx.", "percentunit",
                  (Query(q.error_ratio((), VARS)),), "stat", 4),
        PanelSpec("Predicted cost per hour", "What the plan's replicas cost per hour, as the plan predicts.",
                  cost.unit, (Query(q.sum_by((), q.series(cost, VARS))),), "stat", 4),
        PanelSpec("Devices allocated", "The share of the pools' devices the plan allocates.", "percentunit",
                  (Query(q.ratio(q.sum_by((), q.series(allocated, VARS)), q.sum_by((), q.series(devices, VARS)))),),
                  "stat", 4),
    ))
    deployments = RowSpec("Deployments", (
        PanelSpec("Replicas desired and ready", "Replicas the plan asks for (desired) and replicas serving "
                  "(ready), per deployment.", "short",
                  (Query(q.sum_by(("deployment",), q.series(desired, VARS)), "{{deployment}} desired"),
                   Query(q.sum_by(("deployment",), q.series(ready, VARS)), "{{deployment}} ready"))),
        PanelSpec("Requests/s by deployment", "Requests the router answered per second, per deployment.", "reqps",
                  (Query(q.request_rate(("deployment",), VARS), "{{deployment}}"),)),
        PanelSpec("Error ratio by deployment", "The share of each deployment's answers that were 5xx (no line "
                  "while it has no requests).", "percentunit",
                  (Query(q.error_ratio(("deployment",), VARS), "{{deployment}}"),), max=1),
        PanelSpec("Predicted cost per hour by deployment", "What each deployment's planned replicas cost per hour.",
                  cost.unit, (Query(q.sum_by(("deployment",), q.series(cost, VARS)), "{{deployment}}"),)),
    ))
    pools = RowSpec("Pools", (
        PanelSpec("Devices per pool", "Devices in each pool and how many the plan allocates; emulated=true marks a "
                  "CPU-emulated pool (no accelerator behind it).", "short",
                  (Query(q.sum_by(by_pool, q.series(allocated, VARS)), "allocated"),
                   Query(q.sum_by(by_pool, q.series(devices, VARS)), "total")), "table"),
        PanelSpec("Devices allocated per pool", "The share of each pool's devices the plan allocates; emulated pools "
                  "are dashed and marked 'emulated'.", "percentunit", tuple(device_share), max=1),
    ))
    return DashboardSpec("moxin-fleet", "moxin / Fleet",
                         "Every deployment and pool at a glance: replicas, traffic, errors, planned cost, devices.",
                         (overview, deployments, pools))


# ------------------------------------------------------------------------------------------ Deployment SLO

def _deployment_slo() -> DashboardSpec:
    output_tokens = CONTROLLER["output_tokens"]
    assignment = "{{deployment}} {{variant}} on {{pool}}"
    latency = RowSpec("Latency against the SLO", (
        _latency_panel("ttft", "Time to first token"),
        _latency_panel("tpot", "Time per output token"),
        _latency_panel("e2e", "End-to-end latency"),
    ))
    traffic = RowSpec("Traffic", (
        PanelSpec("Requests/s by status code", "Requests the router answered per second, by deployment and HTTP "
                  "status code.", "reqps", (Query(q.request_rate(("deployment", "code"), VARS),
                                                  "{{deployment}} {{code}}"),), width=8),
        PanelSpec("Tokens/s", "Prompt and generated tokens per second of answered requests, per deployment.",
                  "tokps", (Query(q.token_rate("prompt_tokens", ("deployment",), VARS), "{{deployment}} prompt"),
                            Query(q.token_rate("generation_tokens", ("deployment",), VARS),
                                  "{{deployment}} generated")), width=8),
        PanelSpec("Replica share of traffic", "Each replica's share of its deployment's requests in flight at the "
                  "router, averaged over the rate interval (the router's per-replica series): the split the "
                  "weighted least-load balancing gives.", "percentunit",
                  (Query(q.in_flight_share(("deployment",), VARS), "{{deployment}} {{replica}}"),), width=8, max=1),
    ))
    plan = RowSpec("Plan against measurement", (
        PanelSpec("Capacity used per assignment", "Measured requests/s over the capacity the plan predicts at the "
                  "SLO, per assignment (deployment, variant, pool): above 100% the assignment serves more than it "
                  "was planned for.", "percentunit", (Query(q.capacity_used(ASSIGNMENT, VARS), assignment),), width=8),
        PanelSpec("Predicted capacity and measured requests/s", "Per assignment: the requests/s the plan predicts "
                  "within the SLO (dashed) and the requests/s the router answered.", "reqps",
                  (Query(q.predicted_capacity(ASSIGNMENT, VARS), f"{assignment} predicted", overlay=True),
                   Query(q.request_rate(ASSIGNMENT, VARS), f"{assignment} measured")), width=8),
        PanelSpec("Predicted and measured output tokens/s", "Per assignment: the decode throughput the plan "
                  "predicts (dashed; batch x per-sequence speed) and the generated tokens/s the router counted.",
                  "tokps", (Query(q.sum_by(ASSIGNMENT, q.series(output_tokens, VARS)), f"{assignment} predicted",
                                  overlay=True),
                            Query(q.token_rate("generation_tokens", ASSIGNMENT, VARS), f"{assignment} measured")),
                  width=8),
    ))
    return DashboardSpec("moxin-deployment-slo", "moxin / Deployment SLO",
                         "Each deployment's latency against its SLO targets, its traffic, and the plan's predictions "
                         "against what was measured.", (latency, traffic, plan))


# ------------------------------------------------------------------------------------------ Pools and hardware

def _pools() -> DashboardSpec:
    group = _label(POOL_GROUP)
    load = RowSpec("Load", (
        PanelSpec("Load against planned batch", "Requests in flight at the router over the concurrent sequences the "
                  "plan assumed, per pool, hardware and engine: 100% means the planned batch is full.",
                  "percentunit", (Query(q.load_vs_planned_batch(POOL_GROUP, VARS), group),), width=8),
        PanelSpec("Requests in flight and planned batch", "Requests in flight at the router and the planned batch "
                  "(dashed), per pool, hardware and engine.", "short",
                  (Query(q.sum_by(POOL_GROUP, q.series(ROUTER["in_flight"], VARS)), f"{group} in flight"),
                   Query(q.sum_by(POOL_GROUP, q.series(CONTROLLER["batch"], VARS)), f"{group} planned batch",
                         overlay=True)), width=8),
        PanelSpec("vLLM KV-cache usage", "KV-cache blocks in use on vLLM engines, mean and fullest engine, per pool, "
                  "hardware and engine (either vLLM metric name).", VLLM["kv_usage"].unit,
                  (Query(q.aggregate("avg", POOL_GROUP, q.engine_gauge(VLLM["kv_usage"], VARS)), f"{group} mean"),
                   Query(q.aggregate("max", POOL_GROUP, q.engine_gauge(VLLM["kv_usage"], VARS)), f"{group} max")),
                  width=8, max=1),
    ))
    cost = RowSpec("Cost", (
        PanelSpec("Cost per 1M output tokens: predicted and actual", "Per pool, hardware and engine: the planned "
                  "cost per hour over the planned decode tokens/s (predicted, dashed) and over the generated "
                  "tokens/s the router measured (actual). Actual far above predicted: the pool is underused or "
                  "slower than planned.", "currencyUSD",
                  (Query(q.predicted_cost_per_million_tokens(POOL_GROUP, VARS), f"{group} predicted", overlay=True),
                   Query(q.actual_cost_per_million_tokens(POOL_GROUP, VARS), f"{group} actual")), width=8),
        PanelSpec("Predicted cost per hour", "The planned cost per hour of the replicas on each pool, hardware and "
                  "engine.", CONTROLLER["cost"].unit,
                  (Query(q.sum_by(POOL_GROUP, q.series(CONTROLLER["cost"], VARS)), group),), width=8),
        PanelSpec("Generated tokens/s: predicted and measured", "The planned decode throughput (dashed) and the "
                  "generated tokens/s the router counted, per pool, hardware and engine.", "tokps",
                  (Query(q.sum_by(POOL_GROUP, q.series(CONTROLLER["output_tokens"], VARS)), f"{group} predicted",
                         overlay=True),
                   Query(q.token_rate("generation_tokens", POOL_GROUP, VARS), f"{group} measured")), width=8),
    ))
    return DashboardSpec("moxin-pools", "moxin / Pools and hardware",
                         "Per pool, hardware and engine: load against the planned batch, KV-cache usage, and cost per "
                         "million output tokens, predicted against actual.", (load, cost))


# ------------------------------------------------------------------------------------------------ Engines

def _engines() -> DashboardSpec:
    by = ("deployment", "pool")
    label = _label(by)

    def gauge(key: str, op: str = "sum") -> str:
        return q.aggregate(op, by, q.engine_gauge(VLLM[key], VARS))

    vllm = RowSpec("vLLM", (
        PanelSpec("Running and waiting requests", "Requests in vLLM's running batch and waiting for a slot, per "
                  "deployment and pool.", "short",
                  (Query(gauge("running"), f"{label} running"), Query(gauge("waiting"), f"{label} waiting")),
                  width=8),
        PanelSpec("KV-cache usage", "KV-cache blocks in use on the fullest engine of each deployment and pool "
                  "(kv_cache_usage_perc, or gpu_cache_usage_perc on older vLLM).", VLLM["kv_usage"].unit,
                  (Query(gauge("kv_usage", "max"), label),), width=8, max=1),
        PanelSpec("Preemptions per second", "Sequences vLLM preempted for KV-cache space, per second: steady "
                  "preemptions mean the batch is larger than the cache holds.", "short",
                  (Query(q.sum_by(by, q.engine_rate(VLLM["preemptions"], VARS)), label),), width=8),
        PanelSpec("Prefix-cache hit ratio", "The share of prefix-cache lookups (tokens) that hit, per deployment "
                  "and pool.", "percentunit", (Query(q.prefix_cache_hit_ratio(by, VARS), label),), width=8, max=1),
        PanelSpec("Queue time", f"{VLLM['queue_time'].help} p50/p95/p99 per deployment.", VLLM["queue_time"].unit,
                  _quantiles(VLLM["queue_time"], ("deployment",)), width=8),
        PanelSpec("Engine TTFT and inter-token latency (p95)", "vLLM's own time to first token and time between "
                  "output tokens, p95 per deployment (inter_token_latency, or time_per_output_token on older vLLM).",
                  "s", (Query(q.quantile(0.95, VLLM["ttft"], ("deployment",), VARS), "{{deployment}} TTFT"),
                        Query(q.quantile(0.95, VLLM["itl"], ("deployment",), VARS), "{{deployment}} inter-token")),
                  width=8),
    ))
    mlx = RowSpec("mlx-lm (the router's measurements)", (
        PanelSpec("mlx-lm requests/s", "Requests the router answered per second for mlx-lm replicas, which export "
                  "no metrics of their own.", "reqps", (Query(q.request_rate(by, MLX), label),), width=6),
        PanelSpec("mlx-lm time to first token", "Time to first token of mlx-lm replicas, p50/p95/p99 per deployment, "
                  "as the router measured it.", "s", _quantiles(ROUTER["ttft"], ("deployment",), MLX), width=6),
        PanelSpec("mlx-lm generated tokens/s", "Tokens mlx-lm replicas generated per second, as the router counted "
                  "them.", "tokps", (Query(q.token_rate("generation_tokens", by, MLX), label),), width=6),
        PanelSpec("mlx-lm requests in flight", "Requests the router is waiting on, per mlx-lm replica.", "short",
                  (Query(q.sum_by(("deployment", "replica"), q.series(ROUTER["in_flight"], MLX)),
                         "{{deployment}} {{replica}}"),), width=6),
    ))
    return DashboardSpec("moxin-engines", "moxin / Engines",
                         "The engines' own view: vLLM's scheduler, KV cache, preemptions, prefix cache and queue time "
                         "(under the metric names of old and new vLLM), and mlx-lm through the router's measurements.",
                         (vllm, mlx))


# ---------------------------------------------------------------------------------------------- Controller

ROLLOUTS_NOTE = ("Rollouts (`moxin rollout status` for the decision log): the new side's share of the traffic and the "
                 "step each rollout is at, its phase, and every gate's last reading per side against the bound the "
                 "canary is held to (side `limit`).")


def _controller() -> DashboardSpec:
    reconcile = CONTROLLER["reconcile"]
    loop = RowSpec("Reconcile loop", (
        PanelSpec("Reconcile duration", "How long one reconcile loop takes, p50 and p99.", reconcile.unit,
                  tuple(Query(q.quantile(p, reconcile, (), VARS), f"p{p * 100:g}") for p in (0.5, 0.99)), width=8),
        PanelSpec("Reconcile errors per second", "Reconcile steps that raised, per second, by step. The loop goes "
                  "on; a step that keeps failing is retried every loop.", "short",
                  (Query(q.sum_by(("step",), q.rate(CONTROLLER["reconcile_errors"], VARS)), "{{step}}"),), width=8),
        PanelSpec("Actions per second", "Actions the controller applied per second, by kind.", "short",
                  (Query(q.sum_by(("action",), q.rate(CONTROLLER["actions"], VARS)), "{{action}}"),), width=8),
    ))
    replicas = RowSpec("Replicas", (
        PanelSpec("Pending replicas", CONTROLLER["pending"].help + " Unschedulable: " + CONTROLLER["unschedulable"].help,
                  CONTROLLER["pending"].unit,
                  (Query(q.sum_by(("deployment",), q.series(CONTROLLER["pending"], VARS)), "{{deployment}}"),
                   Query(q.sum_by(("deployment",), q.series(CONTROLLER["unschedulable"], VARS)),
                         "{{deployment}} unschedulable"))),
        PanelSpec("Restarts", CONTROLLER["restarts"].help, CONTROLLER["restarts"].unit,
                  (Query(q.sum_by(("deployment",), q.series(CONTROLLER["restarts"], VARS)), "{{deployment}}"),)),
    ))
    ids = ("rollout", "deployment")
    rollouts = RowSpec("Rollouts", (
        PanelSpec("Canary weight", CONTROLLER["rollout_weight"].help, CONTROLLER["rollout_weight"].unit,
                  (Query(q.sum_by(ids, q.series(CONTROLLER["rollout_weight"], VARS)), "{{rollout}} ({{deployment}})"),),
                  width=6),
        PanelSpec("Rollout step", CONTROLLER["rollout_step"].help, CONTROLLER["rollout_step"].unit,
                  (Query(q.sum_by(ids, q.series(CONTROLLER["rollout_step"], VARS)), "{{rollout}} ({{deployment}})"),),
                  width=6),
        PanelSpec("Rollout phase", CONTROLLER["rollout_phase"].help, CONTROLLER["rollout_phase"].unit,
                  (Query(f'{q.sum_by((*ids, "phase"), q.series(CONTROLLER["rollout_phase"], VARS))} == 1',
                         "{{rollout}}: {{phase}}"),), width=6),
        PanelSpec("Gate values", CONTROLLER["rollout_gate_value"].help, CONTROLLER["rollout_gate_value"].unit,
                  (Query(q.sum_by((*ids, "gate", "side"), q.series(CONTROLLER["rollout_gate_value"], VARS)),
                         "{{rollout}} {{gate}} {{side}}"),), width=6),
    ), note=ROLLOUTS_NOTE)
    return DashboardSpec("moxin-controller", "moxin / Controller",
                         "The controller's reconcile loop (duration, errors, actions) and the replicas it manages.",
                         (loop, replicas, rollouts))


def dashboard_specs() -> tuple[DashboardSpec, ...]:
    """The five dashboards, in the order a reader drills down."""
    return _fleet(), _deployment_slo(), _pools(), _engines(), _controller()


# ------------------------------------------------------------------------------------------------ building

def _variables() -> list[Any]:
    out: list[Any] = [dashboard_b.DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus")]
    for name in FILTER_LABELS:
        query = f"label_values({VARIABLE_SOURCES[name]}, {name})"
        out.append(dashboard_b.QueryVariable(name).label(name.capitalize()).datasource(DATASOURCE).query(query)
                   .definition(query).multi(True).include_all(True).all_value(".*")
                   .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
                   .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
                   .sort(dashboard.VariableSort.ALPHABETICAL_ASC))
    return out


_DASHED = [dashboard.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]


def _target(query: Query, ref_id: str, kind: PanelKind) -> Any:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
    if query.legend:
        target = target.legend_format(query.legend)
    if kind == "table":
        target = target.instant().format(PromQueryFormat.TABLE)
    return target


def _panel(spec: PanelSpec, panel_id: int) -> Any:
    if spec.kind == "timeseries":
        panel: Any = timeseries.Panel().legend(
            common_b.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"])) \
            .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING))
    elif spec.kind == "stat":
        panel = stat.Panel().reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
    else:
        panel = table.Panel().with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={})) \
            .with_transformation(dashboard.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {
                    f"Value #{chr(ord('A') + i)}": query.legend for i, query in enumerate(spec.queries)}}))
    panel = panel.id(panel_id).title(spec.title).description(spec.description).unit(spec.unit) \
        .datasource(DATASOURCE).span(spec.width).height(4 if spec.kind == "stat" else 8)
    if spec.max is not None:
        panel = panel.min(0).max(spec.max)
    for i, query in enumerate(spec.queries):
        ref_id = chr(ord("A") + i)
        panel = panel.with_target(_target(query, ref_id, spec.kind))
        if query.overlay and spec.kind == "timeseries":
            panel = panel.override_by_query(ref_id, _DASHED)
    return panel


def build(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard's JSON model as Grafana imports it."""
    board = dashboard_b.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(TAGS) \
        .time("now-1h", "now").refresh("30s").timezone("browser").editable() \
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR).variables(_variables())
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        board = board.with_row(dashboard_b.Row(row.title).id(panel_id))
        if row.note:
            panel_id += 1
            board = board.with_panel(text.Panel().id(panel_id).title(row.title).description(row.note)
                                     .content(row.note).span(24).height(3))
        for spec_panel in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(spec_panel, panel_id))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def dashboards() -> dict[str, dict[str, Any]]:
    """Each dashboard's JSON model by file name (``<uid>.json``)."""
    return {spec.filename: build(spec) for spec in dashboard_specs()}


def dashboard_text(model: dict[str, Any]) -> str:
    """One dashboard's file: sorted keys, two-space indent, a final newline; the same bytes for the same model."""
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_dashboards() -> dict[str, str]:
    """Each dashboard's file text by file name."""
    return {name: dashboard_text(model) for name, model in dashboards().items()}


OURS = re.compile(r"moxin-[a-z0-9-]+\.json")


def write_dashboards(out_dir: Path) -> list[Path]:
    """Every dashboard into ``out_dir`` (each file atomically), and moxin dashboard files of an earlier render
    that this one no longer writes removed. Returns the files written."""
    files = render_dashboards()
    written = []
    for name, content in files.items():
        write_atomic(out_dir / name, content)
        written.append(out_dir / name)
    for old in out_dir.glob("moxin-*.json"):
        if OURS.fullmatch(old.name) and old.name not in files:
            old.unlink()
    return written


def panel_queries(models: dict[str, dict[str, Any]] | None = None) -> list[PanelQuery]:
    """Every target expression of every panel, with its dashboard and panel title (of ``models``, default the
    dashboards above)."""
    out = []
    for model in (models or dashboards()).values():
        for panel in iter_panels(model):
            for target in panel.get("targets", []):
                out.append(PanelQuery(model.get("uid", ""), model["title"], panel.get("title", ""),
                                      target.get("refId", ""), target.get("expr", "")))
    return out


def iter_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard model, rows' collapsed panels included, rows themselves excluded."""
    out = []
    for panel in model.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def main(argv: list[str]) -> int:
    """``python -m orchestrator.observe.dashboards DIR``: what the chart ships (helm/moxin/dashboards)."""
    if len(argv) != 1:
        print("usage: python -m orchestrator.observe.dashboards DIR", file=sys.stderr)
        return 2
    for path in write_dashboards(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
