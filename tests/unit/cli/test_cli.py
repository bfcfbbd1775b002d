from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli

DATA = Path(__file__).resolve().parents[2] / "data"
ROOT = Path(__file__).resolve().parents[3]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_validate_the_shipped_catalog_and_examples() -> None:
    result = run("validate", str(ROOT / "hardware_profiles"), str(ROOT / "manifests"))
    assert result.exit_code == 0, result.output
    # the built-in profiles and the examples' own (manifests/examples/cambricon: an overlay of the MLU590;
    # manifests/examples/pipeline-local: a made-up small device)
    assert "23 HardwareProfile" in result.output and "9 Model" in result.output and "4 Fleet" in result.output
    assert "1 Rollout" in result.output  # manifests/rollouts


def test_validate_bad_file_exits_2_with_location_and_no_traceback() -> None:
    bad = DATA / "bad" / "unknown-profile.yaml"
    result = run("validate", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:9: spec.pools[1].hardware: unknown hardware profile 'mlu-590'" in result.output
    assert "did you mean 'cambricon-mlu590'?" in result.output
    assert "Traceback" not in result.output


def test_models_json_carries_parameter_status() -> None:
    result = run("models", "glm-4.5-air", "-o", "json")
    doc = json.loads(result.output)
    assert doc["kind"] == "Model" and doc["metadata"]["name"] == "glm-4.5-air"
    params = doc["status"]["parameters"]
    assert set(params) == {"total", "mtp", "active", "byModule"}
    assert params["total"] == sum(v for k, v in params["byModule"].items() if k != "mtp")
    assert isinstance(params["total"], int) and abs(params["total"] / 106e9 - 1) < 0.015
    variants = {v["name"]: v for v in doc["status"]["variants"]}
    assert variants["mlx-3bit"]["weightsBytes"] < variants["bf16"]["weightsBytes"] / 4


def test_listings_print_full_documents_as_yaml_and_json() -> None:
    listing = yaml.safe_load(run("profiles", "-o", "yaml").output)
    assert listing["kind"] == "HardwareProfileList"
    h100 = next(i for i in listing["items"] if i["metadata"]["name"] == "nvidia-h100-sxm")
    assert h100["spec"]["memoryGB"] == 80 and h100["apiVersion"] == "moxin.dev/v1alpha1"
    models = json.loads(run("models", "-o", "json").output)
    assert len(models["items"]) >= 8 and all("status" in m for m in models["items"])


def test_tables_list_every_entry() -> None:
    out = run("profiles").output
    assert "cambricon-mlu590" in out and "apple-m2-max-64g" in out
    out = run("models").output
    assert "deepseek-v3" in out and "qwen3-30b-a3b" in out


@pytest.mark.parametrize("kind", ["HardwareProfile", "Model", "Fleet", "ModelDeployment", "Rollout", "fleet"])
def test_schema_is_generated_with_descriptions(kind: str) -> None:
    schema = json.loads(run("schema", kind).output)
    assert schema["additionalProperties"] is False
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])
    spec_def = next(v for k, v in schema["$defs"].items() if k.endswith("Spec"))
    assert all("description" in p for p in spec_def["properties"].values())


def test_schema_of_unknown_kind_suggests() -> None:
    result = run("schema", "Fleets")
    assert result.exit_code == 2 and "did you mean 'Fleet'" in result.output


def test_unknown_model_exits_2() -> None:
    result = run("models", "glm-5")
    assert result.exit_code == 2 and "unknown Model 'glm-5'" in result.output


def _moxin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60)


def test_real_process_exit_codes_and_stderr() -> None:
    ok = _moxin("validate", str(DATA / "good"))
    assert ok.returncode == 0 and ok.stdout.startswith("valid: ")
    bad = _moxin("validate", str(DATA / "bad" / "alias-bomb.yaml"))
    assert bad.returncode == 2 and "expands to more than" in bad.stderr and "Traceback" not in bad.stderr
    usage = _moxin("validate")
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_startup_imports_no_heavy_library() -> None:
    code = ("import sys, orchestrator.cli as c; from click.testing import CliRunner; "
            "CliRunner().invoke(c.cli, ['models']); CliRunner().invoke(c.cli, ['profiles']); "
            "print(sorted(m for m in ('ray', 'vllm', 'torch', 'kubernetes', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_readme_example_documents_validate(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = next(b.split("\n", 1)[1] for b in text.split("```yaml")[1:])
    (tmp_path / "example.yaml").write_text(block.split("```")[0])
    result = run("validate", str(tmp_path / "example.yaml"))
    assert result.exit_code == 0 and "1 Fleet, 1 ModelDeployment" in result.output, result.output


def test_engine_args_table_prints_the_command_line_and_the_readiness_budget() -> None:
    result = run("engine-args", "-m", "llama-3.1-8b", "-v", "bf16", "-H", "nvidia-h100-sxm")
    assert result.exit_code == 0, result.output
    assert "--max-num-seqs 256" in result.output and "ready within" in result.output


@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "symlink-loop"])
def test_a_file_that_is_not_a_regular_file_exits_2_at_once(tmp_path: Path, what: str) -> None:
    if what == "fifo":
        target = tmp_path / "fleet.yaml"
        os.mkfifo(target)
    elif what == "symlink-loop":
        target = tmp_path / "fleet.yaml"
        target.symlink_to(tmp_path / "other.yaml")
        (tmp_path / "other.yaml").symlink_to(target)
    else:
        target = Path(what)
    for args in (["validate", str(target)], ["plan", "--diff", str(target), str(target)]):
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, check=False,
                             timeout=30)
        assert time.monotonic() - start < 10
        assert out.returncode == 2, out.stderr
        assert f"{target}: cannot read: " in out.stderr and "Traceback" not in out.stderr
        assert ("symlink loop" if what == "symlink-loop" else "not a regular file") in out.stderr


def test_validate_refuses_a_kubernetes_injection_at_its_line() -> None:
    bad = DATA / "bad" / "hardware-kubernetes-strings.yaml"
    result = run("validate", str(bad))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{bad}:36: spec.kubernetes.runtimeClassName: must be a DNS-1123 subdomain" in result.output
    assert r"(got 'nvidia\nhostPID: true')" in result.output


def test_status_lists_every_node_of_a_multi_node_replica():
    from orchestrator.cli import _stage_lines

    rows = [{"id": "one", "stages": [{"nodeRank": 0, "node": "a"}]},
            {"id": "pp", "stages": [{"nodeRank": 0, "node": "n-0", "host": "10.0.0.1", "devices": [0], "enginePid": 7},
                                    {"nodeRank": 1, "node": "n-1", "host": "10.0.0.2", "devices": [1], "enginePid": 9}]}]
    assert _stage_lines(rows) == ["pp: 2 nodes", "  node rank 0: n-0 (host 10.0.0.1, devices 0, pid 7)",
                                  "  node rank 1: n-1 (host 10.0.0.2, devices 1, pid 9)"]


def test_an_infeasible_error_prints_its_reasons_not_only_its_message():
    """`moxin rollout apply` said only "error: rollout 'x' does not fit" (found by benchmarks/soak.py): the reasons,
    which say what to relax, were dropped at the CLI boundary."""
    import click

    from orchestrator.cli import MoxinGroup
    from orchestrator.errors import InfeasibleError

    @click.group(cls=MoxinGroup)
    def group() -> None:
        pass

    @group.command()
    def fit() -> None:
        raise InfeasibleError("rollout 'x' does not fit", ["2 x mlx-4bit do not fit on mac-emu: add nodes"])

    out = CliRunner().invoke(group, ["fit"])
    assert out.exit_code == 2
    assert out.stderr == "error:\nrollout 'x' does not fit\n  - 2 x mlx-4bit do not fit on mac-emu: add nodes\n"
