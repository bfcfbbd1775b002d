"""``Model``: an architecture (inline, or from a Hugging Face ``config.json``) and its variants.

A variant says, for each module class, which numeric format its weights are stored in (from
``orchestrator.spec.formats``). The estimator turns architecture x variant into exact bytes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from orchestrator.spec.base import (
    MAX_ARCHITECTURE_SIZE,
    MAX_PARAMETERS,
    MAX_TOKENS,
    Document,
    FieldError,
    FiniteFloat,
    ModelObjectMeta,
    Name,
    Source,
    Strict,
    require_sources,
)
from orchestrator.spec.formats import FORMATS, MODULE_CLASSES

Family = Literal["llama", "qwen3", "qwen3-moe", "glm4-moe", "deepseek-v3"]


class MoE(Strict):
    routed_experts: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Routed experts per MoE layer (config.json: n_routed_experts / num_experts)."""
    experts_per_token: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Experts each token is routed to (num_experts_per_tok)."""
    shared_experts: int = Field(0, ge=0, le=MAX_ARCHITECTURE_SIZE)
    """Always-active shared experts per MoE layer (n_shared_experts)."""
    moe_intermediate_size: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Hidden width of one expert's MLP."""
    first_dense_layers: int = Field(0, ge=0, le=MAX_ARCHITECTURE_SIZE)
    """Leading layers with a dense MLP instead of experts (first_k_dense_replace)."""
    router_bias: bool = False
    """The router carries a per-expert score-correction bias (GLM-4.5, DeepSeek-V3)."""

    @model_validator(mode="after")
    def _k_within_e(self) -> MoE:
        if self.experts_per_token > self.routed_experts:
            raise ValueError(f"expertsPerToken ({self.experts_per_token}) exceeds routedExperts "
                             f"({self.routed_experts})")
        return self


class MLA(Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds one compressed latent."""

    q_lora_rank: int | None = Field(None, gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Rank of the query compression; null for full-rank queries."""
    kv_lora_rank: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Width of the cached KV latent."""
    qk_rope_head_dim: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Rotary part of each query/key head (cached once per token, shared by heads)."""
    qk_nope_head_dim: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Non-rotary part of each query/key head."""
    v_head_dim: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Width of each value head."""


class Architecture(Strict):
    family: Family
    """Architecture family; decides which tensors a layer has."""
    hf_architecture: str | None = None
    """The Hugging Face class, e.g. 'Glm4MoeForCausalLM'."""
    layers: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Decoder layers of the main model (num_hidden_layers), MTP layers excluded."""
    hidden_size: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Residual stream width."""
    intermediate_size: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Hidden width of a dense MLP layer."""
    attention_heads: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Query heads."""
    kv_heads: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Key/value heads (GQA); equal to attentionHeads for MHA and MLA."""
    head_dim: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Width of one attention head (for MLA: the value head width)."""
    vocab_size: int = Field(gt=0, le=MAX_ARCHITECTURE_SIZE)
    """Vocabulary size (rows of the embedding and lm_head)."""
    max_position_embeddings: int = Field(gt=0, le=MAX_TOKENS)
    """Longest context the model was trained for, in tokens."""
    tie_word_embeddings: bool = False
    """lm_head shares the embedding matrix."""
    attention_bias: bool = False
    """q/k/v projections carry biases (GLM-4.5)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys per head (Qwen3, GLM-4.5/4.6)."""
    moe: MoE | None = None
    """Mixture-of-experts layout; absent for dense models."""
    mla: MLA | None = None
    """Multi-head latent attention; absent for GQA/MHA models."""
    mtp_layers: int = Field(0, ge=0, le=MAX_ARCHITECTURE_SIZE)
    """Multi-token-prediction layers shipped beside the main model (num_nextn_predict_layers)."""

    @model_validator(mode="after")
    def _heads(self) -> Architecture:
        if self.attention_heads % self.kv_heads:
            raise ValueError(f"attentionHeads ({self.attention_heads}) must be a multiple of kvHeads "
                             f"({self.kv_heads})")
        if self.moe and self.moe.first_dense_layers > self.layers:
            raise ValueError("moe.firstDenseLayers exceeds layers")
        return self


class PublishedParameters(Strict):
    total_parameters: FiniteFloat | None = Field(None, gt=0, le=MAX_PARAMETERS)
    """Total parameters as the model card states them (may include MTP layers)."""
    active_parameters: FiniteFloat | None = Field(None, gt=0, le=MAX_PARAMETERS)
    """Parameters active per token as the model card states them."""
    total_includes_mtp: bool = False
    """The published total counts the MTP layers (compare against total + mtp)."""


ModuleClass = Literal["default", "embedding", "attention", "denseMlp", "routedExperts", "sharedExperts",
                      "router", "norms", "lmHead", "mtp"]


def _known_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return name


FormatName = Annotated[str, AfterValidator(_known_format)]


class Variant(Strict):
    name: Name
    """Variant name, e.g. 'bf16', 'fp8', 'fp8-int4', 'w4a16', 'mlx-3bit'."""
    description: str | None = None
    """What this variant is, in a sentence."""
    formats: dict[ModuleClass, FormatName]
    """Storage format per module class; 'default' covers every class not named."""
    vector_format: FormatName = "bf16"
    """Format of one-dimensional tensors (norm weights, biases), which quantizers leave alone."""
    quantization_method: str | None = None
    """How the engine sees the checkpoint's quantization: vLLM's '--quantization' name ('fp8', 'awq',
    'gptq', 'compressed-tensors') or 'mlx'; null for an unquantized checkpoint."""
    checkpoint: str | None = None
    """Where the weights are published (hub repository id or path); informational."""
    drops_mtp: bool = False
    """The checkpoint leaves out the MTP layers (mlx-lm conversions do)."""
    quantize_on_load: bool = False
    """The checkpoint is 16-bit and the engine quantizes it while loading (vLLM's online FP8,
    '--quantization fp8' over a BF16 checkpoint); formats give the result in memory."""

    @model_validator(mode="after")
    def _has_default(self) -> Variant:
        if "default" not in self.formats:
            raise ValueError("formats needs a 'default' entry (the format of every class not named)")
        if self.quantize_on_load and self.quantization_method is None:
            raise ValueError("quantizeOnLoad needs the quantizationMethod the engine applies (e.g. 'fp8')")
        return self

    def format_of(self, module_class: str) -> str:
        assert module_class in MODULE_CLASSES
        return self.formats.get(module_class, self.formats["default"])  # type: ignore[call-overload]


class ModelSpec(Strict):
    display_name: str | None = None
    """Human name, e.g. 'GLM-4.5-Air'."""
    architecture: Architecture | None = None
    """The architecture, inline. Exactly one of architecture and configFile."""
    config_file: str | None = None
    """A Hugging Face config.json to read the architecture from (relative to this YAML file)."""
    published: PublishedParameters = Field(default_factory=PublishedParameters)
    """Published parameter counts, kept as a check on the accounting."""
    variants: list[Variant] = Field(min_length=1)
    """The variants this model ships in."""
    sources: list[Source] = Field(default_factory=list)
    """Where the architecture and the published numbers come from."""

    @model_validator(mode="after")
    def _one_architecture(self) -> ModelSpec:
        if (self.architecture is None) == (self.config_file is None):
            raise ValueError("give exactly one of 'architecture' and 'configFile'")
        seen: dict[str, int] = {}
        for i, variant in enumerate(self.variants):
            if variant.name in seen:
                raise FieldError(f"duplicate variant name {variant.name!r} (first at variants[{seen[variant.name]}])",
                                 "variants", i, "name")
            seen[variant.name] = i
        numbers = [f"published.{k}" for k, v in (("totalParameters", self.published.total_parameters),
                                                  ("activeParameters", self.published.active_parameters))
                   if v is not None]
        if self.architecture is not None:
            numbers.append("architecture")
        require_sources(numbers, self.sources)
        return self

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


class Model(Document[ModelSpec]):
    kind: Literal["Model"]
    """'Model'."""
    metadata: ModelObjectMeta
    spec: ModelSpec
