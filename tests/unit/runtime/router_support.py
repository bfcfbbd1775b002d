"""Real servers on 127.0.0.1 for the router's tests: a static OpenAI-style engine (aiohttp) that records what it
was sent, and a way to serve apps from a background thread for tests that are not async."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.runtime.dataplane import FastRouter, serve
from orchestrator.runtime.router import Router

TOKENS = ["Hel", "lo", " there"]
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


@dataclass
class Engine:
    """A static engine: answers as ``request_model``, streamed (SSE, usage chunk when asked, [DONE]) or not.
    ``mode`` breaks it on purpose: "long-line" (one chunk of ``line_bytes``), "cut" (connection dropped
    mid-stream), "no-done" (clean end without [DONE]), "status-NNN" (that status, JSON error). Its pace: ``headers_s``
    before any answer, ``first_s`` between the stream's headers and its first token, ``itl_s`` between tokens,
    ``tokens`` of them (default ``TOKENS``), and a stall for good after ``stall_after`` tokens.

    Served from ``runner()``, it cancels a request whose connection closes, as vLLM aborts one: ``ended`` records
    how each request ended ("done" or "disconnected") and when, ``active``/``most_active`` its concurrency."""

    request_model: str
    mode: str = "ok"
    line_bytes: int = 300 * 1024
    headers_s: float = 0.0
    first_s: float = 0.0
    itl_s: float = 0.0
    tokens: int | None = None
    stall_after: int | None = None
    seen: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Per request: its headers and JSON body, as the engine received them."""
    ended: list[tuple[str, float]] = field(default_factory=list, repr=False)
    """Per request, in the order they ended: "done" or "disconnected", and time.monotonic() then."""
    active: int = 0
    most_active: int = 0

    def runner(self) -> web.AppRunner:
        return web.AppRunner(self.app(), access_log=None, handler_cancellation=True)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2**30)
        app.router.add_post("/v1/chat/completions", self.answer)
        app.router.add_post("/v1/completions", self.answer)
        return app

    def chunk(self, content: str | None, usage: dict | None = None) -> bytes:
        choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
        body = {"id": "c1", "object": "chat.completion.chunk", "model": self.request_model, "choices": choices}
        if usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            out = await self._answer(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.ended.append(("disconnected", time.monotonic()))
            raise
        finally:
            self.active -= 1
        self.ended.append(("done", time.monotonic()))
        return out

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body})
        await asyncio.sleep(self.headers_s)
        if self.mode.startswith("status-"):
            status = int(self.mode.split("-")[1])
            return web.json_response({"error": {"message": "engine says no", "code": status}}, status=status)
        if not body.get("stream"):
            return web.json_response({"id": "c1", "object": "chat.completion", "model": self.request_model,
                                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                                           "content": "".join(TOKENS)}}],
                                      "usage": USAGE})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        tokens = ["x" * self.line_bytes] if self.mode == "long-line" else \
            TOKENS if self.tokens is None else [f"t{i} " for i in range(self.tokens)]
        await asyncio.sleep(self.first_s)
        for i, t in enumerate(tokens):
            if i == self.stall_after:
                await asyncio.sleep(3600)
            if i:
                await asyncio.sleep(self.itl_s)
            await out.write(self.chunk(t))
        if self.mode == "cut":
            request.transport.close()  # the engine dies mid-stream: no [DONE], no end of the chunked body
            return out
        if (body.get("stream_options") or {}).get("include_usage"):
            await out.write(self.chunk(None, USAGE))
        if self.mode != "no-done":
            await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def refused_url() -> str:
    """An address where nothing listens: a replica that died."""
    with listening_socket() as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serving(app: web.Application | web.AppRunner | Router) -> AsyncIterator[str]:
    """Serve ``app`` (or a runner not set up yet), or a ``Router`` on its data plane as in production
    (``dataplane.serve``), on 127.0.0.1 (a free port); yields its base URL. A router's exit drains it."""
    if isinstance(app, Router):
        plane = await serve(app, sock=listening_socket())
        try:
            yield f"http://127.0.0.1:{plane.port}"
        finally:
            await plane.close()
        return
    runner = app if isinstance(app, web.AppRunner) else web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listening_socket()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def row(name: str, url: str, request_model: str, weight: float = 1.0, **labels: str) -> dict[str, Any]:
    return {"name": name, "url": url, "requestModel": request_model, "weight": weight,
            "labels": {"engine": "static", **labels}}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Background:
    """An event loop on a thread serving aiohttp apps on 127.0.0.1, for synchronous tests (hypothesis, a router
    in a subprocess talking to an engine in this one)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._planes: list[FastRouter] = []

    def serve(self, app: web.Application | Router) -> str:
        """Start serving ``app`` (a ``Router`` on its data plane); returns its base URL."""
        async def start() -> str:
            if isinstance(app, Router):
                plane = await serve(app, sock=listening_socket())
                self._planes.append(plane)
                return f"http://127.0.0.1:{plane.port}"
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = listening_socket()
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for plane in self._planes:
                await plane.close()
            for runner in reversed(self._runners):
                await runner.cleanup()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:  # connections still lingering over a refused body
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
