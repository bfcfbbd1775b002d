"""``Benchmark``: one replica's measured latency/throughput curve (variant, hardware, engine, parallelism).

Written by ``moxin bench --record`` (or by hand from another tool's figures). The estimator and planner prefer
these measurements to datasheet rooflines: which Benchmark answers for a replica is estimate/benchmarks.py, a
curve read as capacity under an SLO estimate/measured.py, the efficiency fitted to one estimate/fit.py.
A figure measured on an emulated pool (engine on CPU, placed as the declared hardware) says so in
``where.emulated``: it describes the CPU, not the hardware named.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BeforeValidator, Field, field_validator, model_validator

from orchestrator.spec.base import (
    MAX_DEVICES_PER_NODE,
    MAX_NODES_PER_FLEET,
    MAX_REQUESTS_PER_SECOND,
    MAX_SECONDS,
    MAX_TOKENS,
    Document,
    FiniteFloat,
    ModelName,
    Name,
    Strict,
)
from orchestrator.spec.engine import EngineName, KvCacheDtype

MAX_TOKENS_PER_SECOND = 1e9
"""Measured throughput of one replica, tokens/s."""
MAX_CONCURRENCY = 10_000_000
"""Concurrent streams of one load level, or an engine's concurrent-sequence limit."""
MAX_REQUESTS = 1_000_000_000
"""Requests sent at one load level."""
MAX_CURVE_POINTS = 1000
"""Load levels in one curve."""
MAX_TEXT = 4096
"""Free text (command lines, machine descriptions)."""

Seconds = Annotated[FiniteFloat, Field(ge=0, le=MAX_SECONDS)]
"""A measured duration: finite, non-negative, at most a week."""


def _iso_datetime(value: object) -> object:
    """YAML dates stay strings (yamlsource) and documents are validated strictly: read ISO 8601 here."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date and time with a time zone, e.g. "
                             f"2026-12-01T10:00:00Z (got {value[:40]!r})") from None
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_datetime)]
"""A date and time with a time zone, written in ISO 8601."""


class Latency(Strict):
    p50: Seconds
    """Median, in seconds."""
    p95: Seconds
    """95th percentile, in seconds."""
    p99: Seconds | None = None
    """99th percentile, in seconds; left out when not measured."""

    @model_validator(mode="after")
    def _ordered(self) -> Latency:
        if self.p95 < self.p50 or (self.p99 is not None and self.p99 < self.p95):
            raise ValueError(f"percentiles must not decrease (p50 {self.p50}, p95 {self.p95}, "
                             f"p99 {self.p99})")
        return self


class CurvePoint(Strict):
    """One load level: how it was driven (a closed loop of concurrent streams, or Poisson arrivals at a rate)
    and what was measured. A latency is left out when no request of the level produced it."""

    concurrency: int | None = Field(None, ge=1, le=MAX_CONCURRENCY)
    """Concurrent streams, each sending its next request when the last one completes."""
    rate_requests_per_second: FiniteFloat | None = Field(None, gt=0, le=MAX_REQUESTS_PER_SECOND)
    """Offered load: Poisson arrivals at this mean rate (requests/s)."""
    requests: int = Field(ge=1, le=MAX_REQUESTS)
    """Requests sent at this level."""
    ttft_seconds: Latency | None = None
    """Time to first token (request sent -> first generated text)."""
    tpot_seconds: Latency | None = None
    """Time per output token after the first: (last token - first token) / (output tokens - 1)."""
    itl_seconds: Latency | None = None
    """Inter-token latency: every gap between consecutive streamed chunks."""
    e2e_seconds: Latency | None = Field(None, alias="e2eSeconds")  # to_camel would write "e2ESeconds"
    """End-to-end request latency."""
    output_tokens_per_second: FiniteFloat = Field(ge=0, le=MAX_TOKENS_PER_SECOND)
    """Generated tokens of successful requests per second of the level's wall time, all streams together."""
    requests_per_second: FiniteFloat = Field(ge=0, le=MAX_REQUESTS_PER_SECOND)
    """Successful requests per second of the level's wall time."""
    error_rate: FiniteFloat = Field(ge=0, le=1)
    """Failed requests / requests sent."""

    @model_validator(mode="after")
    def _one_driver(self) -> CurvePoint:
        if (self.concurrency is None) == (self.rate_requests_per_second is None):
            raise ValueError("give exactly one of concurrency and rateRequestsPerSecond")
        return self


class Load(Strict):
    prompt_tokens: int = Field(gt=0, le=MAX_TOKENS)
    """Mean prompt length in tokens (as the server counted them where it reported usage)."""
    output_tokens: int = Field(gt=0, le=MAX_TOKENS)
    """Mean generated tokens per successful request."""
    prompts: str = Field("synthetic", min_length=1, max_length=255)
    """Where the prompts came from: 'synthetic' (generated text) or the name of the prompt file."""
    ignore_eos: bool = True
    """Whether requests asked the engine to generate exactly outputTokens (ignore_eos)."""


class Where(Strict):
    endpoint: str = Field(min_length=1, max_length=2048)
    """The base URL the load was sent to (credentials removed)."""
    through_router: bool = False
    """Whether the requests went through moxin's router (which adds its own small latency)."""
    host: str = Field(min_length=1, max_length=253)
    """Host name of the machine that ran the load generator."""
    machine: str | None = Field(None, max_length=MAX_TEXT)
    """That machine: CPU, cores, memory, OS."""
    emulated: bool = False
    """The replica ran on CPU while placed as `hardware` (an emulated pool): the figures describe the CPU."""


class MeasuredBy(Strict):
    tool: str = Field(min_length=1, max_length=255)
    """The load generator and its version, e.g. 'moxin bench 0.1.0' or 'guidellm 0.8.1'."""
    command: str = Field(min_length=1, max_length=MAX_TEXT)
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
    engine_version: str | None = Field(None, max_length=128)
    """The engine's release, where known."""
    deployment: Name | None = None
    """The ModelDeployment the replica served, when measured through moxin's router."""
    tensor_parallel: int = Field(ge=1, le=MAX_DEVICES_PER_NODE)
    """Tensor-parallel degree of the replica."""
    pipeline_parallel: int = Field(ge=1, le=MAX_NODES_PER_FLEET)
    """Pipeline stages of the replica."""
    expert_parallel: bool = False
    """Whether experts were spread whole across devices."""
    context_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS)
    """The replica's maximum context length (prompt + output), where known."""
    kv_cache_dtype: KvCacheDtype = "auto"
    """KV-cache data type of the replica."""
    max_num_seqs: int | None = Field(None, ge=1, le=MAX_CONCURRENCY)
    """The engine's limit on concurrent sequences, where known."""
    load: Load
    """The requests sent."""
    curve: list[CurvePoint] = Field(min_length=1, max_length=MAX_CURVE_POINTS)
    """One point per load level, in increasing concurrency (or rate)."""
    measured_at: Timestamp
    """When the measurement started (with a time zone)."""
    where: Where
    """Where it was measured."""
    source: MeasuredBy
    """How it was measured."""

    @field_validator("curve")
    @classmethod
    def _increasing(cls, curve: list[CurvePoint]) -> list[CurvePoint]:
        drivers = (("concurrency", "concurrency"), ("rateRequestsPerSecond", "rate_requests_per_second"))
        for what, key in drivers:
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
