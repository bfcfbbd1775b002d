"""A sweep as a ``Benchmark`` document: the replica's labels + the measured curve. Pure.

The labels come from the user's flags or from the router's routing table (``routes``); whatever is not known
is refused here with the flag that gives it, before any load is sent (``missing``), never guessed. One fact
is not a guess: mlx-lm's server runs a model on one device, so its parallelism is 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime

from orchestrator.bench.stats import Distribution, LevelSummary, Sweep
from orchestrator.spec.base import API_VERSION
from orchestrator.spec.benchmark import MAX_TEXT, Benchmark


@dataclass(frozen=True)
class Replica:
    """What the Benchmark says about the replica measured. None: not known (yet)."""

    model: str | None = None
    variant: str | None = None
    hardware: str | None = None
    engine: str | None = None
    engine_version: str | None = None
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    expert_parallel: bool = False
    deployment: str | None = None
    emulated: bool = False
    context_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    max_num_seqs: int | None = None

    def completed(self) -> Replica:
        """mlx-lm serves on one device: tensor and pipeline parallelism are 1 unless said otherwise."""
        if self.engine == "mlx-lm":
            return replace(self, tensor_parallel=self.tensor_parallel or 1,
                           pipeline_parallel=self.pipeline_parallel or 1)
        return self


FLAGS = {"model": "--model-name", "variant": "--variant", "hardware": "--hardware", "engine": "--engine",
         "tensor_parallel": "--tp", "pipeline_parallel": "--pp"}


def from_labels(labels: dict[str, str], given: Replica) -> Replica:
    """The router's labels of the replica under what the user gave (flags win)."""
    def pick(mine: str | None, key: str) -> str | None:
        return mine or labels.get(key) or None

    return Replica(
        model=pick(given.model, "model"), variant=pick(given.variant, "variant"),
        hardware=pick(given.hardware, "hardware"), engine=pick(given.engine, "engine"),
        engine_version=given.engine_version, tensor_parallel=given.tensor_parallel,
        pipeline_parallel=given.pipeline_parallel, expert_parallel=given.expert_parallel,
        deployment=pick(given.deployment, "deployment"),
        emulated=given.emulated or labels.get("emulated") == "true", context_tokens=given.context_tokens,
        kv_cache_dtype=given.kv_cache_dtype, max_num_seqs=given.max_num_seqs)


def missing(replica: Replica) -> list[str]:
    """The flags still needed to record a Benchmark of this replica."""
    done = replica.completed()
    return [flag for attr, flag in FLAGS.items() if getattr(done, attr) is None]


def default_name(replica: Replica, at: datetime) -> str:
    """'<model>-<variant>-<hardware>-<UTC time>', as a DNS-1123 label (dots -> '-', at most 63 characters)."""
    suffix = at.strftime("%Y%m%d-%H%M%S")
    base = re.sub(r"[^a-z0-9-]+", "-", f"{replica.model}-{replica.variant}-{replica.hardware}".lower())
    return (base[: 63 - len(suffix) - 1].strip("-") + "-" + suffix).strip("-")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _latency(d: Distribution | None) -> dict[str, float] | None:
    return None if d is None else {"p50": round(d.p50, 6), "p95": round(d.p95, 6), "p99": round(d.p99, 6)}


def _point(level: LevelSummary) -> dict[str, object]:
    point: dict[str, object] = {"requests": level.requests}
    if level.concurrency is not None:
        point["concurrency"] = level.concurrency
    else:
        point["rateRequestsPerSecond"] = level.rate
    for key, d in (("ttftSeconds", level.ttft_s), ("tpotSeconds", level.tpot_s), ("itlSeconds", level.itl_s),
                   ("e2eSeconds", level.e2e_s)):
        if d is not None:
            point[key] = _latency(d)
    point["outputTokensPerSecond"] = round(level.output_tokens_per_second, 3)
    point["requestsPerSecond"] = round(level.requests_per_second, 4)
    point["errorRate"] = round(level.error_rate, 6)
    return point


def _mean(levels: tuple[LevelSummary, ...], get: str) -> float | None:
    """The request-weighted mean of a per-level mean (over successful requests)."""
    pairs = [(getattr(lv, get), lv.succeeded) for lv in levels
             if getattr(lv, get) is not None and lv.succeeded]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


@dataclass(frozen=True)
class Context:
    """How and where the sweep ran."""

    command: str
    tool: str
    host: str
    machine: str | None = None
    through_router: bool = False


def benchmark_document(sweep: Sweep, replica: Replica, context: Context, name: str | None = None,
                       prompt_tokens: int | None = None) -> Benchmark:
    """The Benchmark of a sweep. ``prompt_tokens``: the requested prompt length, used when the server
    reported no usage. Raises ValueError naming the flags that are missing."""
    replica = replica.completed()
    lacking = missing(replica)
    if lacking:
        raise ValueError(f"to record a Benchmark, give {', '.join(lacking)}")
    measured_prompt = _mean(sweep.levels, "mean_prompt_tokens")
    measured_output = _mean(sweep.levels, "mean_output_tokens")
    prompt = round(measured_prompt) if measured_prompt else prompt_tokens
    if not prompt:
        raise ValueError("the server reported no prompt token counts (usage) and the prompts came from a "
                         "file: the prompt length is not known")
    spec: dict[str, object] = {
        "model": replica.model, "variant": replica.variant, "hardware": replica.hardware,
        "engine": replica.engine,
        "engineVersion": replica.engine_version, "deployment": replica.deployment,
        "tensorParallel": replica.tensor_parallel, "pipelineParallel": replica.pipeline_parallel,
        "expertParallel": replica.expert_parallel, "contextTokens": replica.context_tokens,
        "kvCacheDtype": replica.kv_cache_dtype, "maxNumSeqs": replica.max_num_seqs,
        "load": {"promptTokens": max(1, prompt),
                 "outputTokens": max(1, round(measured_output)) if measured_output else sweep.output_tokens,
                 "prompts": sweep.workload.name, "ignoreEos": sweep.target.ignore_eos},
        "curve": [_point(lv) for lv in sweep.levels],
        "measuredAt": sweep.started_at.isoformat(),
        "where": {"endpoint": sweep.target.public_url, "throughRouter": context.through_router,
                  "host": context.host, "machine": context.machine and _clip(context.machine),
                  "emulated": replica.emulated},
        "source": {"tool": context.tool, "command": _clip(context.command)},
    }
    doc = {"apiVersion": API_VERSION, "kind": "Benchmark",
           "metadata": {"name": name or default_name(replica, sweep.started_at)},
           "spec": {k: v for k, v in spec.items() if v is not None}}
    return Benchmark.model_validate(doc)
