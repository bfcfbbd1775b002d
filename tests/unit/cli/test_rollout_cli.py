"""`moxin rollout apply|status|promote|pause|resume|abort|delete` against a stand-in controller (runtime.client.rollout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.errors import MoxinError
from orchestrator.runtime import client

ROOT = Path(__file__).resolve().parents[3]

STATUS = {"name": "to-mlx", "deployment": "tiny-chat", "to": {"variant": "mlx-3bit", "pool": "mac-emu"},
          "finished": False, "phase": "Progressing", "step": 1, "steps": 4, "stepKind": "check", "mode": "surge",
          "weight": 10, "replicas": {"canary": 1, "stable": 1}, "pausedReason": None, "message": "",
          "gates": [{"metric": "errorRatio", "measurements": "1/3", "failures": "0/0", "inconclusive": "0/0",
                     "canary": 0.02, "stable": 0.0, "limit": 0.05, "threshold": "max 0.05", "outcome": "pass",
                     "reason": "0.02 <= 0.05"}],
          "log": [{"at": 0.0, "phase": "Progressing", "step": 0, "message": "step 0: 10% of traffic on the new side"}]}


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    seen: list[tuple] = []
    rollouts = {"to-mlx": STATUS, "old": {**STATUS, "name": "old", "finished": True, "phase": "Succeeded"}}

    def rollout(addr: str, method: str, *args: Any) -> dict:
        seen.append((method, *args))
        if method == "status":
            return {n: r for n, r in rollouts.items() if args[0] in (None, n)}
        if method == "delete":
            if not rollouts[args[0]]["finished"] and not args[1]:
                raise MoxinError(f"rollout {args[0]!r} is not finished: abort it first, or --force")
            return {n: r for n, r in rollouts.items() if n != args[0]}
        return {args[0]: rollouts[args[0]]}

    monkeypatch.setattr(client, "resolve_address", lambda address: ("ray://x", False))
    monkeypatch.setattr(client, "rollout", rollout)
    return seen


def test_status_shows_phase_step_weight_gates_against_thresholds_and_the_log(calls):
    out = CliRunner().invoke(cli, ["rollout", "status", "to-mlx"])
    assert out.exit_code == 0, out.output
    assert "Progressing, step 1/4 (check), weight 10%" in out.output
    assert "errorRatio" in out.output and "max 0.05" in out.output and "10% of traffic" in out.output
    doc = json.loads(CliRunner().invoke(cli, ["rollout", "status", "-o", "json"]).output)
    assert set(doc) == {"to-mlx", "old"}


@pytest.mark.parametrize("args, verb", [(["promote"], "promote"), (["promote", "--full"], "promoteFull"),
                                        (["pause"], "pause"), (["resume", "to-mlx"], "resume"),
                                        (["abort"], "abort")])
def test_commands_go_to_the_named_or_the_only_running_rollout(calls, args, verb):
    out = CliRunner().invoke(cli, ["rollout", *args])
    assert out.exit_code == 0, out.output
    assert calls[-1] == ("command", "to-mlx", verb)


def test_delete_names_the_rollout_and_forces_only_when_asked(calls):
    out = CliRunner().invoke(cli, ["rollout", "delete", "old"])
    assert out.exit_code == 0, out.output
    assert calls[-1] == ("delete", "old", False)
    assert "deleted rollout old" in out.output and "rollout to-mlx:" in out.output  # the rollouts left
    refused = CliRunner().invoke(cli, ["rollout", "delete", "to-mlx"])
    assert refused.exit_code != 0 and "--force" in refused.output
    assert CliRunner().invoke(cli, ["rollout", "delete", "to-mlx", "--force"]).exit_code == 0
    assert calls[-1] == ("delete", "to-mlx", True)
    assert CliRunner().invoke(cli, ["rollout", "delete"]).exit_code != 0  # NAME is required: no default here


def test_apply_gives_the_controller_the_new_sides_readiness_budget(monkeypatch, tmp_path):
    """The deadline's base is the new side's own readinessTimeoutSeconds (engine start-up plus loading, from its
    launch), not a fixed 600 s: a slow mlx-lm or vLLM start is not rolled back by the deadline."""
    from orchestrator.planner import PlanOptions, plan
    from orchestrator.spec import load_catalog

    data = ROOT / "tests/data/rollout-local"
    local = [ROOT / "manifests/local/fleet.yaml", ROOT / "manifests/local/tiny-llama.yaml"]
    up = load_catalog([*local, data / "up"])
    running = plan(up.fleets["local"], list(up.deployments.values()), up, options=PlanOptions(model_root="/m"))
    seen: list[tuple] = []
    monkeypatch.setattr(client, "resolve_address", lambda address: ("ray://x", False))
    monkeypatch.setattr(client, "current_plan", lambda addr: running)
    monkeypatch.setattr(client, "rollout", lambda addr, method, *args: seen.append((method, *args)) or {})

    out = CliRunner().invoke(cli, ["rollout", "apply", "-f", str(data / "rollout/rollout.yaml"), *map(str, local),
                                   str(data / "rollout"), "--model-root", "/m"])
    assert out.exit_code == 0, out.output
    (method, name, _spec, canary, _fits, budget, _prompts), = seen
    assert (method, name, canary["variant"]) == ("apply", "tiny-chat-to-mlx", "mlx-3bit")
    assert budget == canary["launch"]["readinessTimeoutSeconds"] != 600
