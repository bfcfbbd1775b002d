"""EngineLaunch values: argv lists, plugin environment, module by version, readiness budget, CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.engines import vllm
from orchestrator.engines.launch import UnsupportedError, engine_launch


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_vllm_on_a_plugin_platform_names_exactly_its_plugins_and_their_env(catalog) -> None:
    model = catalog.model("llama-3.1-8b")
    s4000 = catalog.profile("moorethreads-s4000")
    launch = engine_launch(model, model.spec.variant("bf16"), s4000, tp=2)
    plugin = s4000.spec.engines[0].plugin
    assert launch.env["VLLM_PLUGINS"].split(",") == [plugin.entry_point, *plugin.general_plugins]
    assert all(launch.env[k] == v for k, v in plugin.env.items())
    assert launch.argv[:3] == ["python3", "-m", vllm.OLD_MODULE]  # the plugin pins vLLM 0.28
    assert _flag(launch.argv, "--tensor-parallel-size") == "2"
    assert launch.visibility_env == "MUSA_VISIBLE_DEVICES"
    assert launch.env_for([2, 3])["MUSA_VISIBLE_DEVICES"] == "2,3"


def test_builtin_platforms_load_no_plugin_and_use_the_module_of_their_version(catalog) -> None:
    model = catalog.model("glm-4.5-air")
    launch = engine_launch(model, model.spec.variant("fp8"), catalog.profile("nvidia-h200"), tp=2, ep=True)
    assert launch.env == {"VLLM_PLUGINS": ""}
    assert launch.argv[2] == vllm.NEW_MODULE and "--enable-expert-parallel" in launch.argv
    assert "--quantization" not in launch.argv  # detected from the FP8 checkpoint's config
    assert launch.image and launch.metrics_path == "/metrics" and launch.visibility_env == "CUDA_VISIBLE_DEVICES"
    assert vllm.api_server_module(None) == vllm.OLD_MODULE
    assert vllm.api_server_module("0.32.0") == vllm.api_server_module("0.33.1rc2") == vllm.NEW_MODULE
    assert vllm.api_server_module("0.23.0") == vllm.OLD_MODULE


def test_cpu_kv_space_holds_the_requested_sequences(catalog) -> None:
    from orchestrator.estimate.estimator import estimate
    from orchestrator.estimate.memory import GiB

    model, cpu = catalog.model("llama-3.1-8b"), catalog.profile("cpu-x86")
    bf16 = model.spec.variant("bf16")
    launch = engine_launch(model, bf16, cpu, context=4096, concurrency=6)
    space = int(launch.env["VLLM_CPU_KVCACHE_SPACE"])
    need = estimate(model, bf16, cpu, tp=1, pp=1, context=4096, batch=6).kv_bytes
    assert (space - 1) * GiB < need <= space * GiB
    assert "--gpu-memory-utilization" not in launch.argv and _flag(launch.argv, "--max-num-seqs") == "6"


def test_mlx_launch_has_no_metrics_and_quantized_kv_flags(catalog) -> None:
    model = catalog.model("glm-4.5-air")
    launch = engine_launch(model, model.spec.variant("mlx-3bit"), catalog.profile("apple-m2-max-64g"),
                           kv_dtype="int4", concurrency=2)
    assert launch.argv[:4] == ["python3", "-m", "mlx_lm", "server"]
    assert launch.metrics_path is None and any("no /metrics" in n for n in launch.notes)
    assert _flag(launch.argv, "--kv-bits") == "4" and _flag(launch.argv, "--decode-concurrency") == "2"


def test_readiness_budget_grows_with_the_weights_per_device(catalog) -> None:
    small, big = catalog.model("llama-3.1-8b"), catalog.model("llama-3.1-70b")
    h100 = catalog.profile("nvidia-h100-sxm")
    t_small = engine_launch(small, small.spec.variant("bf16"), h100).readiness_timeout_seconds
    t_big = engine_launch(big, big.spec.variant("bf16"), h100, tp=2).readiness_timeout_seconds
    t_big_tp8 = engine_launch(big, big.spec.variant("bf16"), h100, tp=8).readiness_timeout_seconds
    assert t_small < t_big_tp8 < t_big


def test_mlx_lm_on_the_cpu_backend_gets_a_longer_readiness_budget_than_on_metal(catalog) -> None:
    from orchestrator.engines.launch import BASE_READINESS_S, CPU_BACKEND_READINESS_S, readiness_timeout

    assert readiness_timeout("mlx-lm", 0, "mlx-cpu") == CPU_BACKEND_READINESS_S["mlx-cpu"] == 120
    assert readiness_timeout("mlx-lm", 0, "metal") == BASE_READINESS_S["mlx-lm"] == 60
    assert readiness_timeout("vllm", 250_000_000, "cpu") == 301


def test_unsupported_raises_unless_forced(catalog) -> None:
    model = catalog.model("llama-3.1-8b")
    online = model.spec.variant("fp8-online")
    with pytest.raises(UnsupportedError, match="CPU has no FP8"):
        engine_launch(model, online, catalog.profile("cpu-x86"))
    forced = engine_launch(model, online, catalog.profile("cpu-x86"), engine="vllm", force=True)
    assert _flag(forced.argv, "--quantization") == "fp8" and forced.notes[0].startswith("forced")
    moved = forced.with_port(9123)
    assert moved.port == 9123 and _flag(moved.argv, "--port") == "9123" and _flag(forced.argv, "--port") == "8000"


def test_cli_engine_args_json_and_exit_2_when_unsupported() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["engine-args", "-m", "glm-4.5-air", "-v", "w4a16", "-H", "cambricon-mlu590",
                              "--tp", "2", "-o", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert {"engine", "argv", "env", "port", "healthPath", "metricsPath", "image", "visibilityEnv"} <= doc.keys()
    assert _flag(doc["argv"], "--quantization") == "awq_mlu" and doc["visibilityEnv"] == "MLU_VISIBLE_DEVICES"
    bad = runner.invoke(cli, ["engine-args", "-m", "llama-3.1-8b", "-v", "fp8", "-H", "cpu-x86", "-o", "json"])
    assert bad.exit_code == 2 and "no FP8" in bad.output and "Traceback" not in bad.output
