"""The Plan is a typed document: it round-trips through YAML and the loader, has a schema, and a bad plan file is
reported like any bad document (file:line:field, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.output import to_yaml
from orchestrator.planner import plan
from orchestrator.spec import load_catalog
from orchestrator.spec.loader import load_plan
from orchestrator.spec.plan import Plan

ROOT = Path(__file__).resolve().parents[3]
MAAS = [ROOT / "manifests/fleets/maas.yaml", ROOT / "manifests/deployments/maas.yaml"]


@pytest.fixture(scope="module")
def maas_plan() -> Plan:
    catalog = load_catalog(MAAS)
    return plan(catalog.fleets["maas"], list(catalog.deployments.values()), catalog)


def test_a_plan_written_as_yaml_loads_back_equal(maas_plan, tmp_path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(to_yaml(maas_plan.to_json()))
    loaded = load_plan(path)
    assert loaded == maas_plan
    assert loaded.spec.assignments and loaded.spec.assignments[0].launch.argv  # not an empty shell


def test_the_written_plan_keeps_its_documented_keys(maas_plan) -> None:
    doc = maas_plan.to_json()
    assert list(doc) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert doc["metadata"] == {"name": "maas"}
    a = doc["spec"]["assignments"][0]
    assert list(a)[:6] == ["deployment", "model", "variant", "pool", "hardware", "engine"]
    assert {"tensorParallel", "pipelineParallel", "devicesPerReplica", "costUsdPerHour"} <= set(a)
    assert {"requestModel", "readinessTimeoutSeconds", "healthPath"} <= set(a["launch"])
    assert "unpricedPools" not in doc["status"]  # every maas pool has a price


def test_schema_of_plan_describes_every_field() -> None:
    out = CliRunner().invoke(cli, ["schema", "plan"])
    assert out.exit_code == 0, out.output
    schema = json.loads(out.output)
    assignment = schema["$defs"]["Assignment"]["properties"]
    assert "tensorParallel" in assignment and assignment["replicas"]["minimum"] == 0
    undescribed = [f"{name}.{field}" for name, d in schema["$defs"].items()
                   for field, prop in d.get("properties", {}).items() if not prop.get("description")]
    assert undescribed == []


def _bad_plan(maas_plan: Plan, tmp_path: Path) -> Path:
    text = to_yaml(maas_plan.to_json()).replace("  replicas: ", "  replicas: many", 1)
    path = tmp_path / "bad-plan.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", [
    ["plan", "-f", str(MAAS[0]), "-f", str(MAAS[1]), "--previous", "{bad}"],
    ["plan", "--diff", "{bad}", "{bad}"],
    ["render", "helm", "-f", "{bad}"],
])
def test_a_bad_plan_file_is_reported_at_its_line_and_field(maas_plan, tmp_path, command) -> None:
    bad = _bad_plan(maas_plan, tmp_path)
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "replicas: many" in text)
    out = CliRunner().invoke(cli, [str(bad) if c == "{bad}" else c for c in command])
    assert out.exit_code == 2, out.output
    assert f"{bad}:{line}" in out.output and "spec.assignments[0].replicas" in out.output
    assert "Traceback" not in out.output


def test_engine_launch_with_port_moves_only_the_port(maas_plan) -> None:
    launch = maas_plan.spec.assignments[0].launch
    moved = launch.with_port(9123)
    assert moved.port == 9123 and moved.argv[moved.argv.index("--port") + 1] == "9123"
    assert [x for x in moved.argv if x != "9123"] == [x for x in launch.argv if x != str(launch.port)]
    assert launch.port == 8000  # frozen: the plan's launch is untouched


def test_engine_launch_with_host_moves_only_the_host(maas_plan) -> None:
    launch = maas_plan.spec.assignments[0].launch
    assert launch.argv[launch.argv.index("--host") + 1] == "0.0.0.0"
    moved = launch.with_host("127.0.0.1")
    i = moved.argv.index("--host") + 1
    assert moved.argv[i] == "127.0.0.1"
    assert moved.argv[:i] + moved.argv[i + 1:] == launch.argv[:i] + launch.argv[i + 1:]
    assert moved.port == launch.port and moved.env == launch.env
    assert launch.argv[i] == "0.0.0.0"  # the plan's launch is untouched
