"""`moxin render dashboards`: the files the chart ships, written atomically; a bad directory exits 2 with a hint."""

from __future__ import annotations

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.observe.dashboards import render_dashboards


def test_render_dashboards_writes_the_dashboards_the_chart_ships(tmp_path):
    out = tmp_path / "dashboards"
    result = CliRunner().invoke(cli, ["render", "dashboards", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_text() for p in out.iterdir()} == render_dashboards()
    assert "wrote 5 dashboards" in result.output


def test_render_dashboards_into_a_file_exits_2_with_a_hint(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["render", "dashboards", "-o", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot write the dashboards" in result.output and "To fix" in result.output
