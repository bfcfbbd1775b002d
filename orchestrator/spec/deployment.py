"""``ModelDeployment``: a model served under a name, with its traffic, SLOs and constraints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import (
    MAX_REPLICAS,
    MAX_REQUESTS_PER_SECOND,
    MAX_SECONDS,
    MAX_TOKENS,
    Document,
    FiniteFloat,
    ModelName,
    Name,
    Strict,
)
from orchestrator.spec.engine import KvCacheDtype


class Traffic(Strict):
    requests_per_second: FiniteFloat = Field(ge=0, le=MAX_REQUESTS_PER_SECOND)
    """Mean request rate to serve."""
    prompt_tokens: int = Field(gt=0, le=MAX_TOKENS)
    """Mean prompt length in tokens."""
    output_tokens: int = Field(gt=0, le=MAX_TOKENS)
    """Mean generated tokens per request."""


class Slo(Strict):
    ttft_seconds: FiniteFloat | None = Field(None, gt=0, le=MAX_SECONDS)
    """p95 time-to-first-token target."""
    tpot_seconds: FiniteFloat | None = Field(None, gt=0, le=MAX_SECONDS)
    """p95 time-per-output-token target."""


class Replicas(Strict):
    min: int = Field(0, ge=0, le=MAX_REPLICAS)
    """Fewest replicas (all candidates together)."""
    max: int | None = Field(None, ge=1, le=MAX_REPLICAS)
    """Most replicas; null for no limit."""

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class ModelDeploymentSpec(Strict):
    model: ModelName
    """The Model to serve."""
    variants: list[Name] = Field(default_factory=list)
    """Variants the planner may use; empty means all of the model's variants."""
    context_tokens: int = Field(gt=0, le=MAX_TOKENS)
    """Context length (prompt + output) every replica must support."""
    traffic: Traffic
    """Expected load."""
    slo: Slo = Field(default_factory=Slo)
    """Latency targets."""
    replicas: Replicas = Field(default_factory=Replicas)
    """Replica bounds."""
    pools: list[Name] = Field(default_factory=list)
    """Pools the planner may use; empty means every pool of the fleet."""
    kv_cache_dtype: KvCacheDtype = "auto"
    """KV-cache data type; 'auto' uses the weights' activation type."""


class ModelDeployment(Document[ModelDeploymentSpec]):
    kind: Literal["ModelDeployment"]
    """'ModelDeployment'."""
    spec: ModelDeploymentSpec
