"""``Benchmark``: a measured latency/throughput curve of one replica (model variant, hardware, engine, parallelism).

Written by ``moxin bench --record`` (or by hand from another tool's figures). The estimator and planner may
prefer these measurements to datasheet rooflines; turning a curve into capacity is arithmetic in ``estimate/``.
A figure measured on an emulated pool (engine on CPU, placed as the declared hardware) says so in
``where.emulated``: it describes the CPU, not the hardware named.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, field_validator, model_validator

from orchestrator.spec.base import Document, ModelName, Name, Strict
from orchestrator.spec.hardware import EngineName

Finite = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A finite, non-negative number."""


class Latency(Strict):
    p50: Finite
    """Median, in seconds."""
    p95: Finite
    """95th percentile, in seconds."""
    p99: Finite | None = None
    """99th percentile, in seconds; left out when not measured."""

    @model_validator(mode="after")
    def _ordered(self) -> Latency:
        if self.p95 < self.p50 or (self.p99 is not None and self.p99 < self.p95):
            raise ValueError(f"percentiles must not decrease (p50 {self.p50}, p95 {self.p95}, p99 {self.p99})")
        return self


class CurvePoint(Strict):
    """One load level: how it was driven (a closed loop of concurrent streams, or Poisson arrivals at a rate)
    and what was measured. A latency is left out when no request of the level produced it."""

    concurrency: int | None = Field(None, ge=1)
    """Concurrent streams, each sending its next request when the last one completes."""
    rate_requests_per_second: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Offered load: Poisson arrivals at this mean rate (requests/s)."""
    requests: int = Field(ge=1)
    """Requests sent at this level."""
    ttft_seconds: Latency | None = None
    """Time to first token (request sent -> first generated text)."""
    tpot_seconds: Latency | None = None
    """Time per output token after the first: (last token - first token) / (output tokens - 1)."""
    itl_seconds: Latency | None = None
    """Inter-token latency: every gap between consecutive streamed chunks."""
    e2e_seconds: Latency | None = Field(None, alias="e2eSeconds")  # to_camel would write "e2ESeconds"
    """End-to-end request latency."""
    output_tokens_per_second: Finite
    """Generated tokens of successful requests per second of the level's wall time, all streams together."""
    requests_per_second: Finite
    """Successful requests per second of the level's wall time."""
    error_rate: float = Field(ge=0, le=1)
    """Failed requests / requests sent."""

    @model_validator(mode="after")
    def _one_driver(self) -> CurvePoint:
        if (self.concurrency is None) == (self.rate_requests_per_second is None):
            raise ValueError("give exactly one of concurrency and rateRequestsPerSecond")
        return self


class Load(Strict):
    prompt_tokens: int = Field(gt=0)
    """Mean prompt length in tokens (as the server counted them where it reported usage)."""
    output_tokens: int = Field(gt=0)
    """Mean generated tokens per successful request."""
    prompts: str = Field("synthetic", min_length=1)
    """Where the prompts came from: 'synthetic' (generated text) or the name of the prompt file."""
    ignore_eos: bool = True
    """Whether requests asked the engine to generate exactly outputTokens (ignore_eos)."""


class Where(Strict):
    endpoint: str = Field(min_length=1)
    """The base URL the load was sent to (credentials removed)."""
    through_router: bool = False
    """Whether the requests went through moxin's router (which adds its own small latency)."""
    host: str = Field(min_length=1)
    """Host name of the machine that ran the load generator."""
    machine: str | None = None
    """That machine: CPU, cores, memory, OS."""
    emulated: bool = False
    """The replica ran on CPU while placed as `hardware` (an emulated pool): the figures describe the CPU."""


class MeasuredBy(Strict):
    tool: str = Field(min_length=1)
    """The load generator and its version, e.g. 'moxin bench 0.1.0' or 'guidellm 0.8.1'."""
    command: str = Field(min_length=1)
    """The command line that produced the figures (no secrets)."""


class BenchmarkSpec(Strict):
    model: ModelName
    """The Model measured."""
    variant: Name
    """The variant of the model the replica served."""
    hardware: Name
    """The HardwareProfile of the replica's devices."""
    engine: EngineName
    """The serving engine."""
    engine_version: str | None = None
    """The engine's release, where known."""
    deployment: Name | None = None
    """The ModelDeployment the replica served, when measured through moxin's router."""
    tensor_parallel: int = Field(ge=1)
    """Tensor-parallel degree of the replica."""
    pipeline_parallel: int = Field(ge=1)
    """Pipeline stages of the replica."""
    expert_parallel: bool = False
    """Whether experts were spread whole across devices."""
    context_tokens: int | None = Field(None, gt=0)
    """The replica's maximum context length (prompt + output), where known."""
    kv_cache_dtype: Literal["auto", "bf16", "fp16", "fp8", "int8", "int4"] = "auto"
    """KV-cache data type of the replica."""
    max_num_seqs: int | None = Field(None, ge=1)
    """The engine's limit on concurrent sequences, where known."""
    load: Load
    """The requests sent."""
    curve: list[CurvePoint] = Field(min_length=1)
    """One point per load level, in increasing concurrency (or rate)."""
    measured_at: AwareDatetime
    """When the measurement started (with a time zone)."""
    where: Where
    """Where it was measured."""
    source: MeasuredBy
    """How it was measured."""

    @field_validator("curve")
    @classmethod
    def _increasing(cls, curve: list[CurvePoint]) -> list[CurvePoint]:
        for what, key in (("concurrency", "concurrency"), ("rateRequestsPerSecond", "rate_requests_per_second")):
            seen = [(i, getattr(p, key)) for i, p in enumerate(curve) if getattr(p, key) is not None]
            for (i, a), (j, b) in itertools.pairwise(seen):
                if b <= a:
                    raise ValueError(f"curve[{j}].{what} ({b:g}) must be above curve[{i}]'s ({a:g}): "
                                     f"points go in strictly increasing {what}")
        return curve


class Benchmark(Document[BenchmarkSpec]):
    kind: Literal["Benchmark"]
    """'Benchmark'."""
    spec: BenchmarkSpec
