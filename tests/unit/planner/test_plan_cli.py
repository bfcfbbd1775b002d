"""`moxin plan` on the shipped examples, --previous, --diff, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

ROOT = Path(__file__).resolve().parents[3]
MAAS = ["-f", str(ROOT / "manifests/fleets/maas.yaml"), "-f", str(ROOT / "manifests/deployments/maas.yaml")]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_maas_example_is_placed_on_more_than_one_kind_of_hardware(tmp_path) -> None:
    out = run("plan", *MAAS, "-o", "json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["kind"] == "Plan" and not doc["spec"]["unplaced"]
    assert {a["deployment"] for a in doc["spec"]["assignments"]} == {"glm-46", "glm-45-air", "qwen3-30b"}
    assert len({a["hardware"] for a in doc["spec"]["assignments"]}) >= 2
    for a in doc["spec"]["assignments"]:
        assert a["launch"]["argv"] and a["why"]["summary"] and a["predicted"]["tpotSeconds"] > 0
        assert a["launch"]["servedModelName"] == a["deployment"]
    assert doc["status"]["servedRequestsPerSecond"] == doc["status"]["demandRequestsPerSecond"]
    # Feeding the plan back as --previous changes nothing; --diff says so.
    first = tmp_path / "plan.yaml"
    first.write_text(run("plan", *MAAS, "-o", "yaml").output)
    second = tmp_path / "plan2.yaml"
    second.write_text(run("plan", *MAAS, "--previous", str(first), "-o", "yaml").output)
    d = run("plan", "--diff", str(first), str(second))
    assert d.exit_code == 0 and d.output.strip() == "no changes"


def test_diff_shows_scaling(tmp_path) -> None:
    local = ["-f", str(ROOT / "manifests/local")]
    before = tmp_path / "a.json"
    before.write_text(run("plan", *local, "-o", "json").output)
    doc = json.loads(before.read_text())
    doc["spec"]["assignments"][0]["replicas"] += 1
    after = tmp_path / "b.json"
    after.write_text(json.dumps(doc))
    out = run("plan", "--diff", str(before), str(after))
    assert out.exit_code == 0 and "~ tiny-chat" in out.output and "replicas" in out.output


def test_bad_previous_and_two_fleets_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: moxin.dev/v1alpha1\nkind: Plan\nspec:\n  assignments:\n    - {deployment: x}\n")
    out = run("plan", *MAAS, "--previous", str(bad))
    assert out.exit_code == 2 and "spec.assignments[0].variant" in out.output and "Traceback" not in out.output
    both = run("plan", *MAAS, "-f", str(ROOT / "manifests/local"))
    assert both.exit_code == 2 and "--fleet" in both.output
