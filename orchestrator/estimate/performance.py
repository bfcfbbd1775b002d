"""Speed: a roofline per decode step and per prefill, with calibrated efficiencies. Pure.

decode step = max(bytes read / effective bandwidth, FLOPs / effective compute) + TP communication,
summed over pipeline stages (a token passes through every stage in turn). Bytes read include the KV
cache and, for MoE, only the experts a batch of B tokens touches: E * (1 - (1 - k/E)^B) distinct experts
per layer in expectation (uniform routing), not k * B.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.estimate.memory import (
    Parallelism,
    device_share,
    kv_bytes_per_token_layer,
    pipeline_stages,
)
from orchestrator.estimate.parameters import Tensor, layer_tensors, tensor_bytes
from orchestrator.spec.engine import KvDtype
from orchestrator.spec.model import Architecture, Variant

# One all-reduce costs at least this much however small (launch + synchronisation), seconds.
ALLREDUCE_LATENCY_S = 8e-6


def expected_distinct_experts(experts: int, k: int, batch: int) -> float:
    """Expected number of distinct experts that ``batch`` tokens routed top-``k`` of ``experts`` touch."""
    return experts * (1 - (1 - k / experts) ** batch)


@dataclass(frozen=True)
class StepCost:
    bytes_read: float
    flops: float
    allreduce_bytes: float
    allreduces: int


def _tensor_step(t: Tensor, arch: Architecture, variant: Variant, par: Parallelism, batch: int) -> tuple[float, float]:
    """(bytes read, FLOPs) for tensor ``t`` on one device in one decode step of ``batch`` tokens."""
    share = device_share(t, arch, par)
    full = tensor_bytes(t, variant) * share
    if t.split == "expert" and arch.moe:
        touched = expected_distinct_experts(arch.moe.routed_experts, arch.moe.experts_per_token, batch)
        read = full * touched / arch.moe.routed_experts
    elif t.active_count == 0:  # the input embedding: B rows looked up, not a matrix product
        return 0.0, 0.0
    else:
        read = full
    macs_per_token = t.rows * t.cols * share * t.active_count  # cols == 0: a vector, no matrix product
    return read, 2.0 * macs_per_token * batch


def _layer_step(arch: Architecture, variant: Variant, par: Parallelism, moe: bool, batch: int) -> tuple[float, float]:
    read = flops = 0.0
    for t in layer_tensors(arch, moe):
        r, f = _tensor_step(t, arch, variant, par, batch)
        read += r
        flops += f
    return read, flops


def _attention_flops_per_layer(arch: Architecture, tp: int, batch: int, context: int) -> float:
    heads = max(1, arch.attention_heads // tp)
    if arch.mla:
        m = arch.mla
        # Absorbed MLA decode: scores over latent + rope, then values in latent space.
        return 2 * batch * context * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)
    return 4 * batch * context * heads * arch.head_dim


def decode_step_costs(arch: Architecture, variant: Variant, par: Parallelism, batch: int, context: int,
                      kv_dtype: KvDtype, engine: str) -> list[StepCost]:
    """Per pipeline stage: what one device reads and computes in one decode step."""
    dense_read, dense_flops = _layer_step(arch, variant, par, False, batch)
    moe_read, moe_flops = _layer_step(arch, variant, par, True, batch) if arch.moe else (0.0, 0.0)
    kv_read = kv_bytes_per_token_layer(arch, kv_dtype, par.tp, engine) * batch * context
    attention = _attention_flops_per_layer(arch, par.tp, batch, context)
    out = []
    for stage in pipeline_stages(arch, par.pp):
        read = stage.dense_layers * dense_read + stage.moe_layers * moe_read + stage.layers * kv_read
        flops = stage.dense_layers * dense_flops + stage.moe_layers * moe_flops + stage.layers * attention
        for t in stage.edge:
            r, f = _tensor_step(t, arch, variant, par, batch)
            read += r
            flops += f
        reduces = 2 * stage.layers if par.tp > 1 else 0
        out.append(StepCost(read, flops, batch * arch.hidden_size * 2.0, reduces))
    return out


def active_flops_per_token(arch: Architecture, variant: Variant, par: Parallelism) -> float:
    """Matrix FLOPs one token costs on one device (all stages), attention excluded."""
    return sum(c.flops for c in decode_step_costs(arch, variant, par, 1, 0, "bf16", "vllm"))
