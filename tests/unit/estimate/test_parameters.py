"""Parameter accounting against published figures (facts/models.md) and hand-derived exact counts."""

from __future__ import annotations

import pytest

from orchestrator.estimate.parameters import count_parameters, weight_bytes
from orchestrator.spec.hfconfig import architecture_from_hf_config
from orchestrator.spec.model import Variant

# Published totals (main model) from facts/models.md, typed here independently of the catalog files.
PUBLISHED_TOTAL = {
    "glm-4.5-air": 106e9, "glm-4.5": 355e9, "glm-4.6": 355e9, "qwen3-30b-a3b": 30.5e9,
    "qwen3-235b-a22b": 235e9, "llama-3.1-8b": 8e9, "llama-3.1-70b": 70e9, "deepseek-v3": 671e9,
}
PUBLISHED_ACTIVE = {"glm-4.5-air": 12e9, "glm-4.5": 32e9, "qwen3-30b-a3b": 3.3e9, "qwen3-235b-a22b": 22e9,
                    "deepseek-v3": 37e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_within_1_5_percent_of_published(catalog, name: str) -> None:
    total = count_parameters(catalog.model(name).spec.architecture).total
    assert abs(total / PUBLISHED_TOTAL[name] - 1) < 0.015, f"{name}: {total / 1e9:.2f}B"


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_active_near_published(catalog, name: str) -> None:
    # Model cards round active counts and differ on whether embeddings count; ours excludes the input
    # embedding and includes lm_head, so allow 10%.
    active = count_parameters(catalog.model(name).spec.architecture).active
    assert abs(active / PUBLISHED_ACTIVE[name] - 1) < 0.10, f"{name}: {active / 1e9:.2f}B"


def test_checkpoint_sizes_match_published_files(catalog) -> None:
    air = catalog.model("glm-4.5-air").spec
    # GLM-4.5-Air BF16 checkpoint: 205.78 GiB on disk (facts/models.md), MTP layer included.
    assert weight_bytes(air.architecture, air.variant("bf16")) / 2**30 == pytest.approx(205.78, rel=0.005)
    # mlx-community/GLM-4.5-Air-3bit: 46.8 GB of weights; mlx-lm drops the MTP layer.
    assert weight_bytes(air.architecture, air.variant("mlx-3bit")) / 1e9 == pytest.approx(46.8, rel=0.01)
    # DeepSeek-V3: 671B main + 14B MTP module = 685B on the hub.
    ds = count_parameters(catalog.model("deepseek-v3").spec.architecture)
    assert (ds.total + ds.mtp) / 1e9 == pytest.approx(685, rel=0.01)


def test_exact_count_of_a_tiny_llama() -> None:
    arch = architecture_from_hf_config({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
        "max_position_embeddings": 512})
    h, i, v, kv = 64, 128, 100, 2 * 16
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h  # q, k, v, o, mlp, two norms
    expected = v * h + 2 * per_layer + h + v * h  # embedding, layers, final norm, lm_head
    p = count_parameters(arch)
    assert p.total == expected and p.mtp == 0
    assert p.active == expected - v * h


def test_exact_count_of_a_tiny_glm_moe_with_mtp() -> None:
    cfg = {"architectures": ["Glm4MoeForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
           "moe_intermediate_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "num_hidden_layers": 3, "vocab_size": 50, "max_position_embeddings": 256, "n_routed_experts": 4,
           "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "attention_bias": True,
           "use_qk_norm": True, "num_nextn_predict_layers": 1}
    p = count_parameters(architecture_from_hf_config(cfg))
    h, q, kv, v = 32, 64, 32, 50
    attn = h * q + 2 * h * kv + q * h + q + 2 * kv  # projections + q/k/v biases
    norms = 2 * h + 2 * 16  # two layer norms + q/k norms
    dense = 3 * h * 48
    experts = 4 * 3 * h * 8
    moe = experts + 3 * h * 8 + 4 * h + 4  # routed + shared + router + correction bias
    assert p.by_module["routedExperts"] == 2 * experts
    assert p.total == 2 * v * h + 3 * attn + 3 * norms + dense + 2 * moe + h
    active_moe = 2 * 3 * h * 8 + 3 * h * 8 + 4 * h + 4
    assert p.active == v * h + 3 * attn + 3 * norms + dense + 2 * active_moe + h
    mtp_layer = attn + norms + moe
    assert p.mtp == mtp_layer + 3 * h + 2 * h * h + 2 * v * h  # + enorm/hnorm/head norm, eh_proj, embed/head


def test_mlx_leaves_indivisible_matrices_unquantized() -> None:
    arch = architecture_from_hf_config({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 100,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 64,
        "max_position_embeddings": 128})
    mlx4 = Variant(name="q4", formats={"default": "mlx-4bit-g64"})
    # Every matrix reads 128 inputs (2 groups of 64) except down_proj, whose 100 inputs are not a
    # multiple of 64: MLX leaves it in bf16.
    quantized = [(64, 128), (128, 128), (64, 128), (64, 128), (128, 128), (100, 128), (100, 128), (64, 128)]
    q_bytes = sum(r * c * 4 / 8 + r * 2 * (2 + 2) for r, c in quantized)  # payload + bf16 scale and bias per group
    down_bytes = 128 * 100 * 2
    vector_bytes = 3 * 128 * 2  # two layer norms and the final norm, bf16
    assert weight_bytes(arch, mlx4) == round(q_bytes + down_bytes + vector_bytes)
