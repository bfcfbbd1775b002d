"""`moxin render helm|k8s|kuberay` end to end through the CLI (files written, errors exit 2)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from k8s_support import EXAMPLES, HERE

from orchestrator.cli import cli

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")

MAAS = [str(p) for p in EXAMPLES["maas"][0]]
MAAS_ARGS = [a for p in MAAS for a in ("-f", p)]


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_render_helm_writes_values_the_chart_accepts(tmp_path):
    out = tmp_path / "values.yaml"
    args = [a for p in MAAS for a in ("-f", p)]
    result = _run("render", "helm", *args, "-o", str(out))
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(out.read_text())
    assert values["plan"]["name"] == "maas" and len(values["assignments"]) >= 3  # one per deployment at least
    assert {a["deployment"] for a in values["assignments"]} == {"glm-46", "glm-45-air", "qwen3-30b"}


def test_render_k8s_writes_one_file_per_object_and_removes_stale_ones(tmp_path):
    out = tmp_path / "objs"
    out.mkdir()
    (out / "099-deployment-old.yaml").write_text("stale")
    (out / "notes.yaml").write_text("kept")
    result = _run("render", "k8s", "-f", str(HERE / "data" / "multinode.yaml"), "-o", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert "099-deployment-old.yaml" not in names and "notes.yaml" in names
    kinds = [yaml.safe_load((out / n).read_text())["kind"] for n in names if n != "notes.yaml"]
    assert "LeaderWorkerSet" in kinds


def test_render_k8s_from_a_plan_file_with_extra_values(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    planned = _run("plan", "-f", str(HERE / "data" / "multinode.yaml"), "-o", "yaml")
    plan_file.write_text(planned.output)
    extra = tmp_path / "extra.yaml"
    extra.write_text("monitoring: {podMonitors: false, serviceMonitors: false, prometheusRules: false}\n")
    result = _run("render", "k8s", "-f", str(plan_file), "--values", str(extra))
    assert result.exit_code == 0, result.output
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert "LeaderWorkerSet" in kinds and not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_render_kuberay_prints_a_raycluster(tmp_path):
    result = _run("render", "kuberay", "-f", str(HERE / "data" / "multinode.yaml"))
    assert result.exit_code == 0, result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert kinds == ["ConfigMap", "Service", "RayCluster", "Job"]  # creation order (render/kubernetes.py)


def test_bad_input_exits_2_with_a_message(tmp_path):
    result = CliRunner().invoke(cli, ["render", "helm", "-f", str(HERE / "data" / "vendors.yaml")])
    assert result.exit_code == 2 and "--image vllm/" in result.output
    result = CliRunner().invoke(cli, ["render", "k8s", *MAAS_ARGS, "--namespace", "Bad_NS"])
    assert result.exit_code == 2 and "namespace" in result.output
    result = CliRunner().invoke(cli, ["render", "kuberay", *MAAS_ARGS,
                                      "--image", "no-equals-sign"])
    assert result.exit_code == 2 and "KEY=IMAGE" in result.output
