"""A dashboard linter in the spirit of Grafana's dashboard-linter, for moxin's dashboard JSON: what Grafana loads is
what it checks. ``lint(model)`` returns every problem as "panel title: what is wrong"; an empty list passes.

Rules: a Prometheus datasource variable that every panel and every target uses; every panel has a title and a
description, every panel with targets a unit; every range in an expression is ``$__rate_interval``; every metric an
expression names exists in the schema (moxin's tables, every vLLM name), is selected with braces, and matches each
filter variable (deployment, pool, hardware, engine) on the labels it carries; every variable an expression uses is
defined.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.observe.dashboards import iter_panels
from orchestrator.observe.queries import FILTER_LABELS, RATE_INTERVAL, known_series

METRIC = re.compile(r"(?<![\w:])((?:moxin_|vllm[:_])[A-Za-z0-9_:]*)(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RANGE = re.compile(r"\[([^\]]*)\]")
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def lint(model: dict[str, Any]) -> list[str]:
    variables = {v.get("name"): v for v in model.get("templating", {}).get("list", [])}
    problems = _variables(variables)
    datasource = next((name for name, v in variables.items()
                       if v.get("type") == "datasource" and v.get("query") == "prometheus"), None)
    for panel in iter_panels(model):
        problems += [f"{panel.get('title') or panel.get('id')}: {p}" for p in _panel(panel, datasource, variables)]
    return problems


def _variables(variables: dict[str, Any]) -> list[str]:
    problems = []
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables.values()):
        problems.append("dashboard: no Prometheus datasource variable")
    for name in FILTER_LABELS:
        v = variables.get(name)
        if v is None:
            problems.append(f"dashboard: no {name} variable")
        elif not (v.get("multi") and v.get("includeAll")) or "label_values(" not in str(v.get("query", "")):
            problems.append(f"dashboard: variable {name} is not a multi-value label_values query with All")
    return problems


def _uses(ref: Any, datasource: str | None) -> bool:
    return isinstance(ref, dict) and ref.get("uid") in (f"${{{datasource}}}", f"${datasource}")


def _panel(panel: dict[str, Any], datasource: str | None, variables: dict[str, Any]) -> list[str]:
    problems = []
    if not panel.get("title"):
        problems.append("no title")
    if not panel.get("description"):
        problems.append("no description")
    targets = panel.get("targets", [])
    if not targets:
        return problems
    if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
        problems.append("no unit")
    if not _uses(panel.get("datasource"), datasource):
        problems.append("does not use the datasource variable")
    for target in targets:
        ref = target.get("refId", "?")
        if not _uses(target.get("datasource"), datasource):
            problems.append(f"target {ref} does not use the datasource variable")
        problems += [f"target {ref}: {p}" for p in expression_problems(target.get("expr", ""), variables)]
    return problems


def expression_problems(expr: str, variables: dict[str, Any]) -> list[str]:
    """What is wrong with one expression by the rules above."""
    problems = []
    if not expr.strip():
        return ["empty expression"]
    for window in RANGE.findall(expr):
        if window != RATE_INTERVAL:
            problems.append(f"range [{window}] is not [{RATE_INTERVAL}]")
    known = known_series()
    for name, braces in METRIC.findall(expr):
        if name not in known:
            problems.append(f"{name} is not in the metric schema")
            continue
        if not braces:
            problems.append(f"{name} is selected without label matchers")
            continue
        matchers = {(label, op, value) for label, op, value in MATCHER.findall(braces)}
        for label in FILTER_LABELS:
            if label in known[name] and (label, "=~", f"${label}") not in matchers:
                problems.append(f'{name} lacks {label}=~"${label}"')
    for name in VARIABLE.findall(expr):
        if name != RATE_INTERVAL[1:] and name not in variables:
            problems.append(f"${name} is not a dashboard variable")
    return problems
