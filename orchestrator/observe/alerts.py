"""moxin's Prometheus alert rules, built from the metric schema (``spec/metrics.py``): the rule groups as values,
and the rules file Prometheus loads (``moxin render alerts``, and the chart's PrometheusRule through
``helm/moxin/rules/moxin.rules.yaml``).

Every rule names its series through the schema objects, carries a severity, a summary and a description templated
with ``$labels``/``$value``, and a ``runbook_url`` into the README's runbook; every rule computed from traffic is
guarded by a minimum request rate so that an idle pool never fires. ``tests/unit/observe/test_alerts.py`` runs
``promtool test rules`` on every alert, firing and not.

The PromQL helpers here are private on purpose: they are to fold into ``observe/queries.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.output import to_yaml
from orchestrator.spec.metrics import (
    CONTROLLER,
    RECONCILE_BUCKETS,
    ROUTER,
    SCRAPE_JOBS,
    VLLM,
    EngineMetric,
    Metric,
)

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
_ERRORS = {"code": ("=~", "5..")}
"""Router requests that failed: 499 (the client went away) and 4xx are the client's doing, not an outage."""
_SLO_QUANTILE = {"ttft_p95": (ROUTER["ttft"], 0.95), "tpot_p95": (ROUTER["tpot"], 0.95)}
"""The router histogram and quantile behind each objective of ``moxin_slo_target_seconds``."""


def _number(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True)
class _Q:
    """Selectors with the scope matchers (a namespace, or none) every series of a rule is restricted to."""

    scope: Mapping[str, str]

    def sel(self, series: str, matchers: Mapping[str, tuple[str, str] | str] | None = None) -> str:
        pairs = [(k, ("=", v) if isinstance(v, str) else v) for k, v in (matchers or {}).items()]
        pairs += [(k, ("=", v)) for k, v in self.scope.items()]
        inner = ", ".join(f'{k}{op}"{_escape(v)}"' for k, (op, v) in pairs)
        return f"{series}{{{inner}}}" if inner else series

    def rate(self, series: str, window: str, matchers: Mapping[str, tuple[str, str] | str] | None = None) -> str:
        return f"rate({self.sel(series, matchers)}[{window}])"

    def either(self, metric: EngineMetric, wrap: str = "{}") -> str:
        """The series under each of its vLLM names (``a or b``): the first a fleet exports wins."""
        return "(" + " or ".join(wrap.format(self.sel(n)) for n in metric.names) + ")"

    def engine_rate(self, metric: EngineMetric, window: str) -> str:
        return self.either(metric, f"rate({{}}[{window}])")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def _sum(expr: str, by: tuple[str, ...] = _DEPLOYMENT) -> str:
    return f"sum by ({_by(by)}) ({expr})"


def _on(by: tuple[str, ...] = _DEPLOYMENT) -> str:
    return f"on ({_by(by)})"


def _ratio(q: _Q, window: str) -> str:
    """Share of a deployment's router requests that failed over ``window``."""
    r = ROUTER["requests"]
    return f"{_sum(q.rate(r.series, window, _ERRORS))}\n  /\n{_sum(q.rate(r.series, window))}"


def _busy(q: _Q, settings: AlertSettings, window: str, metric: Metric = ROUTER["requests"]) -> str:
    """The low-traffic guard: deployments answering at least the minimum request rate."""
    return f"{_sum(q.rate(metric.series if metric.kind == 'counter' else metric.count, window))} " \
           f">= {_number(settings.min_requests_per_second)}"


def _per_million_tokens(cost_per_hour: str, tokens_per_second: str) -> str:
    return f"{cost_per_hour} / ({tokens_per_second} * 3600) * 1e6"


# ----------------------------------------------------------------------------------------------------- the rules

def _availability(q: _Q) -> RuleGroup:
    desired, ready = CONTROLLER["desired"].series, CONTROLLER["ready"].series
    assignment = (*_DEPLOYMENT, "variant", "pool")
    down = [
        Alert("MoxinDeploymentDown",
              f"{_sum(q.sel(desired))} > 0\nunless {_on()}\n{_sum(q.sel(ready))} > 0",
              "10m", "critical",
              "{{ $labels.deployment }} has no ready replica",
              "Deployment {{ $labels.deployment }} asks for {{ $value }} replicas and none has been ready for 10 "
              "minutes: its requests fail with 503."),
        Alert("MoxinReplicasBelowDesired",
              f"{_sum(q.sel(ready), assignment)}\n  < {_on(assignment)}\n{_sum(q.sel(desired), assignment)}\n"
              f"and {_on()}\n{_sum(q.sel(ready))} > 0",
              "10m", "warning",
              "{{ $labels.deployment }} runs fewer replicas than planned",
              "Only {{ $value }} replicas of {{ $labels.deployment }} ({{ $labels.variant }} on pool "
              "{{ $labels.pool }}) have been ready for 10 minutes, fewer than the plan asks for."),
    ]
    targets = [
        ("MoxinRouterTargetDown", "router", "critical", "a router",
         ("It serves /metrics on its API port, so its clients most likely get no answer either; its request "
          "metrics (latency, errors, capacity) are missing.")),
        ("MoxinEngineTargetDown", "engine", "warning", "an engine",
         "The engine's own metrics (KV cache, queue, preemptions) are missing; the router may still reach it."),
        ("MoxinControllerTargetDown", "controller", "warning", "the controller",
         ("Nothing reconciles: failed replicas are not replaced and the plan's gauges (replicas, SLO targets, "
          "predictions) are missing, so the availability, SLO, capacity and cost alerts cannot fire.")),
    ]
    down += [Alert(name, f"{q.sel('up', {'job': SCRAPE_JOBS[source]})} == 0", "5m", severity,
                   f"{what.capitalize()} ({{{{ $labels.instance }}}}) does not answer its metrics scrape",
                   f"Prometheus has failed to scrape {what} at {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) "
                   f"for 5 minutes. {consequence}")
             for name, source, severity, what, consequence in targets]
    return RuleGroup("moxin.availability", tuple(down))


def _slo(q: _Q, s: AlertSettings) -> RuleGroup:
    rules = []
    for objective, (metric, quantile) in _SLO_QUANTILE.items():
        what = {"ttft": "time to first token", "tpot": "time per output token"}[objective.split("_")[0]]
        name = f"Moxin{objective.split('_')[0].upper()}AboveSLO"
        target = q.sel(CONTROLLER["slo_target"].series, {"objective": objective})
        rules.append(Alert(
            name,
            f"histogram_quantile({_number(quantile)}, {_sum(q.rate(metric.bucket, '5m'), (*_DEPLOYMENT, 'le'))})\n"
            f"  > {_on()}\nmax by ({_by(_DEPLOYMENT)}) ({target})\n"
            f"and {_on()}\n{_busy(q, s, '5m', metric)}",
            "10m", "warning",
            f"{{{{ $labels.deployment }}}} misses its {objective} SLO",
            f"The p{round(quantile * 100)} {what} of {{{{ $labels.deployment }}}} has been "
            f"{{{{ $value | humanizeDuration }}}} for 10 minutes, above the deployment's {objective} target "
            f"({CONTROLLER['slo_target'].name})."))
    budget = 1 - s.availability_objective
    for name, (long, short), factor, for_, severity in (
            ("MoxinErrorBudgetBurnFast", ("1h", "5m"), 14.4, "2m", "critical"),
            ("MoxinErrorBudgetBurnSlow", ("6h", "30m"), 6.0, "15m", "warning")):
        limit = _number(factor * budget)
        rules.append(Alert(
            name,
            f"(\n{_ratio(q, long)}\n) > {limit}\nand {_on()}\n(\n{_ratio(q, short)}\n) > {limit}\n"
            f"and {_on()}\n{_busy(q, s, short)}",
            for_, severity,
            f"{{{{ $labels.deployment }}}} burns its error budget {_number(factor)}x too fast",
            f"{{{{ $value | humanizePercentage }}}} of the requests to {{{{ $labels.deployment }}}} failed (5xx) over "
            f"the last {long}, and over the last {short} too: {_number(factor)} times the "
            f"{_number(budget * 100)}% error budget of a {_number(s.availability_objective * 100)}% availability "
            "objective."))
    return RuleGroup("moxin.slo", tuple(rules))


def _saturation(q: _Q, s: AlertSettings) -> RuleGroup:
    target = ("job", "instance")
    return RuleGroup("moxin.saturation", (
        Alert("MoxinKVCacheNearlyFull",
              f"{q.either(VLLM['kv_usage'])} > {_number(s.kv_cache_usage)}\n"
              f"and {_on(target)}\n({q.sel(VLLM['running'].names[0])} > 0)",
              "10m", "warning",
              "Engine {{ $labels.instance }} has its KV cache nearly full",
              "The engine at {{ $labels.instance }} ({{ $labels.deployment }}) has used {{ $value | humanizePercentage }} "
              f"of its KV cache for 10 minutes (threshold {_number(s.kv_cache_usage * 100)}%): new requests wait and "
              "running ones get preempted."),
        Alert("MoxinRequestsQueueing",
              f"{q.sel(VLLM['waiting'].names[0])} > {s.waiting_requests}",
              "10m", "warning",
              "Requests queue up in engine {{ $labels.instance }}",
              "{{ $value }} requests have been waiting for a batch slot in the engine at {{ $labels.instance }} "
              f"({{{{ $labels.deployment }}}}) for 10 minutes (threshold {s.waiting_requests})."),
        Alert("MoxinPreemptions",
              f"{q.engine_rate(VLLM['preemptions'], '5m')} > {_number(s.preemptions_per_second)}",
              "10m", "warning",
              "Engine {{ $labels.instance }} keeps preempting sequences",
              "The engine at {{ $labels.instance }} ({{ $labels.deployment }}) has preempted {{ $value | humanize }} "
              f"sequences per second for 10 minutes (threshold {_number(s.preemptions_per_second)}/s): its KV cache is "
              "too small for its batch, and preempted sequences are computed again."),
    ))


def _capacity(q: _Q, s: AlertSettings) -> RuleGroup:
    requests, capacity = ROUTER["requests"], CONTROLLER["capacity"]
    tokens, cost, predicted = ROUTER["generation_tokens"], CONTROLLER["cost"], CONTROLLER["output_tokens"]
    actual_cost = _per_million_tokens(_sum(q.sel(cost.series)), _sum(q.rate(tokens.series, "1h")))
    planned_cost = _per_million_tokens(_sum(q.sel(cost.series)), _sum(q.sel(predicted.series)))
    return RuleGroup("moxin.capacity", (
        Alert("MoxinDemandNearCapacity",
              f"{_sum(q.rate(requests.series, '10m'))}\n  > {_number(s.capacity_share)} * "
              f"{_sum(q.sel(capacity.series))}\nand {_on()}\n{_sum(q.sel(capacity.series))} > 0\n"
              f"and {_on()}\n{_busy(q, s, '10m')}",
              "15m", "warning",
              "{{ $labels.deployment }} is near its planned capacity: re-plan",
              "{{ $labels.deployment }} has answered {{ $value | humanize }} requests/s for 15 minutes, above "
              f"{_number(s.capacity_share * 100)}% of the capacity its plan predicts ({capacity.name}): re-plan with "
              "the measured demand (moxin plan) before latency breaks the SLO."),
        Alert("MoxinCostDrift",
              f"(\n{actual_cost}\n)\n  > {_number(s.cost_drift)} * (\n{planned_cost}\n)\n"
              f"and {_on()}\n{_sum(q.sel(predicted.series))} > 0\nand {_on()}\n{_busy(q, s, '1h')}",
              "30m", "warning",
              "{{ $labels.deployment }} costs more per token than planned",
              "{{ $labels.deployment }} has cost ${{ $value | printf \"%.2f\" }} per 1M output tokens over the last "
              f"hour, more than {_number(s.cost_drift)} times what its plan predicts: demand is below the plan, or "
              "the replicas decode slower than estimated."),
    ))


def _controller(q: _Q, s: AlertSettings) -> RuleGroup:
    errors, loop = CONTROLLER["reconcile_errors"], CONTROLLER["reconcile"]
    return RuleGroup("moxin.controller", (
        Alert("MoxinReconcileErrors",
              f"increase({q.sel(errors.series)}[10m]) > 0",
              "15m", "warning",
              "The controller's {{ $labels.step }} step keeps failing",
              "The reconcile step {{ $labels.step }} has raised in every 10-minute window for 15 minutes "
              "({{ $value | humanize }} in the last 10): the fleet drifts from the plan."),
        Alert("MoxinReconcileSlow",
              f"histogram_quantile(0.99, {_sum(q.rate(loop.bucket, '10m'), ('namespace', 'job', 'instance', 'le'))})"
              f" > {_number(s.reconcile_p99_seconds)}",
              "15m", "warning",
              "The controller's reconcile loop is slow ({{ $labels.instance }})",
              "The p99 of the reconcile loop of the controller at {{ $labels.instance }} has been {{ $value | humanizeDuration }} for 15 minutes "
              f"(threshold {_number(s.reconcile_p99_seconds)}s): it reacts late to failures and plan changes."),
    ))


def rule_groups(settings: AlertSettings | None = None, namespace: str | None = None) -> tuple[RuleGroup, ...]:
    """Every rule group; ``namespace`` restricts every series to that namespace (the chart's, on Kubernetes)."""
    s = settings or AlertSettings()
    q = _Q({"namespace": namespace} if namespace else {})
    return (_availability(q), _slo(q, s), _saturation(q, s), _capacity(q, s), _controller(q, s))


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
