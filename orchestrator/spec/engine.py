"""Engines as data: their names, the KV-cache data types, and ``EngineSettings``, the limits and defaults moxin
starts an engine with.

The one home of these values: the estimator sizes memory with them, ``engines/`` writes them into the engine's
argv, the planner bounds a replica's batch with them, and the CLI's flags are generated from the fields below
(``cli_options.options_from``). Plain data, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator.spec.base import Strict

EngineName = Literal["vllm", "mlx-lm", "vllm-metal"]
"""A serving engine moxin can launch."""
KvDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
"""A KV-cache data type."""
KvCacheDtype = Literal["auto", KvDtype]
"""A KV-cache data type as a user asks for it: 'auto' keeps the weights' activation type."""


class EngineSettings(Strict):
    """What moxin starts an engine with, where the user sets nothing (vLLM's and mlx-lm's own defaults)."""

    gpu_memory_utilization: float = Field(0.92, gt=0, le=1)
    """vLLM: the fraction of TOTAL device memory the engine may use (vLLM 0.32's CacheConfig default; 0.9
    before)."""
    max_num_batched_tokens: int = Field(8192, gt=0)
    """vLLM: tokens one scheduler step processes (chunked prefill); sizes the activation memory."""
    max_num_seqs: int = Field(256, gt=0)
    """vLLM: the most sequences a replica runs together (vLLM's max_num_seqs default)."""
    cpu_max_num_seqs: int = Field(8, gt=0)
    """vLLM on CPU: sequences a replica runs when none is asked for; its KV pool (VLLM_CPU_KVCACHE_SPACE) is
    sized for all of them, so few."""
    mlx_decode_concurrency: int = Field(32, gt=0)
    """mlx-lm: the most sequences its server decodes together (its --decode-concurrency default)."""
    default_context_tokens: int = Field(8192, gt=0)
    """Context per sequence when none is asked for (never more than the model's maximum)."""
    cpu_kv_cache_gib: float | None = Field(None, gt=0)
    """vLLM on CPU: VLLM_CPU_KVCACHE_SPACE in GiB; unset sizes it from the request."""

    def max_seqs(self, engine: str) -> int:
        """The engine's limit on sequences one replica runs together."""
        return self.mlx_decode_concurrency if engine == "mlx-lm" else self.max_num_seqs

    def context(self, max_position_embeddings: int, asked: int | None = None) -> int:
        """The context a replica is sized for: the one asked, else the default within the model's maximum."""
        return asked or min(max_position_embeddings, self.default_context_tokens)


ENGINE_DEFAULTS = EngineSettings()
"""The settings where a caller gives none (the planner's replicas, ``moxin engine-args`` without flags)."""
