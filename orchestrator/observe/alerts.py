"""moxin's Prometheus alert rules, built from the metric schema (``spec/metrics.py``): the rule groups as values,
and the rules file Prometheus loads (``moxin render alerts``, and the chart's PrometheusRule through
``helm/moxin/rules/moxin.rules.yaml``).

Every rule names its series through the schema objects, carries a severity, a summary and a description templated
with ``$labels``/``$value``, and a ``runbook_url`` into the README's runbook; every rule computed from traffic is
guarded by a minimum request rate so that an idle pool never fires. ``tests/unit/observe/test_alerts.py`` runs
``promtool test rules`` on every alert, firing and not. The PromQL comes from ``observe/queries.py``, as the
dashboards' does; here it is only joined with thresholds and low-traffic guards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.observe import queries as q
from orchestrator.observe.queries import NO_FILTER, Filter
from orchestrator.output import to_yaml
from orchestrator.spec.metrics import CONTROLLER, RECONCILE_BUCKETS, ROUTER, VLLM, Metric, Source

Severity = Literal["critical", "warning"]

RUNBOOK_URL = "https://moxin.dev/runbook"
"""Where the README's "Runbook" section is published; a rule's ``runbook_url`` is this plus ``#`` and its anchor."""

CHART_NAMESPACE = "MOXIN_RELEASE_NAMESPACE"
"""The namespace the chart's committed rules file is scoped to: the PrometheusRule template replaces it with the
release's namespace (``helm/moxin/templates/monitoring.yaml``)."""

CHART_RULES_PATH = "rules/moxin.rules.yaml"
"""The generated rules file, relative to the chart's directory."""


class AlertSettings(BaseModel):
    """The thresholds of the rules: what an operator tunes (``moxin render alerts`` takes each as a flag)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    availability_objective: Annotated[float, Field(gt=0.5, lt=1)] = 0.99
    """The share of router requests that must not fail (5xx); 1 minus it is the error budget the burn-rate alerts
    measure."""
    min_requests_per_second: Annotated[float, Field(gt=0)] = 0.1
    """Below this request rate a deployment counts as idle: latency, error, capacity and cost alerts stay quiet."""
    kv_cache_usage: Annotated[float, Field(gt=0, le=1)] = 0.9
    """KV-cache usage (0-1) above which an engine counts as saturated."""
    waiting_requests: Annotated[int, Field(ge=1)] = 10
    """Requests waiting for a batch slot in one engine above which its queue counts as building up."""
    preemptions_per_second: Annotated[float, Field(gt=0)] = 0.1
    """Preemptions per second of one engine above which it counts as short of KV cache."""
    capacity_share: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Share of the planned capacity (requests/s) above which a deployment needs a re-plan."""
    cost_drift: Annotated[float, Field(gt=1)] = 1.5
    """How many times the planned cost per 1M output tokens the measured one may reach before it alerts."""
    reconcile_p99_seconds: Annotated[float, Field(gt=0, lt=RECONCILE_BUCKETS[-1])] = 2.0
    """p99 of the controller's reconcile loop above which it counts as slow (below the histogram's highest finite
    bucket, which is all a quantile can reach)."""
    runbook_url: Annotated[str, Field(min_length=1, pattern=r"^https?://[^#\s]+$")] = RUNBOOK_URL
    """Where the runbook is published: each rule links to its section, #<alert name in lowercase>."""


@dataclass(frozen=True)
class Alert:
    """One alerting rule."""

    name: str
    expr: str
    for_: str
    """How long ``expr`` must hold before the alert fires (a Prometheus duration)."""
    severity: Severity
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        """Its runbook section: the anchor of the README heading named after the alert."""
        return runbook_anchor(self.name)

    def rule(self, runbook_url: str) -> dict[str, object]:
        """The rule as the rules file holds it."""
        return {"alert": self.name, "expr": self.expr, "for": self.for_, "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": f"{runbook_url}#{self.anchor}"}}


@dataclass(frozen=True)
class RuleGroup:
    name: str
    alerts: tuple[Alert, ...]


# ------------------------------------------------------------------------------------------------ PromQL helpers

_DEPLOYMENT = ("namespace", "deployment")
"""What deployment-level rules aggregate by: ``namespace`` is empty on Ray and tells releases apart on Kubernetes."""
_ASSIGNMENT = (*_DEPLOYMENT, "variant", "pool")
_TARGET = ("job", "instance")
"""One scrape target: an engine's vLLM series join on it."""
_SLO_QUANTILE = {"ttft_p95": (ROUTER["ttft"], 0.95), "tpot_p95": (ROUTER["tpot"], 0.95)}
"""The router histogram and quantile behind each objective of ``moxin_slo_target_seconds``."""


def _and(*exprs: str, by: tuple[str, ...] = _DEPLOYMENT) -> str:
    """``a and on(by) b ...``, one operand a line: the first one's samples where every other has one too."""
    return f"\nand {q.on(by)}\n".join(exprs)


def _busy(flt: Filter, settings: AlertSettings, window: str, histogram: Metric | None = None) -> str:
    """The low-traffic guard: deployments answering at least the minimum request rate (of the router's requests, or
    of the requests ``histogram`` observed)."""
    requests = q.request_rate(_DEPLOYMENT, flt, window) if histogram is None else \
        q.sum_by(_DEPLOYMENT, q.rate(histogram, flt, window, histogram.count))
    return f"{requests} >= {q.number(settings.min_requests_per_second)}"


# ----------------------------------------------------------------------------------------------------- the rules

def _availability(flt: Filter) -> RuleGroup:
    desired, ready = CONTROLLER["desired"], CONTROLLER["ready"]
    deployment_ready = f"{q.sum_by(_DEPLOYMENT, q.series(ready, flt))} > 0"
    down = [
        Alert("MoxinDeploymentDown",
              f"{q.sum_by(_DEPLOYMENT, q.series(desired, flt))} > 0\nunless {q.on(_DEPLOYMENT)}\n{deployment_ready}",
              "10m", "critical",
              "{{ $labels.deployment }} has no ready replica",
              "Deployment {{ $labels.deployment }} asks for {{ $value }} replicas and none has been ready for 10 "
              "minutes: its requests fail with 503."),
        Alert("MoxinReplicasBelowDesired",
              _and(f"{q.sum_by(_ASSIGNMENT, q.series(ready, flt))}\n  < {q.on(_ASSIGNMENT)}\n"
                   f"{q.sum_by(_ASSIGNMENT, q.series(desired, flt))}", deployment_ready),
              "10m", "warning",
              "{{ $labels.deployment }} runs fewer replicas than planned",
              "Only {{ $value }} replicas of {{ $labels.deployment }} ({{ $labels.variant }} on pool "
              "{{ $labels.pool }}) have been ready for 10 minutes, fewer than the plan asks for."),
        Alert("MoxinReplicasUnschedulable",
              f"{q.sum_by(_ASSIGNMENT, q.series(CONTROLLER['unschedulable'], flt))} > 0", "5m", "warning",
              "{{ $labels.deployment }} has replicas no node can hold",
              "{{ $value }} replicas of {{ $labels.deployment }} ({{ $labels.variant }} on pool {{ $labels.pool }}) "
              "have waited for Ray resources past the pending deadline for 5 minutes: `moxin status` says why and "
              "what would fix it."),
    ]
    targets: list[tuple[str, Source, Severity, str, str]] = [
        ("MoxinRouterTargetDown", "router", "critical", "a router",
         ("A router that stops answering its scrape has most likely stopped or hung: its clients lose their "
          "requests in flight (new connections go to the routers still on the port, if any) and its request "
          "metrics (latency, errors, capacity) are missing.")),
        ("MoxinEngineTargetDown", "engine", "warning", "an engine",
         "The engine's own metrics (KV cache, queue, preemptions) are missing; the router may still reach it."),
        ("MoxinControllerTargetDown", "controller", "warning", "the controller",
         ("Nothing reconciles: failed replicas are not replaced and the plan's gauges (replicas, SLO targets, "
          "predictions) are missing, so the availability, SLO, capacity and cost alerts cannot fire.")),
    ]
    down += [Alert(name, f"{q.up(source, flt)} == 0", "5m", severity,
                   f"{what.capitalize()} ({{{{ $labels.instance }}}}) does not answer its metrics scrape",
                   f"Prometheus has failed to scrape {what} at {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) "
                   f"for 5 minutes. {consequence}")
             for name, source, severity, what, consequence in targets]
    return RuleGroup("moxin.availability", tuple(down))


def _slo(flt: Filter, s: AlertSettings) -> RuleGroup:
    rules = []
    for objective, (metric, quantile) in _SLO_QUANTILE.items():
        what = {"ttft": "time to first token", "tpot": "time per output token"}[objective.split("_")[0]]
        name = f"Moxin{objective.split('_')[0].upper()}AboveSLO"
        target = q.aggregate("max", _DEPLOYMENT, q.slo_target(objective, flt))
        rules.append(Alert(
            name,
            _and(f"{q.quantile(quantile, metric, _DEPLOYMENT, flt, '5m')}\n  > {q.on(_DEPLOYMENT)}\n{target}",
                 _busy(flt, s, "5m", metric)),
            "10m", "warning",
            f"{{{{ $labels.deployment }}}} misses its {objective} SLO",
            f"The p{round(quantile * 100)} {what} of {{{{ $labels.deployment }}}} has been "
            f"{{{{ $value | humanizeDuration }}}} for 10 minutes, above the deployment's {objective} target "
            f"({CONTROLLER['slo_target'].name})."))
    budget = 1 - s.availability_objective
    for name, (long, short), factor, for_, severity in (
            ("MoxinErrorBudgetBurnFast", ("1h", "5m"), 14.4, "2m", "critical"),
            ("MoxinErrorBudgetBurnSlow", ("6h", "30m"), 6.0, "15m", "warning")):
        limit = q.number(factor * budget)
        rules.append(Alert(
            name,
            _and(f"(\n{q.error_ratio(_DEPLOYMENT, flt, long)}\n) > {limit}",
                 f"(\n{q.error_ratio(_DEPLOYMENT, flt, short)}\n) > {limit}", _busy(flt, s, short)),
            for_, severity,
            f"{{{{ $labels.deployment }}}} burns its error budget {factor:g}x too fast",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {{{{ $labels.deployment }}}} failed (5xx) over "
            f"the last {long}, and over the last {short} too: {factor:g} times the "
            f"{budget * 100:g}% error budget of a {s.availability_objective * 100:g}% availability "
            "objective."))
    return RuleGroup("moxin.slo", tuple(rules))


def _saturation(flt: Filter, s: AlertSettings) -> RuleGroup:
    return RuleGroup("moxin.saturation", (
        Alert("MoxinKVCacheNearlyFull",
              _and(f"{q.engine_gauge(VLLM['kv_usage'], flt)} > {q.number(s.kv_cache_usage)}",
                   f"({q.engine_gauge(VLLM['running'], flt)} > 0)", by=_TARGET),
              "10m", "warning",
              "Engine {{ $labels.instance }} has its KV cache nearly full",
              "The engine at {{ $labels.instance }} ({{ $labels.deployment }}) has used {{ $value | humanizePercentage }} "
              f"of its KV cache for 10 minutes (threshold {s.kv_cache_usage * 100:g}%): new requests wait and "
              "running ones get preempted."),
        Alert("MoxinRequestsQueueing",
              f"{q.engine_gauge(VLLM['waiting'], flt)} > {s.waiting_requests}",
              "10m", "warning",
              "Requests queue up in engine {{ $labels.instance }}",
              "{{ $value }} requests have been waiting for a batch slot in the engine at {{ $labels.instance }} "
              f"({{{{ $labels.deployment }}}}) for 10 minutes (threshold {s.waiting_requests})."),
        Alert("MoxinPreemptions",
              f"{q.engine_rate(VLLM['preemptions'], flt, '5m')} > {q.number(s.preemptions_per_second)}",
              "10m", "warning",
              "Engine {{ $labels.instance }} keeps preempting sequences",
              "The engine at {{ $labels.instance }} ({{ $labels.deployment }}) has preempted {{ $value | humanize }} "
              f"sequences per second for 10 minutes (threshold {s.preemptions_per_second:g}/s): its KV cache is "
              "too small for its batch, and preempted sequences are computed again."),
    ))


def _capacity(flt: Filter, s: AlertSettings) -> RuleGroup:
    capacity = q.predicted_capacity(_DEPLOYMENT, flt)
    actual_cost = q.actual_cost_per_million_tokens(_DEPLOYMENT, flt, "1h")
    planned_cost = q.predicted_cost_per_million_tokens(_DEPLOYMENT, flt)
    return RuleGroup("moxin.capacity", (
        Alert("MoxinDemandNearCapacity",
              _and(f"{q.request_rate(_DEPLOYMENT, flt, '10m')}\n  > {q.number(s.capacity_share)} * {capacity}",
                   f"{capacity} > 0", _busy(flt, s, "10m")),
              "15m", "warning",
              "{{ $labels.deployment }} is near its planned capacity: re-plan",
              "{{ $labels.deployment }} has answered {{ $value | humanize }} requests/s for 15 minutes, above "
              f"{s.capacity_share * 100:g}% of the capacity its plan predicts ({CONTROLLER['capacity'].name}): "
              "re-plan with the measured demand (moxin plan) before latency breaks the SLO."),
        Alert("MoxinCostDrift",
              # The planned cost has no sample where the plan has no speed (no tokens): nothing to drift from.
              _and(f"(\n{actual_cost}\n)\n  > {q.number(s.cost_drift)} * (\n{planned_cost}\n)", _busy(flt, s, "1h")),
              "30m", "warning",
              "{{ $labels.deployment }} costs more per token than planned",
              "{{ $labels.deployment }} has cost ${{ $value | printf \"%.2f\" }} per 1M output tokens over the last "
              f"hour, more than {s.cost_drift:g} times what its plan predicts: demand is below the plan, or "
              "the replicas decode slower than estimated."),
    ))


def _controller(flt: Filter, s: AlertSettings) -> RuleGroup:
    errors, loop = CONTROLLER["reconcile_errors"], CONTROLLER["reconcile"]
    return RuleGroup("moxin.controller", (
        Alert("MoxinReconcileErrors",
              f"{q.increase(errors, flt, '10m')} > 0",
              "15m", "warning",
              "The controller's {{ $labels.step }} step keeps failing",
              "The reconcile step {{ $labels.step }} has raised in every 10-minute window for 15 minutes "
              "({{ $value | humanize }} in the last 10): the fleet drifts from the plan."),
        Alert("MoxinReconcileSlow",
              f"{q.quantile(0.99, loop, ('namespace', *_TARGET), flt, '10m')} > {q.number(s.reconcile_p99_seconds)}",
              "15m", "warning",
              "The controller's reconcile loop is slow ({{ $labels.instance }})",
              "The p99 of the reconcile loop of the controller at {{ $labels.instance }} has been {{ $value | humanizeDuration }} for 15 minutes "
              f"(threshold {s.reconcile_p99_seconds:g}s): it reacts late to failures and plan changes."),
    ))


def _rollouts(flt: Filter) -> RuleGroup:
    phase, waiting, deadline = CONTROLLER["rollout_phase"], CONTROLLER["rollout_waiting"], CONTROLLER["rollout_deadline"]
    ended = q.series(phase, flt.and_("phase", "=~", "RolledBack|Failed"))
    return RuleGroup("moxin.rollouts", (
        Alert("MoxinRolloutFailed",
              f"{ended} == 1",
              "0m", "warning",
              "Rollout {{ $labels.rollout }} of {{ $labels.deployment }} is {{ $labels.phase }}",
              "The rollout {{ $labels.rollout }} ended {{ $labels.phase }}: a gate failed, the progress deadline "
              "passed or someone aborted it. RolledBack: all traffic is on the old side and the new side is removed; "
              "Failed: both sides run as they were, for a person to decide. `moxin rollout status` names the gate "
              "and its values."),
        Alert("MoxinRolloutStuck",
              f"{q.series(waiting, flt)} > {q.on(('namespace', 'rollout', 'deployment'))} {q.series(deadline, flt)}",
              "5m", "warning",
              "Rollout {{ $labels.rollout }} of {{ $labels.deployment }} is past its progress deadline",
              "The rollout {{ $labels.rollout }} has waited {{ $value | humanizeDuration }} for its new side's "
              "replicas at one step, longer than its progressDeadlineSeconds, and the controller has not ended it: "
              "its replicas do not become ready, or the controller's loop does not run."),
    ))


def rule_groups(settings: AlertSettings | None = None, namespace: str | None = None) -> tuple[RuleGroup, ...]:
    """Every rule group; ``namespace`` restricts every series to that namespace (the chart's, on Kubernetes)."""
    s = settings or AlertSettings()
    flt = Filter.equal(namespace=namespace) if namespace else NO_FILTER
    return (_availability(flt), _slo(flt, s), _saturation(flt, s), _capacity(flt, s), _controller(flt, s),
            _rollouts(flt))


def alerts(settings: AlertSettings | None = None, namespace: str | None = None) -> tuple[Alert, ...]:
    return tuple(a for g in rule_groups(settings, namespace) for a in g.alerts)


def alert_expressions(settings: AlertSettings | None = None, namespace: str | None = None
                      ) -> list[tuple[str, str]]:
    """(alert name, expression) of every rule: what an integration test evaluates against a real Prometheus."""
    return [(a.name, a.expr) for a in alerts(settings, namespace)]


def rules_document(settings: AlertSettings | None = None, namespace: str | None = None) -> dict[str, object]:
    """The Prometheus rules file (``groups:``), as data."""
    s = settings or AlertSettings()
    return {"groups": [{"name": g.name, "rules": [a.rule(s.runbook_url) for a in g.alerts]}
                       for g in rule_groups(s, namespace)]}


def rules_text(settings: AlertSettings | None = None, namespace: str | None = None) -> str:
    """The rules file as YAML, with a header saying where it comes from."""
    return "# Generated by moxin from its metric schema (moxin render alerts); do not edit.\n" \
           + to_yaml(rules_document(settings, namespace))


def chart_rules_text() -> str:
    """The chart's ``rules/moxin.rules.yaml``: the default settings, scoped to ``CHART_NAMESPACE``."""
    return rules_text(namespace=CHART_NAMESPACE)


def runbook_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


if __name__ == "__main__":
    import sys

    sys.stdout.write(chart_rules_text())
