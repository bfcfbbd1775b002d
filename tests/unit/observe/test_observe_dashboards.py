"""observe/dashboards.py: the five dashboards pass the linter (dashboard_lint.py), every expression parses
(promtool), the output is reproducible, and the chart ships exactly what the code generates."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml
from dashboard_lint import lint

from orchestrator.observe.dashboards import (
    dashboard_specs,
    dashboards,
    iter_panels,
    panel_queries,
    render_dashboards,
    write_dashboards,
)
from orchestrator.observe.queries import substitute
from orchestrator.render.kubernetes import chart_dir

DASHBOARDS = dashboards()


def _panel(model, title):
    return next(p for p in iter_panels(model) if p.get("title") == title)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_dashboard_passes_the_linter(name):
    assert lint(DASHBOARDS[name]) == []


def test_the_five_dashboards_have_stable_unique_uids_and_panel_ids():
    uids = [m["uid"] for m in DASHBOARDS.values()]
    assert uids == ["moxin-fleet", "moxin-deployment-slo", "moxin-pools", "moxin-engines", "moxin-controller"]
    for model in DASHBOARDS.values():
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids, model["uid"]


def test_the_linter_catches_a_bad_panel():
    """Each rule bites: one broken copy of a real panel per rule, and the problem the linter names."""
    model = copy.deepcopy(DASHBOARDS["moxin-fleet.json"])
    panel = _panel(model, "Requests/s by deployment")
    del panel["description"]
    del panel["fieldConfig"]["defaults"]["unit"]
    panel["targets"][0]["datasource"] = {"type": "prometheus", "uid": "some-fixed-uid"}
    panel["targets"][0]["expr"] = 'sum(rate(moxin_router_requests_total{deployment=~"$deployment"}[5m]))'
    panel["targets"].append({"refId": "B", "datasource": panel["datasource"], "expr": "moxin_typo_total{} + up"})
    problems = lint(model)
    assert sorted(problems) == sorted([
        "Requests/s by deployment: no description",
        "Requests/s by deployment: no unit",
        "Requests/s by deployment: target A does not use the datasource variable",
        "Requests/s by deployment: target A: range [5m] is not [$__rate_interval]",
        'Requests/s by deployment: target A: moxin_router_requests_total lacks pool=~"$pool"',
        'Requests/s by deployment: target A: moxin_router_requests_total lacks hardware=~"$hardware"',
        'Requests/s by deployment: target A: moxin_router_requests_total lacks engine=~"$engine"',
        "Requests/s by deployment: target B: moxin_typo_total is not in the metric schema",
    ])


def test_the_linter_wants_the_datasource_and_filter_variables():
    model = copy.deepcopy(DASHBOARDS["moxin-controller.json"])
    model["templating"]["list"] = [v for v in model["templating"]["list"] if v["name"] not in ("datasource", "pool")]
    problems = lint(model)
    assert "dashboard: no Prometheus datasource variable" in problems
    assert "dashboard: no pool variable" in problems
    assert any(p.endswith("$pool is not a dashboard variable") for p in problems)


def test_every_panel_has_a_unit_and_a_description_and_every_rate_the_rate_interval():
    """The linter's rules, restated on the specs the dashboards are built from (a unit is never empty)."""
    for spec in dashboard_specs():
        for row in spec.rows:
            for panel in row.panels:
                assert panel.unit and panel.description and panel.queries, (spec.uid, panel.title)
                for query in panel.queries:
                    assert "rate(" not in query.expr or "[$__rate_interval]" in query.expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_every_panel_expression_parses(tmp_path):
    """promtool cannot read dashboards; each expression (variables substituted) as a recording rule it can."""
    found = panel_queries()
    rules = [{"record": f"moxin_dashboard:query_{i}", "expr": substitute(pq.expr)} for i, pq in enumerate(found)]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_panel_queries_lists_every_target_with_its_dashboard_and_panel():
    found = panel_queries()
    assert len(found) == sum(len(p.get("targets", [])) for m in DASHBOARDS.values() for p in iter_panels(m))
    slo = [pq for pq in found if pq.dashboard == "moxin / Deployment SLO" and pq.panel == "Time to first token"]
    assert [pq.ref_id for pq in slo] == ["A", "B", "C", "D"]
    assert slo[3].expr == 'moxin_slo_target_seconds{deployment=~"$deployment",objective="ttft_p95"}'
    assert all(pq.uid for pq in found)


def test_slo_targets_and_planned_values_are_drawn_dashed():
    panel = _panel(DASHBOARDS["moxin-deployment-slo.json"], "Time per output token")
    dashed = [o["matcher"] for o in panel["fieldConfig"]["overrides"]
              if {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}} in o["properties"]]
    assert dashed == [{"id": "byFrameRefID", "options": "D"}]
    assert "tpot_p95" in panel["targets"][3]["expr"]


def test_every_vllm_series_is_queried_under_each_of_its_names():
    exprs = " ".join(pq.expr for pq in panel_queries() if pq.dashboard == "moxin / Engines")
    for old in ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hits_total",
                "vllm:time_per_output_token_seconds_bucket", "vllm:num_preemptions{"):
        assert old in exprs


def test_the_controller_dashboard_ends_with_the_rollouts_row_on_the_controller_series():
    model = DASHBOARDS["moxin-controller.json"]
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows[-1] == "Rollouts"
    start = max(i for i, p in enumerate(model["panels"]) if p["type"] == "row")
    panels = model["panels"][start + 1:]
    assert panels[0]["type"] == "text" and "rollout" in panels[0]["options"]["content"]
    exprs = " ".join(t["expr"] for p in panels[1:] for t in p["targets"])
    for series in ("moxin_rollout_canary_weight_percent", "moxin_rollout_step", "moxin_rollout_phase",
                   "moxin_rollout_gate_value"):
        assert series in exprs, series


def test_rendering_twice_gives_identical_bytes():
    first, second = render_dashboards(), render_dashboards()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n") and json.loads(text)  # valid JSON, one trailing newline


def test_write_dashboards_writes_every_file_and_removes_stale_ones(tmp_path):
    (tmp_path / "moxin-overview.json").write_text("{}")
    (tmp_path / "mine.json").write_text("{}")
    written = write_dashboards(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([*render_dashboards(), "mine.json"])
    assert [p.read_text() for p in written] == list(render_dashboards().values())


def test_the_chart_ships_the_generated_dashboards():
    shipped = {p.name: p.read_text() for p in (chart_dir() / "dashboards").glob("*.json")}
    assert shipped == render_dashboards(), \
        "helm/moxin/dashboards is stale: python -m orchestrator.observe.dashboards helm/moxin/dashboards"


def test_each_dashboard_fits_a_configmap_with_room_to_spare():
    """The chart puts each dashboard in its own ConfigMap (limit 1 MiB)."""
    assert max(len(t.encode()) for t in render_dashboards().values()) < 256 * 1024
