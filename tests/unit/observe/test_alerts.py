"""observe/alerts.py: the rules are valid for Prometheus 2.42 (promtool check rules), every alert fires when it
should and stays quiet on an idle pool (promtool test rules on tests/data/alerts/), the chart holds the generated
file, and `moxin render alerts` writes it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.observe.alerts import (
    CHART_NAMESPACE,
    CHART_RULES_PATH,
    AlertSettings,
    alert_expressions,
    alerts,
    chart_rules_text,
    rules_document,
    rules_text,
    runbook_anchor,
)
from orchestrator.observe.queries import engine_names
from orchestrator.spec.metrics import CONTROLLER, ROUTER, SLO_OBJECTIVES, VLLM

ROOT = Path(__file__).resolve().parents[3]
RULE_TESTS = ROOT / "tests" / "data" / "alerts" / "moxin.rules.test.yaml"
CHART_RULES = ROOT / "helm" / "moxin" / CHART_RULES_PATH

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def _rule_tests(tmp_path: Path, rules: str, tests: Path | str = RULE_TESTS) -> subprocess.CompletedProcess[str]:
    """promtool test rules on ``tests`` (a file, or its text) with ``rules`` as its moxin.rules.yaml."""
    (tmp_path / "moxin.rules.yaml").write_text(rules)
    test_file = tmp_path / "moxin.rules.test.yaml"
    test_file.write_text(tests.read_text() if isinstance(tests, Path) else tests)
    return _promtool("test", "rules", test_file)


def _cases() -> tuple[set[str], set[str]]:
    """(alerts with a firing case, alerts with a quiet case) in the promtool test file."""
    firing, quiet = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    return firing, quiet


# ------------------------------------------------------------------------------------------------------ promtool

@needs_promtool
def test_promtool_accepts_the_generated_rules_and_the_charts(tmp_path):
    generated = tmp_path / "moxin.rules.yaml"
    generated.write_text(rules_text())
    for path in (generated, CHART_RULES):
        result = _promtool("check", "rules", path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@needs_promtool
def test_every_alert_fires_when_it_should_and_not_otherwise(tmp_path):
    result = _rule_tests(tmp_path, rules_text())
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_idle_pool_case_relies_on_the_low_traffic_guard(tmp_path):
    """Without the guard the idle pool's stray failures and slow requests fire: the quiet case tests the guard."""
    result = _rule_tests(tmp_path, rules_text(AlertSettings(min_requests_per_second=1e-9)))
    assert result.returncode != 0
    failed = set(re.findall(r"alertname: (\w+), time: 7h", result.stdout + result.stderr))
    assert failed == {"MoxinTTFTAboveSLO", "MoxinTPOTAboveSLO", "MoxinErrorBudgetBurnFast", "MoxinErrorBudgetBurnSlow",
                      "MoxinCostDrift"}


@needs_promtool
def test_a_namespace_scoped_rule_ignores_other_namespaces(tmp_path):
    tests = """
rule_files: [moxin.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'up{job="moxin-router", namespace="ai", instance="a:8080"}', values: '0x10'}
      - {series: 'up{job="moxin-router", namespace="other", instance="b:8080"}', values: '0x10'}
    alert_rule_test:
      - eval_time: 10m
        alertname: MoxinRouterTargetDown
        exp_alerts:
          - exp_labels: {severity: critical, job: moxin-router, namespace: ai, instance: 'a:8080'}
            exp_annotations:
              summary: A router (a:8080) does not answer its metrics scrape
              description: 'Prometheus has failed to scrape a router at a:8080 (job moxin-router) for 5 minutes. A router that stops answering its scrape has most likely stopped or hung: its clients lose their requests in flight (new connections go to the routers still on the port, if any) and its request metrics (latency, errors, capacity) are missing.'
              runbook_url: https://moxin.dev/runbook#moxinroutertargetdown
"""
    result = _rule_tests(tmp_path, rules_text(namespace="ai"), tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    names = {a.name for a in alerts()}
    firing, quiet = _cases()
    assert names - firing == set(), "alerts without a firing case in tests/data/alerts/moxin.rules.test.yaml"
    assert names - quiet == set(), "alerts without a quiet case in tests/data/alerts/moxin.rules.test.yaml"
    assert firing | quiet <= names, "the test file names alerts that do not exist"


# --------------------------------------------------------------------------------------------------- the rules

def test_every_rule_has_a_severity_summary_description_and_runbook_link():
    for group in rules_document()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            notes = rule["annotations"]
            assert set(notes) == {"summary", "description", "runbook_url"}, rule["alert"]
            assert "$labels." in notes["summary"] + notes["description"], rule["alert"]
            assert notes["runbook_url"] == f"https://moxin.dev/runbook#{rule['alert'].lower()}"


def test_every_runbook_link_has_its_section_in_the_readme():
    headings = {runbook_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", (ROOT / "README.md").read_text(), re.MULTILINE)}
    assert {a.anchor for a in alerts()} - headings == set()


def test_alert_names_are_unique_and_expressions_listed():
    pairs = alert_expressions()
    assert len({name for name, _ in pairs}) == len(pairs) == len(alerts())
    assert dict(pairs)["MoxinRouterTargetDown"] == 'up{job="moxin-router"} == 0'


def test_engine_alerts_read_every_vllm_name_escaped_or_not():
    exprs = dict(alert_expressions())
    for alert, metrics in (("MoxinKVCacheNearlyFull", ("kv_usage", "running")), ("MoxinRequestsQueueing", ("waiting",)),
                           ("MoxinPreemptions", ("preemptions",))):
        for metric in metrics:
            for name in engine_names(VLLM[metric]):  # vllm:... and, as Prometheus 2.x stores it, vllm_...
                assert f"{name}{{" in exprs[alert], (alert, name)


def test_every_slo_objective_the_controller_exports_has_its_alert():
    exprs = dict(alert_expressions())
    for objective in SLO_OBJECTIVES:  # e.g. ttft_p95 -> MoxinTTFTAboveSLO, at the 0.95 quantile
        kind, quantile = objective.split("_p")
        expr = exprs[f"Moxin{kind.upper()}AboveSLO"]
        assert f'objective="{objective}"' in expr and f"histogram_quantile(0.{quantile}," in expr


def test_the_availability_objective_sets_the_burn_rate_thresholds():
    exprs = dict(alert_expressions(AlertSettings(availability_objective=0.999)))
    assert exprs["MoxinErrorBudgetBurnFast"].count("> 0.0144") == 2  # 14.4 x 0.1%, over both windows
    assert exprs["MoxinErrorBudgetBurnSlow"].count("> 0.006") == 2


def test_a_namespace_scopes_every_selector():
    for (name, scoped), (_, plain) in zip(alert_expressions(namespace="ai"), alert_expressions(), strict=True):
        assert scoped.count("{") == scoped.count('namespace="ai"') > 0, name
        assert scoped.replace('namespace="ai",', "").replace('namespace="ai"', "") == plain, name


def test_rules_name_their_series_from_the_schema():
    exprs = dict(alert_expressions())
    assert CONTROLLER["slo_target"].series in exprs["MoxinTTFTAboveSLO"]
    assert ROUTER["ttft"].bucket in exprs["MoxinTTFTAboveSLO"]
    assert ROUTER["generation_tokens"].series in exprs["MoxinCostDrift"]
    assert CONTROLLER["reconcile_errors"].series == "moxin_controller_reconcile_errors_total"


def test_settings_refuse_a_slow_loop_threshold_no_quantile_can_reach():
    with pytest.raises(ValueError, match="reconcile_p99_seconds"):
        AlertSettings(reconcile_p99_seconds=5)


# ------------------------------------------------------------------------------------------------ chart and CLI

def test_the_charts_rules_file_is_the_generated_one():
    assert CHART_RULES.read_text() == chart_rules_text(), \
        "helm/moxin/rules/moxin.rules.yaml is stale: python -m orchestrator.observe.alerts > " \
        "helm/moxin/rules/moxin.rules.yaml"
    assert f'namespace="{CHART_NAMESPACE}"' in CHART_RULES.read_text()


def test_render_alerts_writes_the_rules_file(tmp_path):
    out = tmp_path / "rules" / "moxin.rules.yaml"
    result = CliRunner().invoke(cli, ["render", "alerts", "--availability-objective", "0.995", "--namespace", "ai",
                                      "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.read_text() == rules_text(AlertSettings(availability_objective=0.995), "ai")
    assert [p.name for p in out.parent.iterdir()] == ["moxin.rules.yaml"]  # no temporary file left behind


def test_render_alerts_prints_to_stdout_without_o():
    result = CliRunner().invoke(cli, ["render", "alerts"], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout == rules_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--availability-objective", "1"], "0.5<x<1"),
    (["--namespace", "Bad_NS"], "not a DNS label"),
    (["--runbook-url", "docs/runbook"], "--runbook-url"),
])
def test_render_alerts_refuses_bad_settings_with_exit_2(args, message):
    result = CliRunner().invoke(cli, ["render", "alerts", *args])
    assert result.exit_code == 2 and message in result.output, result.output
