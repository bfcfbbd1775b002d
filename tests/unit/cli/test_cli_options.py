"""Flags generated from model fields (cli_options): type, bounds, choices, default and help come from the field."""

from __future__ import annotations

import typing

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.cli_options import options_from
from orchestrator.spec.engine import EngineSettings, KvCacheDtype
from orchestrator.spec.plan import PlanOptions


def _params(model, fields, flags=None) -> dict[str, click.Option]:
    command = options_from(model, fields, flags)(click.command()(lambda **_: None))
    return {p.name: p for p in command.params}


def test_an_option_carries_the_fields_bounds_default_and_description() -> None:
    opt = _params(EngineSettings, ["gpu_memory_utilization", "cpu_kv_cache_gib"])
    gmu = opt["gpu_memory_utilization"]
    assert gmu.opts == ["--gpu-memory-utilization"] and gmu.default == EngineSettings().gpu_memory_utilization
    assert isinstance(gmu.type, click.FloatRange) and (gmu.type.min, gmu.type.max, gmu.type.min_open) == (0, 1, True)
    assert gmu.help.startswith("vLLM: the fraction of TOTAL device memory")
    assert opt["cpu_kv_cache_gib"].default is None


def test_literal_fields_become_choices_and_flags_can_be_renamed() -> None:
    opt = _params(PlanOptions, ["objective", "time_limit_s"], {"time_limit_s": "--time-limit"})
    assert list(opt["objective"].type.choices) == ["cost"]
    assert opt["time_limit_s"].opts == ["--time-limit"] and opt["time_limit_s"].default == PlanOptions().time_limit_s


@pytest.mark.parametrize("command, flags", [
    ("estimate", ["--gpu-memory-utilization", "--max-num-batched-tokens", "--max-num-seqs", "--cpu-kv-cache-gib",
                  "--kv-dtype", "--engine"]),
    ("engine-args", ["--gpu-memory-utilization", "--max-num-batched-tokens", "--kv-dtype", "--engine", "--port"]),
    ("plan", ["--objective", "--churn-weight", "--gap", "--time-limit"]),
    ("apply", ["--model-root"]),
])
def test_help_shows_every_generated_flag(command: str, flags: list[str]) -> None:
    out = CliRunner().invoke(cli, [command, "--help"])
    assert out.exit_code == 0
    for flag in flags:
        assert flag in out.output, flag
    if command == "estimate":
        assert "|".join(typing.get_args(KvCacheDtype)) in out.output.replace("\n", "").replace(" ", "")


def test_a_value_outside_the_fields_bounds_is_a_usage_error() -> None:
    out = CliRunner().invoke(cli, ["estimate", "-m", "llama-3.1-8b", "-v", "bf16", "-H", "nvidia-h100-sxm",
                                   "--gpu-memory-utilization", "1.5"])
    assert out.exit_code == 2 and "--gpu-memory-utilization" in out.output
    out = CliRunner().invoke(cli, ["plan", "-f", "x.yaml", "--gap", "2"])
    assert out.exit_code == 2 and "--gap" in out.output


def test_settings_flags_reach_the_engine_command_line() -> None:
    out = CliRunner().invoke(cli, ["engine-args", "-m", "llama-3.1-8b", "-v", "bf16", "-H", "nvidia-h100-sxm",
                                   "--gpu-memory-utilization", "0.8", "--max-num-batched-tokens", "4096"])
    assert out.exit_code == 0, out.output
    assert "--gpu-memory-utilization 0.8" in out.output and "--max-num-batched-tokens 4096" in out.output
