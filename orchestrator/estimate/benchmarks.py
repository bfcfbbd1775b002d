"""Which Benchmark documents answer for a replica: the matching rules. Pure.

Exact match (``exact_match``): the curve of a Benchmark *is* the replica's speed when it measured the same
model, variant, hardware profile (by name: an overlay such as ``my-mlu590`` is its own hardware, not its
base's), engine, tensor and pipeline parallelism and expert parallelism. A Benchmark measured on an emulated
pool (``where.emulated``: the engine ran on CPU) describes the CPU, so it answers only for an emulated pool;
a measurement of the real hardware answers for both. Among several, the one measured like the replica runs
is preferred: the same emulation, then the same context, then the same KV-cache dtype, then the latest; where
the context or KV dtype differ, the match says so.

Partial match (estimate/fit.py): a Benchmark of the same hardware and engine, with weights of the same format
class and the same architecture class (dense or MoE), calibrates the roofline's bandwidth efficiency for every
other model and parallelism there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.model import Variant


@dataclass(frozen=True)
class Replica:
    """What a replica is, as far as matching a Benchmark goes."""

    model: str
    variant: str
    hardware: str
    engine: str
    tp: int
    pp: int
    ep: bool
    context_tokens: int
    kv_cache_dtype: str
    """Resolved ('bf16', 'fp8', ...), not 'auto'."""
    emulated: bool = False
    """The replica runs on an emulated pool (on CPU, planned as ``hardware``)."""


@dataclass(frozen=True)
class ExactMatch:
    benchmark: Benchmark
    notes: tuple[str, ...]
    """How the measurement differs from the replica (context, KV dtype), one sentence each."""

    @property
    def name(self) -> str:
        return self.benchmark.name

    @property
    def label(self) -> str:
        """'Benchmark <name>' plus ', emulated on CPU' when the measurement was."""
        return f"Benchmark {self.name}" + (" (measured on an emulated pool)" if self.benchmark.spec.where.emulated
                                           else "")


def resolved_kv(kv: str, variant: Variant) -> str:
    """A Benchmark's or deployment's KV dtype with 'auto' resolved as the engines do (the attention weights'
    16-bit type; estimator.resolve_kv_dtype)."""
    if kv != "auto":
        return kv
    return "fp16" if variant.format_of("attention") == "fp16" else "bf16"


def _same_replica(b: Benchmark, r: Replica) -> bool:
    s = b.spec
    return (s.model, s.variant, s.hardware, s.engine, s.tensor_parallel, s.pipeline_parallel, s.expert_parallel) == (
        r.model, r.variant, r.hardware, r.engine, r.tp, r.pp, r.ep)


def exact_match(benchmarks: Iterable[Benchmark], replica: Replica, variant: Variant) -> ExactMatch | None:
    """The Benchmark that measured this replica, preferred as the module says; None when none did."""
    found = [b for b in benchmarks if _same_replica(b, replica) and (replica.emulated or not b.spec.where.emulated)]
    if not found:
        return None

    def rank(b: Benchmark) -> tuple:
        s = b.spec
        return (s.where.emulated == replica.emulated, s.context_tokens == replica.context_tokens,
                resolved_kv(s.kv_cache_dtype, variant) == replica.kv_cache_dtype, s.measured_at, b.name)

    best = max(found, key=rank)
    s = best.spec
    notes = []
    if s.context_tokens is None:
        notes.append(f"Benchmark {best.name} does not record its context; the replica's is {replica.context_tokens} "
                     "tokens")
    elif s.context_tokens != replica.context_tokens:
        notes.append(f"Benchmark {best.name} was measured at a context of {s.context_tokens} tokens, the replica's "
                     f"is {replica.context_tokens}")
    kv = resolved_kv(s.kv_cache_dtype, variant)
    if kv != replica.kv_cache_dtype:
        notes.append(f"Benchmark {best.name} was measured with a {kv} KV cache, the replica's is "
                     f"{replica.kv_cache_dtype}")
    if s.where.emulated:
        notes.append(f"Benchmark {best.name} was measured on an emulated pool: its figures describe the CPU it "
                     f"ran on, as this emulated pool does")
    return ExactMatch(best, tuple(notes))


def emulated_only(benchmarks: Iterable[Benchmark], replica: Replica) -> list[str]:
    """Names of Benchmarks of this replica that are not used because they were measured on CPU (emulated) and
    the replica is not."""
    if replica.emulated:
        return []
    return sorted(b.name for b in benchmarks if _same_replica(b, replica) and b.spec.where.emulated)
