"""Calibration: how much of the datasheet bandwidth and compute an engine really gets.

Keyed by engine x hardware family (a glob) x format class x architecture class (dense or MoE), each entry
with the measurements it comes from. The most specific matching entry wins; the estimate says which one
it used. Entries marked ``measured=False`` are defaults nobody has measured yet, and the estimate says so.

``MEASUREMENTS`` holds the published figures the vLLM entries are fitted to, as data: the conditions
each was measured under (model, variant, hardware, tensor parallelism, concurrency, context) and the
figure. benchmarks/calibration.py fits and prints them; tests/unit/estimate/test_calibration.py checks
that every fitted entry gives its figures back through ``estimate()``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.spec.formats import FORMATS
from orchestrator.spec.model import Architecture, Variant


@dataclass(frozen=True)
class Calibration:
    key: str
    engine: str
    family: str
    """fnmatch pattern over HardwareProfile.spec.family."""
    format_class: str
    """'float', 'fp8', 'int', 'mlx-affine' or '*'."""
    bandwidth_efficiency: float
    """Achieved / datasheet memory bandwidth during decode (bytes actually read per step / step time)."""
    compute_efficiency: float
    """Achieved / datasheet peak FLOPS during prefill."""
    measured: bool
    source: str
    architecture: str = "*"
    """'dense', 'moe' or '*': MoE decode at small batch reaches a far smaller share of the bandwidth."""
    fitted_to: tuple[str, ...] = ()
    """Ids of the MEASUREMENTS this entry is fitted to (empty for defaults)."""
    hardware: str = "*"
    """fnmatch pattern over the HardwareProfile's name: an entry fitted to a Benchmark (estimate/fit.py) holds for
    the profile measured only, not for its whole family."""
    benchmark: str | None = None
    """The Benchmark document the entry is fitted to (estimate/fit.py); None for the table's entries."""


@dataclass(frozen=True)
class Measurement:
    """One published serving figure and the conditions it was measured under."""

    id: str
    model: str
    """Catalog model name (tests/data/calibration holds the ones outside the built-in catalog)."""
    variant: str
    hardware: str
    """Hardware profile name."""
    tensor_parallel: int
    engine: str
    engine_version: str
    workload: str
    figure: str
    """The published figure, as published."""
    source: str
    batch: int = 1
    """Sequences decoding together (the benchmark's fixed concurrency)."""
    context_tokens: int = 0
    """Decode: mean tokens each step attends over (mean prompt + half the mean output)."""
    decode_step_seconds: float | None = None
    """Decode: the published time per output token."""
    prompt_tokens: int = 0
    """Prefill: tokens per prompt."""
    prefill_tokens_per_second: float | None = None
    """Prefill: prompt tokens / benchmark duration (a lower bound: the duration holds some decode too)."""
    note: str = ""


# GPUStack's performance lab runs `vllm bench serve` (ShareGPT or random prompts) against `vllm serve MODEL
# -tp N` with no other flags; pages under docs.gpustack.ai/latest/performance-lab/ (source:
# github.com/gpustack/gpustack, docs/performance-lab/). Decode figures below are runs at a fixed
# --max-concurrency (1 or 4), where a step decodes that many sequences; context = mean prompt + mean
# output / 2 from the run's token totals. Prefill figures are the 32,000-token random prompts (100 sent at
# once), which the prompt tokens dominate.
GPUSTACK = "docs.gpustack.ai/latest/performance-lab"
MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("llama-3.1-8b/h100/c1", "llama-3.1-8b", "bf16", "nvidia-h100-sxm", 1, "vllm", "0.21.0",
                "InferenceBench llm.inference.chatbot-short (built-in short chat turns), concurrency 1",
                "p50 TPOT 6.48 ms", "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/",
                batch=1, context_tokens=200, decode_step_seconds=6.48e-3,
                note="fp16 weights (same bytes as bf16). Context not published (short turns): 200 assumed; the KV "
                     "cache at 200 tokens is 0.16% of the bytes a step reads, so any context under 1,000 tokens "
                     "moves the fit by under 1%"),
    Measurement("qwen3-8b/h100/c1", "qwen3-8b", "bf16", "nvidia-h100-sxm", 1, "vllm", "0.11.0",
                "ShareGPT, 100 prompts (23,260 prompt / 22,061 output tokens), --max-concurrency 1",
                "mean TPOT 7.28 ms", f"{GPUSTACK}/qwen3-8b/h100-latency (baseline, BS=1)",
                batch=1, context_tokens=343, decode_step_seconds=7.28e-3),
    Measurement("glm-4.6/h200x8/c4", "glm-4.6", "bf16", "nvidia-h200", 8, "vllm", "0.11.0",
                "ShareGPT, 100 prompts (22,992 prompt / 21,794 output tokens), --max-concurrency 4",
                "mean TPOT 18.11 ms", f"{GPUSTACK}/glm-4.x/h200 (baseline, ShareGPT batch size 4)",
                batch=4, context_tokens=339, decode_step_seconds=18.11e-3),
    Measurement("deepseek-r1/h200x8/c4", "deepseek-v3", "fp8", "nvidia-h200", 8, "vllm", "0.11.0",
                "ShareGPT, 100 prompts (22,836 prompt / 21,338 output tokens), --max-concurrency 4",
                "mean TPOT 19.36 ms", f"{GPUSTACK}/deepseek-r1/h200 (baseline, ShareGPT batch size 4)",
                batch=4, context_tokens=335, decode_step_seconds=19.36e-3,
                note="DeepSeek-R1-0528: the DeepSeek-V3 architecture and FP8 block-128 checkpoint format"),
    Measurement("llama-3.1-8b/a100-40g/c1", "llama-3.1-8b", "bf16", "nvidia-a100-40g", 1, "vllm", "0.23.0",
                "random 1,024 prompt / 128 output tokens, --ignore-eos, --max-concurrency 1",
                "about 75 tok/s decode", "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on",
                batch=1, context_tokens=1088, decode_step_seconds=1 / 75,
                note="published rounded ('about 75 tokens/sec, roughly 77% of the memory-bandwidth ceiling')"),
    Measurement("qwen3-8b/910b/c4", "qwen3-8b", "bf16", "huawei-ascend-910b", 1, "vllm", "vllm-ascend 0.9.1",
                "ShareGPT, 100 prompts (23,260 prompt / 22,061 output tokens), --max-concurrency 4",
                "mean TPOT 47.28 ms", f"{GPUSTACK}/qwen3-8b/910b (baseline, ShareGPT batch size 4)",
                batch=4, context_tokens=343, decode_step_seconds=47.28e-3,
                note="vLLM-Ascend 0.9.1; the profile runs 0.23.0. The page's setup section names Qwen3-30B-A3B "
                     "(copied from its sibling page); its commands and token counts are Qwen3-8B's"),
    Measurement("qwen3-30b-a3b/910bx2/c4", "qwen3-30b-a3b", "bf16", "huawei-ascend-910b", 2, "vllm",
                "vllm-ascend 0.9.1",
                "ShareGPT, 1,000 prompts (217,393 prompt / 201,847 output tokens), --max-concurrency 4",
                "mean TPOT 122.71 ms", f"{GPUSTACK}/qwen3-30b-a3b/910b (baseline, ShareGPT batch size 4)",
                batch=4, context_tokens=318, decode_step_seconds=122.71e-3,
                note="vLLM-Ascend 0.9.1; the profile runs 0.23.0"),
    Measurement("glm-4.6/h200x8/32k", "glm-4.6", "bf16", "nvidia-h200", 8, "vllm", "0.11.0",
                "random, 100 prompts of 32,000 tokens sent at once, 100 output tokens",
                "3,200,000 prompt tokens in 213.02 s", f"{GPUSTACK}/glm-4.x/h200 (baseline, random 32K input)",
                prompt_tokens=32000, prefill_tokens_per_second=3_200_000 / 213.02),
    Measurement("deepseek-r1/h200x8/32k", "deepseek-v3", "fp8", "nvidia-h200", 8, "vllm", "0.11.0",
                "random, 100 prompts of 32,000 tokens sent at once, 100 output tokens",
                "3,199,900 prompt tokens in 206.90 s", f"{GPUSTACK}/deepseek-r1/h200 (baseline, random 32K input)",
                prompt_tokens=32000, prefill_tokens_per_second=3_199_900 / 206.90),
    Measurement("qwen3-8b/910b/32k", "qwen3-8b", "bf16", "huawei-ascend-910b", 1, "vllm", "vllm-ascend 0.9.1",
                "random, 100 prompts of 32,000 tokens sent at once, 100 output tokens",
                "3,200,000 prompt tokens in 1,110.48 s", f"{GPUSTACK}/qwen3-8b/910b (baseline, random 32K input)",
                prompt_tokens=32000, prefill_tokens_per_second=3_200_000 / 1110.48),
    Measurement("qwen3-30b-a3b/910bx2/32k", "qwen3-30b-a3b", "bf16", "huawei-ascend-910b", 2, "vllm",
                "vllm-ascend 0.9.1", "random, 100 prompts of 32,000 tokens sent at once, 100 output tokens",
                "3,200,000 prompt tokens in 866.50 s", f"{GPUSTACK}/qwen3-30b-a3b/910b (baseline, random 32K input)",
                prompt_tokens=32000, prefill_tokens_per_second=3_200_000 / 866.50),
)

# GLM-4.5-Air mlx-3bit on an M2 Max 64 GB (400 GB/s), mlx-lm: 4193 tokens at 25.564 tok/s after a
# 14-token prompt (facts/models.md, the seed's run). moxin's byte model for that run: 5,639,974,144 bytes
# of weights read per token (attention, dense layer, shared experts, router, lm_head, and the 8 of 128
# routed experts of each MoE layer that one token uses) plus the KV cache at the mean context of the run
# (14 + 4193/2 = 2110.5 tokens x 188,416 B = 397,651,968 B): 6,037,626,112 B per token, 15.09 ms at
# 400 GB/s, i.e. 66.25 tok/s at full bandwidth. Measured 25.564 -> 25.564 / 66.25 = 0.3859.
# It is keyed by engine x family x format class, so every MLX-quantized model on every Apple chip uses it.
# (tests/unit/estimate/test_estimator.py re-derives this figure from the byte model.)
MLX_APPLE_AFFINE_BW = 0.3859

# vLLM entries: each efficiency is the geometric mean of the efficiencies its figures need through moxin's
# own byte and FLOP model (benchmarks/calibration.py prints the fit; bandwidth from decode figures,
# compute from prefill figures). A single efficiency cannot fit dense and MoE decode alike: a dense model
# on one device gets 0.62-0.73 of the bandwidth, GLM-4.6 and DeepSeek-R1 on 8 devices at concurrency 4
# get 0.15-0.25 (per-step costs the byte model leaves out: small expert GEMMs split 8 ways, MoE routing,
# TP all-reduces), so entries are also keyed dense / MoE.
HOPPER_DENSE_BW = 0.657  # llama-3.1-8b/h100/c1 needs 0.693, qwen3-8b/h100/c1 needs 0.623
HOPPER_MOE_BW, HOPPER_MOE_COMPUTE = 0.248, 0.264  # glm-4.6/h200x8/c4, glm-4.6/h200x8/32k
HOPPER_FP8_MOE_BW, HOPPER_FP8_MOE_COMPUTE = 0.147, 0.148  # deepseek-r1/h200x8/c4, deepseek-r1/h200x8/32k
AMPERE_DENSE_BW = 0.731  # llama-3.1-8b/a100-40g/c1
ASCEND_DENSE_BW, ASCEND_DENSE_COMPUTE = 0.203, 0.253  # qwen3-8b/910b/c4, qwen3-8b/910b/32k
ASCEND_MOE_BW, ASCEND_MOE_COMPUTE = 0.0405, 0.123  # qwen3-30b-a3b/910bx2/c4, qwen3-30b-a3b/910bx2/32k
VLLM_DEFAULT_BW, VLLM_DEFAULT_COMPUTE = 0.6, 0.5

TABLE: tuple[Calibration, ...] = (
    Calibration("mlx-lm/apple/mlx-affine", "mlx-lm", "apple-*", "mlx-affine", MLX_APPLE_AFFINE_BW, 0.5, True,
                "GLM-4.5-Air mlx-3bit decode on M2 Max 64GB, 25.564 tok/s over 4193 tokens (facts/models.md)"),
    Calibration("mlx-lm/apple/*", "mlx-lm", "apple-*", "*", MLX_APPLE_AFFINE_BW, 0.5, False,
                "assumed equal to the measured MLX affine figure; no unquantized MLX run measured"),
    Calibration("vllm-metal/apple/*", "vllm-metal", "apple-*", "*", MLX_APPLE_AFFINE_BW, 0.5, False,
                "assumed equal to mlx-lm (vllm-metal runs MLX kernels); not measured"),
    Calibration("vllm/nvidia-hopper/float/dense", "vllm", "nvidia-hopper", "float", HOPPER_DENSE_BW,
                VLLM_DEFAULT_COMPUTE, True,
                "bandwidth: geometric mean of Llama-3.1-8B fp16 on 1x H100, vLLM 0.21.0, concurrency 1, p50 TPOT "
                "6.48 ms (InferenceBench) and Qwen3-8B BF16 on 1x H100, vLLM 0.11.0, concurrency 1, mean TPOT 7.28 "
                "ms (GPUStack performance lab); compute not fitted (no dense prefill figure), default 0.5",
                architecture="dense", fitted_to=("llama-3.1-8b/h100/c1", "qwen3-8b/h100/c1")),
    Calibration("vllm/nvidia-hopper/float/moe", "vllm", "nvidia-hopper", "float", HOPPER_MOE_BW,
                HOPPER_MOE_COMPUTE, True,
                "GLM-4.6 BF16 on 8x H200 TP8, vLLM 0.11.0 (GPUStack performance lab): concurrency 4, mean TPOT "
                "18.11 ms (bandwidth); 100 x 32,000-token prompts in 213.02 s (compute)",
                architecture="moe", fitted_to=("glm-4.6/h200x8/c4", "glm-4.6/h200x8/32k")),
    Calibration("vllm/nvidia-hopper/fp8/moe", "vllm", "nvidia-hopper", "fp8", HOPPER_FP8_MOE_BW,
                HOPPER_FP8_MOE_COMPUTE, True,
                "DeepSeek-R1-0528 FP8 on 8x H200 TP8, vLLM 0.11.0 (GPUStack performance lab): concurrency 4, mean "
                "TPOT 19.36 ms (bandwidth); 100 x 32,000-token prompts in 206.90 s (compute, of the FP8 peak)",
                architecture="moe", fitted_to=("deepseek-r1/h200x8/c4", "deepseek-r1/h200x8/32k")),
    Calibration("vllm/nvidia-hopper/fp8/dense", "vllm", "nvidia-hopper", "fp8", HOPPER_DENSE_BW,
                VLLM_DEFAULT_COMPUTE, False,
                "assumed equal to the BF16 dense fit (vllm/nvidia-hopper/float/dense): no dense FP8 figure at a "
                "fixed concurrency found", architecture="dense"),
    Calibration("vllm/nvidia-ampere/float/dense", "vllm", "nvidia-ampere", "float", AMPERE_DENSE_BW,
                VLLM_DEFAULT_COMPUTE, True,
                "bandwidth: Llama-3.1-8B BF16 on 1x A100 SXM4 40GB (1,555 GB/s), vLLM 0.23.0, 1,024-token "
                "prompts, concurrency 1, about 75 tok/s (johnmusgrave.com); compute not fitted, default 0.5",
                architecture="dense", fitted_to=("llama-3.1-8b/a100-40g/c1",)),
    Calibration("vllm/huawei-ascend/float/dense", "vllm", "huawei-ascend", "float", ASCEND_DENSE_BW,
                ASCEND_DENSE_COMPUTE, True,
                "Qwen3-8B BF16 on 1x Ascend 910B, vLLM-Ascend 0.9.1 (GPUStack performance lab): concurrency 4, mean "
                "TPOT 47.28 ms (bandwidth); 100 x 32,000-token prompts in 1,110.48 s (compute). The profiles run "
                "vLLM-Ascend 0.23.0, which may be faster", architecture="dense",
                fitted_to=("qwen3-8b/910b/c4", "qwen3-8b/910b/32k")),
    Calibration("vllm/huawei-ascend/float/moe", "vllm", "huawei-ascend", "float", ASCEND_MOE_BW,
                ASCEND_MOE_COMPUTE, True,
                "Qwen3-30B-A3B BF16 on 2x Ascend 910B TP2, vLLM-Ascend 0.9.1 (GPUStack performance lab): "
                "concurrency 4, mean TPOT 122.71 ms (bandwidth); 100 x 32,000-token prompts in 866.50 s (compute). "
                "The profiles run vLLM-Ascend 0.23.0, which may be faster", architecture="moe",
                fitted_to=("qwen3-30b-a3b/910bx2/c4", "qwen3-30b-a3b/910bx2/32k")),
    Calibration("vllm/*/*/moe", "vllm", "*", "*", HOPPER_MOE_BW, HOPPER_MOE_COMPUTE, False,
                "assumed equal to vLLM's BF16 MoE fit on H200 (vllm/nvidia-hopper/float/moe): no MoE figure on this "
                "hardware, and a platform without a figure should not look faster than one with",
                architecture="moe"),
    Calibration("vllm/*/*", "vllm", "*", "*", VLLM_DEFAULT_BW, VLLM_DEFAULT_COMPUTE, False,
                "uncalibrated default for vLLM on accelerators: no measurement on this hardware yet (dense models "
                "on H100 and A100 measure 0.62-0.73 of the bandwidth)"),
    Calibration("*/*/*", "*", "*", "*", 0.5, 0.4, False, "uncalibrated default"),
)


def format_class(variant: Variant) -> str:
    """The format family of the weights a decode step mostly reads (routed experts, else the default)."""
    name = variant.formats.get("routedExperts", variant.formats["default"])
    return FORMATS[name].family


def architecture_class(arch: Architecture) -> str:
    """'moe' for a mixture-of-experts model, else 'dense'."""
    return "moe" if arch.moe else "dense"


def lookup(engine: str, family: str, fmt_class: str, arch_class: str = "dense", *, hardware: str = "",
           extra: Sequence[Calibration] = ()) -> Calibration:
    """The most specific entry of the table and ``extra`` (entries fitted to Benchmarks) that matches. An entry
    for one hardware profile by name is more specific than any family entry."""
    def specificity(c: Calibration) -> int:
        parts = (c.engine, c.family, c.format_class, c.architecture)
        exact_family = c.family != "*" and "*" not in c.family
        return sum(part != "*" for part in parts) + exact_family + 10 * (c.hardware != "*")

    matches = [c for c in (*TABLE, *extra) if fnmatch.fnmatch(engine, c.engine) and fnmatch.fnmatch(family, c.family)
               and fnmatch.fnmatch(fmt_class, c.format_class) and fnmatch.fnmatch(arch_class, c.architecture)
               and fnmatch.fnmatch(hardware, c.hardware)]
    return max(matches, key=specificity)
