"""A static OpenAI-compatible SSE server on 127.0.0.1 (its own thread and loop) for each test that asks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("aiohttp", reason="aiohttp is in the ray extra: pip install -e '.[ray]'")

from orchestrator.devtools.sse_server import Behaviour, Running, StaticServer


@pytest.fixture
def static_server() -> Iterator:
    """Call with a Behaviour (or its fields) to start a server; every one started is stopped after the test."""
    started: list[Running] = []

    def start(behaviour: Behaviour | None = None, **fields: object) -> Running:
        running = StaticServer(behaviour or Behaviour(**fields)).run_in_thread()  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
