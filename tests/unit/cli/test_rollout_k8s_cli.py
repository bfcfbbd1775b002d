"""`moxin rollout apply|status|pause --kubernetes` against the in-memory API stand-in: the command loops
``k8s_rollout.run_once`` until the rollout ends, its gates read from Prometheus by their own PromQL (a stand-in
answering each query), and the operator's commands go into the rollout's ConfigMap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (the k8s extra)")
pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")
pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is installed by `make test`")

from orchestrator.cli import cli
from orchestrator.rollout.gates import Side, promql, requests_query
from orchestrator.runtime import k8s_rollout, kubernetes
from orchestrator.runtime.rollout_probe import HttpProbe
from tests.unit.runtime.k8s_api_support import Cluster

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests/data/rollout-local"
LOCAL = [str(ROOT / "manifests/local/fleet.yaml"), str(ROOT / "manifests/local/tiny-llama.yaml")]
ROLLOUT = str(DATA / "rollout/rollout.yaml")  # 10% -> errorRatio <= 0.05 over 10 s -> 50% -> 100%
NAME, STATE = "tiny-chat-to-mlx", "moxin-rollout-tiny-chat-to-mlx"
CANARY, STABLE = Side("tiny-chat", "mlx-3bit", "mac-emu"), Side("tiny-chat", "bf16", "gpu-emu")
APPLY = ["rollout", "apply", "-f", ROLLOUT, *LOCAL, str(DATA / "rollout"), "--kubernetes", "--namespace", "serving",
         *(a for path in (*LOCAL, str(DATA / "up")) for a in ("--running", path))]


class FakeTime:
    """``time`` for the driver: sleeping moves the clock (a 10 s gate interval passes at once)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def cluster(monkeypatch) -> Cluster:
    api = Cluster()
    monkeypatch.setattr(kubernetes, "_client", lambda: api)
    monkeypatch.setattr(k8s_rollout, "time", FakeTime())
    return api


def prometheus(monkeypatch, canary_errors: float) -> list[str]:
    """Answers the gate's queries (requests and errorRatio of each side over 10 s); the queries asked."""
    answers = {requests_query(CANARY, 10): 50.0, promql("errorRatio", CANARY, 10): canary_errors,
               requests_query(STABLE, 10): 500.0, promql("errorRatio", STABLE, 10): 0.0}
    asked: list[str] = []

    def query(self, url: str, q: str) -> float | None:
        assert url == "http://prom:9090"
        asked.append(q)
        return answers.get(q)
    monkeypatch.setattr(HttpProbe, "query", query)
    return asked


def test_apply_runs_the_rollout_to_the_end_with_gates_from_prometheus(cluster, monkeypatch):
    asked = prometheus(monkeypatch, canary_errors=0.0)
    out = CliRunner().invoke(cli, [*APPLY, "--prometheus", "http://prom:9090", "--interval", "5"])
    assert out.exit_code == 0, out.output
    assert f"rollout {NAME}: tiny-chat -> mlx-3bit on mac-emu: Succeeded" in out.output
    assert set(asked) == {requests_query(CANARY, 10), promql("errorRatio", CANARY, 10),
                          requests_query(STABLE, 10), promql("errorRatio", STABLE, 10)}
    assert cluster.names("Deployment") == ["moxin-router", "tiny-chat-mlx-3bit-mac-emu"]
    assert [r["name"] for r in cluster.table()["deployments"]["tiny-chat"]] == ["tiny-chat-mlx-3bit-mac-emu"]
    weights = [e["message"] for e in cluster.state(STATE)["log"] if "% of traffic" in e["message"]]
    assert [w.split(":")[1].split("%")[0].strip() for w in weights] == ["10", "50", "100"]

    status = CliRunner().invoke(cli, ["rollout", "status", NAME, "--kubernetes", "--namespace", "serving",
                                      "-o", "json"])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)[NAME]
    assert doc["phase"] == "Succeeded" and doc["finished"] and doc["weight"] == 100


def test_a_failing_gate_rolls_back_and_the_command_fails_naming_it(cluster, monkeypatch):
    prometheus(monkeypatch, canary_errors=0.5)
    out = CliRunner().invoke(cli, [*APPLY, "--prometheus", "http://prom:9090"])
    assert out.exit_code != 0
    assert "ended RolledBack" in out.output and "errorRatio" in out.output
    assert cluster.names("Deployment") == ["moxin-router", "tiny-chat-bf16-gpu-emu"]


def test_gates_without_prometheus_and_a_quality_gate_are_refused_before_anything_is_sent(cluster, tmp_path):
    out = CliRunner().invoke(cli, APPLY)
    assert out.exit_code != 0 and "--prometheus URL" in out.output
    quality = tmp_path / "rollout.yaml"
    quality.write_text(Path(ROLLOUT).read_text().replace("metric: errorRatio, threshold: {max: 0.05}",
                                                         "metric: quality"))
    out = CliRunner().invoke(cli, [*APPLY[:3], str(quality), *APPLY[4:], "--prometheus", "http://prom:9090"])
    assert out.exit_code != 0 and "quality gate" in out.output
    assert cluster.live == {}
    ray = [a for a in APPLY if a not in ("--kubernetes", "--namespace", "serving")]
    out = CliRunner().invoke(cli, ray)
    assert out.exit_code != 0 and "go with --kubernetes" in out.output


def test_commands_go_into_the_rollouts_configmap_and_an_unknown_rollout_is_refused(cluster, monkeypatch):
    prometheus(monkeypatch, canary_errors=0.0)
    assert CliRunner().invoke(cli, [*APPLY, "--prometheus", "http://prom:9090"]).exit_code == 0
    where = ["--kubernetes", "--namespace", "serving"]
    out = CliRunner().invoke(cli, ["rollout", "pause", NAME, *where])
    assert out.exit_code == 0, out.output
    assert CliRunner().invoke(cli, ["rollout", "promote", NAME, "--full", *where]).exit_code == 0
    data = cluster.live[("v1", "ConfigMap", STATE)]["data"]
    assert json.loads(data["commands.json"]) == [{"id": 1, "verb": "pause"}, {"id": 2, "verb": "promoteFull"}]
    missing = CliRunner().invoke(cli, ["rollout", "abort", "nope", *where])
    assert missing.exit_code != 0 and "no rollout 'nope'" in missing.output
    assert ("v1", "ConfigMap", "moxin-rollout-nope") not in cluster.live
    assert CliRunner().invoke(cli, ["rollout", "pause", *where]).exit_code != 0  # NAME is needed here


def test_delete_forgets_a_finished_rollout_and_refuses_one_not_finished(cluster, monkeypatch):
    prometheus(monkeypatch, canary_errors=0.0)
    assert CliRunner().invoke(cli, [*APPLY, "--prometheus", "http://prom:9090"]).exit_code == 0
    where = ["--kubernetes", "--namespace", "serving"]
    data = cluster.live[("v1", "ConfigMap", STATE)]["data"]
    succeeded = data[k8s_rollout.STATE_KEY]
    data[k8s_rollout.STATE_KEY] = json.dumps({**json.loads(succeeded), "phase": "Paused"})  # as if interrupted
    out = CliRunner().invoke(cli, ["rollout", "delete", NAME, *where])
    assert out.exit_code == 2 and "is Paused, not finished" in out.output and "Traceback" not in out.output
    assert CliRunner().invoke(cli, ["rollout", "delete", NAME, "--force", *where]).exit_code == 2
    assert ("v1", "ConfigMap", STATE) in cluster.live

    data[k8s_rollout.STATE_KEY] = succeeded
    out = CliRunner().invoke(cli, ["rollout", "delete", NAME, *where])
    assert out.exit_code == 0, out.output
    assert ("v1", "ConfigMap", STATE) not in cluster.live and ("ConfigMap", STATE) in cluster.deleted
    assert cluster.names("Deployment") == ["moxin-router", "tiny-chat-mlx-3bit-mac-emu"]  # workloads untouched
    gone = CliRunner().invoke(cli, ["rollout", "status", NAME, *where])
    assert gone.exit_code != 0 and f"no rollout {NAME!r}" in gone.output
