"""Parameter accounting: an architecture as the list of weight tensors it holds, by module class.

Every tensor carries its shape, how many of it there are, its module class (which variant format
applies) and how tensor parallelism splits it. Counts, active parameters and exact weight bytes all
derive from this one list, so they cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from orchestrator.spec.formats import FORMATS, MODULE_CLASSES
from orchestrator.spec.model import Architecture, Variant

Split = Literal["column", "row", "replicate", "vocab", "expert"]


@dataclass(frozen=True)
class Tensor:
    name: str
    module: str
    """Module class (formats.MODULE_CLASSES)."""
    rows: int
    """Output features (or the length of a vector)."""
    cols: int
    """Input features; 0 for a one-dimensional tensor (norm weight, bias)."""
    count: int
    """How many tensors of this shape (layers x experts)."""
    split: Split
    """How tensor parallelism shards it: column/row/vocab parallel, replicated, or by expert."""
    active_count: int
    """How many of them one decode token reads."""
    fp32: bool = False
    """Kept in float32 by every checkpoint (the router's score-correction bias in GLM-4.5 and DeepSeek-V3)."""

    @property
    def params(self) -> int:
        return self.rows * max(self.cols, 1) * self.count

    @property
    def active_params(self) -> int:
        return self.rows * max(self.cols, 1) * self.active_count


def layer_tensors(arch: Architecture, moe_layer: bool, n: int = 1, module_override: str | None = None) -> list[Tensor]:
    """Tensors of ``n`` identical decoder layers."""
    h = arch.hidden_size
    out: list[Tensor] = []

    def add(name: str, module: str, rows: int, cols: int, split: Split, per_layer: int = 1, active: int | None = None,
            fp32: bool = False):
        active = per_layer if active is None else active
        out.append(Tensor(name, module_override or module, rows, cols, n * per_layer, split, n * active, fp32))

    add("input_layernorm", "norms", h, 0, "replicate")
    add("post_attention_layernorm", "norms", h, 0, "replicate")
    if arch.mla:
        m, heads = arch.mla, arch.attention_heads
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            add("q_a_proj", "attention", m.q_lora_rank, h, "replicate")
            add("q_a_layernorm", "norms", m.q_lora_rank, 0, "replicate")
            add("q_b_proj", "attention", heads * qk, m.q_lora_rank, "column")
        else:
            add("q_proj", "attention", heads * qk, h, "column")
        add("kv_a_proj_with_mqa", "attention", m.kv_lora_rank + m.qk_rope_head_dim, h, "replicate")
        add("kv_a_layernorm", "norms", m.kv_lora_rank, 0, "replicate")
        add("kv_b_proj", "attention", heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, "column")
        add("o_proj", "attention", h, heads * m.v_head_dim, "row")
    else:
        q, kv = arch.attention_heads * arch.head_dim, arch.kv_heads * arch.head_dim
        add("q_proj", "attention", q, h, "column")
        add("k_proj", "attention", kv, h, "column")
        add("v_proj", "attention", kv, h, "column")
        add("o_proj", "attention", h, q, "row")
        if arch.attention_bias:
            add("q_proj.bias", "attention", q, 0, "column")
            add("k_proj.bias", "attention", kv, 0, "column")
            add("v_proj.bias", "attention", kv, 0, "column")
        if arch.qk_norm:
            add("q_norm", "norms", arch.head_dim, 0, "replicate")
            add("k_norm", "norms", arch.head_dim, 0, "replicate")
    if moe_layer:
        assert arch.moe
        e, k, mi = arch.moe.routed_experts, arch.moe.experts_per_token, arch.moe.moe_intermediate_size
        add("router", "router", e, h, "replicate")
        if arch.moe.router_bias:
            add("router.e_score_correction_bias", "router", e, 0, "replicate", fp32=True)
        for proj, rows, cols in (("gate_proj", mi, h), ("up_proj", mi, h), ("down_proj", h, mi)):
            add(f"experts.{proj}", "routedExperts", rows, cols, "expert", per_layer=e, active=k)
        if arch.moe.shared_experts:
            si = mi * arch.moe.shared_experts
            add("shared_experts.gate_proj", "sharedExperts", si, h, "column")
            add("shared_experts.up_proj", "sharedExperts", si, h, "column")
            add("shared_experts.down_proj", "sharedExperts", h, si, "row")
    else:
        i = arch.intermediate_size
        add("mlp.gate_proj", "denseMlp", i, h, "column")
        add("mlp.up_proj", "denseMlp", i, h, "column")
        add("mlp.down_proj", "denseMlp", h, i, "row")
    return out


def dense_layer_count(arch: Architecture) -> int:
    """Leading layers with a dense MLP (all layers for a dense model)."""
    return arch.layers if arch.moe is None else arch.moe.first_dense_layers


def first_stage_tensors(arch: Architecture) -> list[Tensor]:
    return [Tensor("embed_tokens", "embedding", arch.vocab_size, arch.hidden_size, 1, "vocab", 0)]


def last_stage_tensors(arch: Architecture) -> list[Tensor]:
    out = [Tensor("norm", "norms", arch.hidden_size, 0, 1, "replicate", 1)]
    if not arch.tie_word_embeddings:
        out.append(Tensor("lm_head", "lmHead", arch.vocab_size, arch.hidden_size, 1, "vocab", 1))
    return out


@lru_cache(maxsize=256)
def tensors(arch: Architecture) -> tuple[Tensor, ...]:
    """Every weight tensor of the main model and its MTP layers."""
    h, v = arch.hidden_size, arch.vocab_size
    dense = dense_layer_count(arch)
    moe = arch.layers - dense
    out = first_stage_tensors(arch)
    if dense:
        out += layer_tensors(arch, False, dense)
    if moe:
        out += layer_tensors(arch, True, moe)
    out += last_stage_tensors(arch)
    if arch.mtp_layers:
        n = arch.mtp_layers
        out += layer_tensors(arch, arch.moe is not None, n, module_override="mtp")
        out += [Tensor("mtp.enorm", "mtp", h, 0, n, "replicate", n),
                Tensor("mtp.hnorm", "mtp", h, 0, n, "replicate", n),
                Tensor("mtp.eh_proj", "mtp", h, 2 * h, n, "replicate", n),
                Tensor("mtp.shared_head.norm", "mtp", h, 0, n, "replicate", n),
                # Checkpoints carry their own copies of the embedding and head for the MTP module
                # (DeepSeek-V3: 671B + 14B MTP = 685B on the hub; GLM-4.5-Air: 106.9B + 3.6B = 110B).
                Tensor("mtp.embed_tokens", "mtp", v, h, n, "vocab", 0),
                Tensor("mtp.shared_head.head", "mtp", v, h, n, "vocab", n)]
    return tuple(out)


@dataclass(frozen=True)
class ParameterCount:
    total: int
    """Main model, MTP layers excluded."""
    mtp: int
    active: int
    """Weights one decode token reads: input embedding excluded, lm_head included, MTP excluded."""
    by_module: dict[str, int]
    """Main-model parameters per module class (MTP under 'mtp')."""

    def to_json(self) -> dict[str, object]:
        return {"total": self.total, "mtp": self.mtp, "active": self.active, "byModule": dict(self.by_module)}


def count_parameters(arch: Architecture) -> ParameterCount:
    by_module: dict[str, int] = defaultdict(int)
    active = 0
    for t in tensors(arch):
        by_module[t.module] += t.params
        if t.module not in ("mtp", "embedding"):
            active += t.active_params
    mtp = by_module.get("mtp", 0)
    total = sum(by_module.values()) - mtp
    ordered = {m: by_module[m] for m in MODULE_CLASSES if by_module.get(m)}
    return ParameterCount(total, mtp, active, ordered)


def tensor_bytes(t: Tensor, variant: Variant, count: int | None = None) -> float:
    """Exact bytes of ``count`` (default: all) tensors of ``t`` stored as ``variant`` says."""
    n = t.count if count is None else count
    if t.fp32:
        return 4.0 * t.rows * max(t.cols, 1) * n
    if t.cols == 0:
        return FORMATS[variant.vector_format].bits / 8 * t.rows * n
    fmt = FORMATS[variant.format_of(t.module)]
    if not fmt.applies_to(t.cols):
        fmt = FORMATS[variant.vector_format]  # e.g. MLX leaves indivisible matrices unquantized
    return fmt.matrix_bytes(t.rows, t.cols) * n


def weight_bytes(arch: Architecture, variant: Variant, include_mtp: bool | None = None) -> int:
    """Bytes of the variant's weights. MTP layers count unless the variant drops them."""
    with_mtp = (not variant.drops_mtp) if include_mtp is None else include_mtp
    total = sum(tensor_bytes(t, variant) for t in tensors(arch) if with_mtp or t.module != "mtp")
    return round(total)
