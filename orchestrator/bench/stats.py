"""What one request measured, and a load level summarised: percentiles, throughput, errors by kind. Pure.

Definitions (the ones vLLM's benchmark and guidellm use, so the figures compare):
- TTFT: request sent -> first chunk that carries generated text.
- TPOT: (last text chunk - first text chunk) / (output tokens - 1); guidellm calls this ITL.
- ITL: each gap between consecutive text chunks (one per token when the engine streams token by token).
- end-to-end: request sent -> response complete.
- Throughput: output tokens (and requests) of successful requests / the level's wall time, first send to
  last completion.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.bench.workload import Target, Workload

QUANTILES = (0.50, 0.95, 0.99)


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it. ``error`` is None for a success, else its kind (e.g. 'http_500')."""

    start_s: float
    """perf_counter when the request was sent."""
    end_s: float
    """perf_counter when the response was complete (or failed)."""
    ttft_s: float | None = None
    chunk_times_s: tuple[float, ...] = ()
    """perf_counter of every chunk that carried text, in order."""
    output_tokens: int = 0
    """From the final usage chunk when the server sent one, else the number of text chunks."""
    prompt_tokens: int | None = None
    """From the usage chunk; None when the server reported none."""
    error: str | None = None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        if self.error or self.output_tokens < 2 or len(self.chunk_times_s) < 2:
            return None
        return (self.chunk_times_s[-1] - self.chunk_times_s[0]) / (self.output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        t = self.chunk_times_s
        return [b - a for a, b in itertools.pairwise(t)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Distribution:
    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        p50, p95, p99 = (percentile(values, q) for q in QUANTILES)
        return cls(p50, p95, p99, sum(values) / len(values))

    def to_json(self) -> dict[str, float]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99, "mean": self.mean}


@dataclass(frozen=True)
class LevelSummary:
    """One load level: how it was driven and what it measured. Latency distributions are None when no
    request of the level succeeded (or, for TPOT/ITL, none generated two tokens)."""

    concurrency: int | None
    rate: float | None
    requests: int
    errors: dict[str, int]
    duration_s: float
    ttft_s: Distribution | None
    tpot_s: Distribution | None
    itl_s: Distribution | None
    e2e_s: Distribution | None
    output_tokens_per_second: float
    requests_per_second: float
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    results: tuple[RequestResult, ...] = field(default=(), repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"concurrency {self.concurrency}" if self.concurrency is not None else f"rate {self.rate:g}/s"

    @property
    def succeeded(self) -> int:
        return self.requests - sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        def dist(d: Distribution | None) -> dict[str, float] | None:
            return None if d is None else d.to_json()

        return {"concurrency": self.concurrency, "rate": self.rate, "requests": self.requests,
                "succeeded": self.succeeded, "errors": dict(sorted(self.errors.items())),
                "durationSeconds": self.duration_s, "ttftSeconds": dist(self.ttft_s),
                "tpotSeconds": dist(self.tpot_s), "itlSeconds": dist(self.itl_s),
                "e2eSeconds": dist(self.e2e_s),
                "outputTokensPerSecond": self.output_tokens_per_second,
                "requestsPerSecond": self.requests_per_second, "meanPromptTokens": self.mean_prompt_tokens,
                "meanOutputTokens": self.mean_output_tokens}


def summarise(results: Sequence[RequestResult], *, concurrency: int | None = None,
              rate: float | None = None) -> LevelSummary:
    """Summarise the requests of one level (every request sent, successful or not)."""
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    duration = (max(r.end_s for r in results) - min(r.start_s for r in results)) if results else 0.0
    out_tokens = sum(r.output_tokens for r in ok)
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return LevelSummary(
        concurrency=concurrency, rate=rate, requests=len(results), errors=dict(errors), duration_s=duration,
        ttft_s=Distribution.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_s=Distribution.of([t for r in ok if (t := r.tpot_s) is not None]),
        itl_s=Distribution.of([g for r in ok for g in r.itls_s]),
        e2e_s=Distribution.of([r.e2e_s for r in ok]),
        output_tokens_per_second=out_tokens / duration if duration > 0 else 0.0,
        requests_per_second=len(ok) / duration if duration > 0 else 0.0,
        mean_prompt_tokens=sum(prompts) / len(prompts) if prompts else None,
        mean_output_tokens=out_tokens / len(ok) if ok else None,
        results=tuple(results))


@dataclass(frozen=True)
class Sweep:
    target: Target
    workload: Workload
    output_tokens: int
    levels: tuple[LevelSummary, ...]
    started_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"url": self.target.public_url, "model": self.target.model, "endpoint": self.target.endpoint,
                "prompts": self.workload.name, "promptTokens": getattr(self.workload, "prompt_tokens", None),
                "outputTokens": self.output_tokens,
                "startedAt": self.started_at.isoformat(), "levels": [lv.to_json() for lv in self.levels]}
