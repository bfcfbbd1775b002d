"""Memory: weight bytes per device under TP/PP/EP, KV-cache bytes per token, engine overheads.

Pure functions of (architecture, variant, parallelism, engine settings). Everything is in bytes
(integers) so results compare exactly with what engines report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.estimate.parameters import (
    Tensor,
    dense_layer_count,
    first_stage_tensors,
    last_stage_tensors,
    layer_tensors,
    tensor_bytes,
)
from orchestrator.spec.engine import KvDtype
from orchestrator.spec.model import Architecture, Variant

GiB = 2**30

# Bits per cached element. vLLM's fp8/int8 caches store one byte per element (per-tensor scales);
# mlx-lm's quantized cache (--kv-bits) uses its affine group quantization: group 64, a 16-bit scale and
# bias per group, so 8 -> 8.5 bits and 4 -> 4.5 bits (facts/models.md, MLX affine quantization).
KV_BITS = {"vllm": {"bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4},
           "mlx-lm": {"bf16": 16, "fp16": 16, "fp8": 8, "int8": 8.5, "int4": 4.5}}


@dataclass(frozen=True)
class Parallelism:
    tp: int = 1
    """Tensor-parallel degree (devices in one stage)."""
    pp: int = 1
    """Pipeline stages."""
    ep: bool = False
    """Expert parallelism: each device holds whole experts instead of a slice of every expert."""

    @property
    def devices(self) -> int:
        return self.tp * self.pp


def stage_layers(arch: Architecture, pp: int) -> list[range]:
    """Layer indices of each pipeline stage, split as evenly as possible (earlier stages get the extra)."""
    base, extra = divmod(arch.layers, pp)
    out, start = [], 0
    for stage in range(pp):
        n = base + (1 if stage < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class Stage:
    """What one pipeline stage holds: how many dense and MoE layers, and its edge tensors."""

    dense_layers: int
    moe_layers: int
    edge: tuple[Tensor, ...]
    """The embedding on the first stage; the final norm and lm_head on the last."""

    @property
    def layers(self) -> int:
        return self.dense_layers + self.moe_layers


def pipeline_stages(arch: Architecture, pp: int) -> list[Stage]:
    dense_n = dense_layer_count(arch)
    ranges = stage_layers(arch, pp)
    out = []
    for i, layers in enumerate(ranges):
        dense = sum(1 for layer in layers if layer < dense_n)
        edge = (first_stage_tensors(arch) if i == 0 else []) + (last_stage_tensors(arch) if i == pp - 1 else [])
        out.append(Stage(dense, len(layers) - dense, tuple(edge)))
    return out


def device_share(t: Tensor, arch: Architecture, par: Parallelism) -> float:
    """Fraction of tensor ``t`` that one device of a TP group holds."""
    tp = par.tp
    if tp == 1 or t.split == "replicate":
        return 1.0
    if t.name in ("k_proj", "v_proj", "k_proj.bias", "v_proj.bias"):
        # vLLM replicates KV heads when TP exceeds them: each rank keeps max(1, kv/tp) heads.
        return max(1, arch.kv_heads // tp) / arch.kv_heads
    if t.split == "expert" and par.ep:
        experts = arch.moe.routed_experts if arch.moe else 1
        return math.ceil(experts / tp) / experts
    return 1.0 / tp


def stage_weight_bytes(arch: Architecture, variant: Variant, par: Parallelism) -> list[int]:
    """Bytes of weights on one device of each pipeline stage (MTP layers not loaded)."""

    def on_device(tensors: list[Tensor] | tuple[Tensor, ...]) -> float:
        return sum(tensor_bytes(t, variant) * device_share(t, arch, par) for t in tensors)

    dense_layer = on_device(layer_tensors(arch, False))
    moe_layer = on_device(layer_tensors(arch, True)) if arch.moe else 0.0
    return [round(s.dense_layers * dense_layer + s.moe_layers * moe_layer + on_device(s.edge))
            for s in pipeline_stages(arch, par.pp)]


def kv_heads_per_device(arch: Architecture, tp: int) -> int:
    return max(1, arch.kv_heads // tp)


def kv_bytes_per_token_layer(arch: Architecture, dtype: KvDtype, tp: int, engine: str = "vllm") -> float:
    """KV-cache bytes one token takes in one layer on one device."""
    bits = KV_BITS.get(engine, KV_BITS["vllm"])[dtype]
    if arch.mla:
        # MLA caches one latent (kv_lora_rank + rope dims) per token per layer; every TP rank keeps all of it.
        return (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * bits / 8
    return 2 * kv_heads_per_device(arch, tp) * arch.head_dim * bits / 8


@dataclass(frozen=True)
class KvPerToken:
    per_device: int
    """On the device of the largest stage."""
    replica: int
    """Summed over every device of the replica (includes replicated heads)."""


def kv_bytes_per_token(arch: Architecture, dtype: KvDtype, par: Parallelism, engine: str = "vllm") -> KvPerToken:
    per_layer = kv_bytes_per_token_layer(arch, dtype, par.tp, engine)
    largest_stage = max(len(r) for r in stage_layers(arch, par.pp))
    return KvPerToken(per_device=math.ceil(per_layer * largest_stage), replica=math.ceil(per_layer * arch.layers * par.tp))


def activation_peak_bytes(arch: Architecture, tokens: int, tp: int, max_seqs: int, logit_bytes: int = 4) -> int:
    """Peak activation of one forward pass over ``tokens`` tokens on one device (vLLM's profiling run).

    The residual stream and attention in/out (a few hidden-wide bf16 buffers), the widest MLP
    intermediate (gate and up outputs, sharded by TP; for MoE the top-k expert copies of each token),
    and the logits of ``max_seqs`` positions (vLLM's sampler: fp32; mlx-lm: the model dtype).
    """
    h = arch.hidden_size
    q_width = arch.attention_heads * arch.head_dim // tp + 2 * kv_heads_per_device(arch, tp) * arch.head_dim
    mlp = 2 * arch.intermediate_size // tp
    if arch.moe:
        mlp = max(mlp, arch.moe.experts_per_token * 2 * arch.moe.moe_intermediate_size // tp)
    per_token = 2 * (4 * h + q_width + mlp)
    logits = min(tokens, max_seqs) * arch.vocab_size * logit_bytes
    return per_token * tokens + logits
