"""``estimate()``: does variant V of model M fit on hardware H, at what context and concurrency, how fast.

Pure: (model, variant, profile, settings) -> ``Estimate``. Chooses the smallest parallelism that fits
when none is given. Every number it cannot know is None, with a reason the user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.compat import MAX_PIPELINE_STAGES, Verdict, check, pp_choices, tp_choices
from orchestrator.estimate.calibration import Calibration, format_class, lookup
from orchestrator.estimate.memory import (
    GiB,
    Parallelism,
    activation_peak_bytes,
    kv_bytes_per_token,
    stage_weight_bytes,
)
from orchestrator.estimate.parameters import weight_bytes
from orchestrator.estimate.performance import ALLREDUCE_LATENCY_S, active_flops_per_token, decode_step_costs
from orchestrator.spec.engine import ENGINE_DEFAULTS, EngineSettings, KvDtype
from orchestrator.spec.formats import FORMATS
from orchestrator.spec.hardware import EngineSupport, HardwareProfile
from orchestrator.spec.model import Model, Variant

# Fixed per-device memory a vLLM worker holds outside its budgeted pools: CUDA context, NCCL and
# cuBLAS workspaces ("non-torch memory") and captured CUDA graphs. Not measured here (no GPU engine
# could run on this project's machines): typical figures from vLLM worker logs, flagged in `reasons`.
VLLM_NON_TORCH_BYTES = int(0.5 * GiB)
VLLM_CUDA_GRAPH_BYTES = int(0.5 * GiB)
# mlx-lm allocates its KV cache in steps of this many tokens (mlx_lm/models/cache.py, KVCache.step).
MLX_KV_STEP = 256
# mlx-lm prefills the prompt in chunks of this many tokens (prefill_step_size in mlx_lm.generate).
MLX_PREFILL_STEP = 2048
VLLM_BLOCK_TOKENS = {"cpu": 128}  # vLLM's KV block size by platform; 16 elsewhere
VLLM_DEFAULT_BLOCK = 16


@dataclass(frozen=True)
class Estimate:
    model: str
    variant: str
    hardware: str
    engine: str | None
    platform: str | None
    support: str
    """'supported', 'unsupported' or 'unknown' (orchestrator.compat); an unknown combination is estimated
    as if it ran, and says so in reasons."""
    fits: bool
    tensor_parallel: int
    pipeline_parallel: int
    expert_parallel: bool
    devices: int
    context_tokens: int
    batch: int
    kv_cache_dtype: str
    weights_bytes: int
    weights_bytes_per_device: int
    kv_bytes_per_token: int
    kv_bytes_per_token_per_device: int
    kv_bytes: int
    overhead_bytes_per_device: int
    peak_bytes: int
    peak_bytes_per_device: int
    usable_bytes_per_device: int | None
    max_context_tokens: int | None
    max_concurrency: int | None
    decode_tokens_per_second: float | None
    aggregate_decode_tokens_per_second: float | None
    prefill_tokens_per_second: float | None
    decode_step_seconds: float | None
    bound: str | None
    calibration: dict[str, Any] | None
    usd_per_hour: float | None
    usd_per_million_output_tokens: float | None
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def camel(name: str) -> str:
            head, *rest = name.split("_")
            return head + "".join(p.title() for p in rest)

        return {camel(k): v for k, v in self.__dict__.items()}


def resolve_kv_dtype(kv: str, variant: Variant) -> KvDtype:
    if kv != "auto":
        return kv  # type: ignore[return-value]
    return "fp16" if variant.format_of("attention") == "fp16" else "bf16"


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _kv_step(engine: str, platform: str | None) -> int:
    if engine == "mlx-lm":
        return MLX_KV_STEP
    return VLLM_BLOCK_TOKENS.get(platform or "", VLLM_DEFAULT_BLOCK)


def estimate(model: Model, variant: Variant, profile: HardwareProfile, *, tp: int | None = None,
             pp: int | None = None, ep: bool = False, context: int | None = None, batch: int = 1,
             kv_dtype: str = "auto", engine: str | None = None, settings: EngineSettings = ENGINE_DEFAULTS,
             usd_per_device_hour: float | None = None, max_pp: int = MAX_PIPELINE_STAGES,
             prompt_tokens: int | None = None) -> Estimate:
    """Estimate one (model, variant, hardware). With tp/pp unset, the smallest parallelism that fits.

    ``prompt_tokens`` (default: the whole context) sizes the prefill chunk whose activations are the
    temporary peak of an mlx-lm replica.
    """
    arch = model.spec.architecture
    assert arch is not None
    ctx = settings.context(arch.max_position_embeddings, context)
    verdict = check(variant, profile, engine)
    support = verdict.engine if verdict.status != "unsupported" else None
    engine_name = verdict.engine.engine if verdict.engine else (engine or "vllm")
    tps = [tp] if tp else tp_choices(profile.spec.devices_per_node, arch.attention_heads, engine_name)
    pps = [pp] if pp else pp_choices(engine_name, max_pp)
    tried: list[Estimate] = []
    for p in pps:
        for t in tps:
            result = _estimate_at(model, variant, profile, verdict, support, engine_name, Parallelism(t, p, ep), ctx,
                                  batch, kv_dtype, settings, usd_per_device_hour, prompt_tokens or ctx)
            if result.fits or (tp and pp) or support is None:
                return result
            tried.append(result)
    # Nothing fits: report the largest configuration tried, with what would make it fit.
    best = tried[-1]
    hints = [f"nothing up to tp={best.tensor_parallel} pp={best.pipeline_parallel} fits"]
    if not pp and engine_name != "vllm":
        hints.append(f"{engine_name} runs a replica on one device (no tensor or pipeline parallelism)")
    return replace(best, reasons=best.reasons + hints)


def _usable_per_device(profile: HardwareProfile, engine: str, settings: EngineSettings) -> tuple[int | None, str]:
    spec = profile.spec
    if spec.memory_gb is None:
        return None, f"{profile.name} has no published memory size"
    total = spec.memory_gb * 1e9 * spec.usable_memory.fraction
    if engine == "vllm" and spec.usable_memory.rule == "device":
        return int(total * settings.gpu_memory_utilization), (
            f"gpu_memory_utilization {settings.gpu_memory_utilization} of {spec.memory_gb:g} GB")
    if spec.usable_memory.rule == "unifiedWorkingSet":
        return int(total), f"{spec.usable_memory.fraction:g} of {spec.memory_gb:g} GB unified memory (GPU working set)"
    return int(total), f"{spec.memory_gb:g} GB"


def _estimate_at(model: Model, variant: Variant, profile: HardwareProfile, verdict: Verdict,
                 support: EngineSupport | None, engine: str, par: Parallelism, ctx: int, batch: int, kv_choice: str, settings: EngineSettings,
                 price: float | None, prompt: int) -> Estimate:
    arch = model.spec.architecture
    assert arch is not None
    reasons: list[str] = []
    platform = verdict.engine.platform if verdict.engine else None
    kv = resolve_kv_dtype(kv_choice, variant)
    support_status = verdict.status
    if verdict.status != "supported":
        reasons.append(f"{verdict.status} on {profile.name}: {verdict.reason}")
    if support is not None and kv not in support.kv_cache_dtypes and kv_choice != "auto":
        reasons.append(f"{engine} on {profile.name} has no {kv} KV cache (it has {', '.join(support.kv_cache_dtypes)})")
        support = None
        support_status = "unsupported"
    if ctx > arch.max_position_embeddings:
        reasons.append(f"context {ctx} exceeds {model.name}'s maximum of {arch.max_position_embeddings} tokens")

    stages = stage_weight_bytes(arch, variant, par)
    weights_dev = max(stages)
    weights_total = weight_bytes(arch, variant, include_mtp=False)
    kvpt = kv_bytes_per_token(arch, kv, par, engine)
    step = _kv_step(engine, platform)
    cached_tokens = _round_up(ctx, step) * batch
    kv_dev = kvpt.per_device * cached_tokens

    if engine == "mlx-lm" or engine == "vllm-metal":
        # mlx-lm runs the prompt through the model in chunks and the model returns logits (in its bf16
        # dtype) for every token of a chunk, so the chunk's logits count, not only the last token's.
        chunk = min(prompt, ctx, MLX_PREFILL_STEP)
        overhead = activation_peak_bytes(arch, chunk, par.tp, max_seqs=chunk, logit_bytes=2)
    elif platform == "cpu":
        overhead = activation_peak_bytes(arch, min(settings.max_num_batched_tokens, ctx), par.tp, settings.max_num_seqs)
    else:
        overhead = (activation_peak_bytes(arch, settings.max_num_batched_tokens, par.tp, settings.max_num_seqs)
                    + VLLM_NON_TORCH_BYTES + VLLM_CUDA_GRAPH_BYTES)

    usable, usable_note = _usable_per_device(profile, engine, settings)
    if platform == "cpu" and settings.cpu_kv_cache_gib is not None:
        # vLLM CPU: the KV pool is exactly VLLM_CPU_KVCACHE_SPACE, whatever the host has.
        free_for_kv = int(settings.cpu_kv_cache_gib * GiB)
    else:
        free_for_kv = None if usable is None else usable - weights_dev - overhead
    peak_dev = weights_dev + overhead + kv_dev
    fits = support is not None and ctx <= arch.max_position_embeddings
    if free_for_kv is None:
        reasons.append(f"cannot check fit: {usable_note}")
        fits = False
        max_ctx = max_conc = None
    else:
        capacity_tokens = max(0, free_for_kv) // kvpt.per_device if kvpt.per_device else 0
        max_ctx = min(arch.max_position_embeddings, capacity_tokens // step * step)
        max_conc = capacity_tokens // _round_up(ctx, step)
        if engine == "vllm":
            max_conc = min(max_conc, settings.max_num_seqs)
        if kv_dev > free_for_kv:
            fits = False
            short = kv_dev - free_for_kv
            where = "the KV pool (VLLM_CPU_KVCACHE_SPACE)" if platform == "cpu" and settings.cpu_kv_cache_gib else (
                f"{profile.name} ({usable_note}: {usable / 1e9:.1f} GB usable per device)")
            reasons.append(
                f"needs {peak_dev / 1e9:.1f} GB per device (weights {weights_dev / 1e9:.1f} + KV "
                f"{kv_dev / 1e9:.2f} for {batch} x {ctx} tokens + overhead {overhead / 1e9:.2f}) at tp={par.tp} "
                f"pp={par.pp}; {where} leaves it short by {short / 1e9:.1f} GB"
                + _what_would_fit(model, variant, kv_dev + overhead, usable, par, engine))
    speed = _speed(model, variant, profile, engine, par, ctx, batch, kv, settings, reasons)
    devices = par.devices
    usd_hour = None if price is None else price * devices
    per_m = None
    if usd_hour is not None and speed["aggregate"]:
        per_m = usd_hour / (speed["aggregate"] * 3600) * 1e6
    if engine == "vllm" and platform not in ("cpu",) and support is not None:
        reasons.append("vLLM non-torch and CUDA-graph memory (1 GiB per device) are typical figures, not measured")
    return Estimate(
        model=model.name, variant=variant.name, hardware=profile.name, engine=support.engine if support else None,
        platform=platform, support=support_status, fits=fits, tensor_parallel=par.tp, pipeline_parallel=par.pp, expert_parallel=par.ep,
        devices=devices, context_tokens=ctx, batch=batch, kv_cache_dtype=kv,
        weights_bytes=weights_total, weights_bytes_per_device=weights_dev, kv_bytes_per_token=kvpt.replica,
        kv_bytes_per_token_per_device=kvpt.per_device, kv_bytes=kvpt.replica * cached_tokens,
        overhead_bytes_per_device=overhead, peak_bytes=sum(stages) * par.tp + (overhead + kv_dev) * devices,
        peak_bytes_per_device=peak_dev, usable_bytes_per_device=usable, max_context_tokens=max_ctx,
        max_concurrency=max_conc, decode_tokens_per_second=speed["decode"],
        aggregate_decode_tokens_per_second=speed["aggregate"], prefill_tokens_per_second=speed["prefill"],
        decode_step_seconds=speed["step"], bound=speed["bound"], calibration=speed["calibration"],
        usd_per_hour=usd_hour, usd_per_million_output_tokens=per_m, reasons=reasons)


def _what_would_fit(model: Model, variant: Variant, kv_and_overhead: int, usable: int | None, par: Parallelism,
                    engine: str) -> str:
    """A sentence naming the variants that would fit as they are, and whether more devices would help."""
    if usable is None:
        return ""
    arch = model.spec.architecture
    others = [(max(stage_weight_bytes(arch, v, par)), v.name) for v in model.spec.variants if v.name != variant.name]
    fitting = sorted((w, name) for w, name in others if w + kv_and_overhead <= usable)
    options = []
    if fitting:
        w, name = fitting[-1]  # the largest (least compressed) variant that fits
        options.append(f"use variant {name} ({w / 1e9:.1f} GB of weights per device)")
    if engine == "vllm":
        options.append("spread it over more devices (tensor or pipeline parallelism)")
    else:
        options.append("use hardware with more memory")
    return ". To fit: " + ", or ".join(options)


def _speed(model: Model, variant: Variant, profile: HardwareProfile, engine: str, par: Parallelism, ctx: int,
           batch: int, kv: KvDtype, settings: EngineSettings, reasons: list[str]) -> dict[str, Any]:
    arch = model.spec.architecture
    spec = profile.spec
    cal: Calibration = lookup(engine, spec.family, format_class(variant))
    out: dict[str, Any] = {"decode": None, "aggregate": None, "prefill": None, "step": None, "bound": None,
                           "calibration": {"key": cal.key, "bandwidthEfficiency": cal.bandwidth_efficiency,
                                           "computeEfficiency": cal.compute_efficiency, "measured": cal.measured,
                                           "source": cal.source}}
    if not cal.measured:
        reasons.append(f"speed uses calibration '{cal.key}', which is not measured ({cal.source})")
    compute_fmt = FORMATS[variant.formats.get("routedExperts", variant.formats["default"])].compute
    if compute_fmt not in spec.native_formats:
        compute_fmt = "bf16" if "bf16" in spec.native_formats else "fp16"
    peak = getattr(spec.peak_tflops, compute_fmt, None) or (spec.peak_tflops.fp16 if compute_fmt == "bf16" else None)
    bw = spec.memory_bandwidth_gbps
    link = spec.interconnect.bandwidth_gbps
    if bw is None:
        reasons.append(f"decode speed unknown: {profile.name} has no published memory bandwidth")
    if peak is None:
        reasons.append(f"compute-bound speeds unknown: {profile.name} has no published {compute_fmt} peak")
    if par.tp > 1 and link is None:
        reasons.append(f"tensor-parallel speed unknown: {profile.name} has no published interconnect bandwidth")
    if bw is None or peak is None or (par.tp > 1 and link is None):
        return out
    eff_bw = bw * 1e9 * cal.bandwidth_efficiency
    eff_flops = peak * 1e12 * cal.compute_efficiency
    step = 0.0
    worst = {"memory": 0.0, "compute": 0.0, "interconnect": 0.0}
    for cost in decode_step_costs(arch, variant, par, batch, ctx, kv, engine):
        t_mem, t_cmp = cost.bytes_read / eff_bw, cost.flops / eff_flops
        t_comm = 0.0
        if cost.allreduces:
            t_comm = cost.allreduces * (ALLREDUCE_LATENCY_S
                                        + 2 * (par.tp - 1) / par.tp * cost.allreduce_bytes / (link * 1e9))
        step += max(t_mem, t_cmp) + t_comm
        worst["memory"] += t_mem
        worst["compute"] += t_cmp
        worst["interconnect"] += t_comm
    out["step"] = step
    out["decode"] = 1 / step
    out["aggregate"] = batch / step
    out["bound"] = max(worst, key=lambda k: worst[k])
    flops_token = active_flops_per_token(arch, variant, par)
    prompt = min(ctx, settings.default_context_tokens)  # prefill is quoted for a prompt of the default context
    attn = 2 * 2 * prompt / 2 * arch.attention_heads / par.tp * arch.head_dim * arch.layers  # mean causal span
    out["prefill"] = eff_flops / (flops_token / par.pp + attn / par.pp) / par.pp if flops_token else None
    return out
