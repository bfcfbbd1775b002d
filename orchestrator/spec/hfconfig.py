"""Read an architecture from a Hugging Face ``config.json`` (already parsed to a dict). Pure."""

from __future__ import annotations

from typing import Any

from orchestrator.spec.model import MLA, Architecture, MoE

_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3-moe",
    "Glm4MoeForCausalLM": "glm4-moe",
    "DeepseekV3ForCausalLM": "deepseek-v3",
}


class ConfigError(ValueError):
    """config.json lacks what moxin needs; the message names the key."""


def _get(cfg: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise ConfigError(f"config.json has no {key!r}")
    return default


def architecture_from_hf_config(cfg: dict[str, Any]) -> Architecture:
    archs = cfg.get("architectures") or []
    hf_class = next((a for a in archs if a in _FAMILIES), None)
    if hf_class is None:
        raise ConfigError(f"unsupported architectures {archs!r}; supported: {', '.join(sorted(_FAMILIES))}")
    family = _FAMILIES[hf_class]
    heads = _get(cfg, "num_attention_heads")
    hidden = _get(cfg, "hidden_size")
    moe = mla = None
    if family in ("qwen3-moe", "glm4-moe", "deepseek-v3"):
        moe = MoE(
            # DeepSeek/GLM: n_routed_experts; Qwen3 (transformers 4): num_experts; transformers 5: num_local_experts.
            routed_experts=(_get(cfg, "n_routed_experts", None) or _get(cfg, "num_experts", None)
                            or _get(cfg, "num_local_experts")),
            experts_per_token=_get(cfg, "num_experts_per_tok"),
            shared_experts=_get(cfg, "n_shared_experts", 0),
            moe_intermediate_size=_get(cfg, "moe_intermediate_size"),
            first_dense_layers=_get(cfg, "first_k_dense_replace", 0),
            router_bias=family in ("glm4-moe", "deepseek-v3"),
        )
        if family == "qwen3-moe" and (_get(cfg, "decoder_sparse_step", 1) != 1 or _get(cfg, "mlp_only_layers", [])):
            raise ConfigError("Qwen3-MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) "
                              "is not supported")
    if family == "deepseek-v3":
        mla = MLA(
            q_lora_rank=_get(cfg, "q_lora_rank", None),
            kv_lora_rank=_get(cfg, "kv_lora_rank"),
            qk_rope_head_dim=_get(cfg, "qk_rope_head_dim"),
            qk_nope_head_dim=_get(cfg, "qk_nope_head_dim"),
            v_head_dim=_get(cfg, "v_head_dim"),
        )
    head_dim = mla.v_head_dim if mla else _get(cfg, "head_dim", hidden // heads)
    return Architecture(
        family=family,
        hf_architecture=hf_class,
        layers=_get(cfg, "num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=_get(cfg, "intermediate_size"),
        attention_heads=heads,
        kv_heads=_get(cfg, "num_key_value_heads", heads),
        head_dim=head_dim,
        vocab_size=_get(cfg, "vocab_size"),
        max_position_embeddings=_get(cfg, "max_position_embeddings"),
        tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
        attention_bias=bool(_get(cfg, "attention_bias", False)),
        qk_norm=bool(_get(cfg, "use_qk_norm", family in ("qwen3", "qwen3-moe"))),
        moe=moe,
        mla=mla,
        mtp_layers=_get(cfg, "num_nextn_predict_layers", 0),
    )
