"""Record the machine a benchmark ran on (printed with every table): the same description `moxin bench
--record` writes into a Benchmark document."""

from __future__ import annotations

from orchestrator.bench.host import describe

__all__ = ["describe"]
