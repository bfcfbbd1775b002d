"""A static OpenAI-compatible server: streams a fixed answer at a set pace, with faults on request.

Where it sits: a developer tool beside the pipeline, like ``tiny_model``. It is the known reference that
``moxin bench`` is tested and benchmarked against: the first token comes ``ttft_s`` after the request, the
next ones every ``itl_s``, so a load generator's figures can be checked against numbers that cannot drift.
Every n-th request may answer 500 (``fail_every``) or have its stream cut halfway (``cut_every``).

    python -m orchestrator.devtools.sse_server --port 8000 --ttft 0.05 --itl 0.01

Answers /v1/chat/completions and /v1/completions (streamed or not, ``stream_options.include_usage``),
/v1/models and /health. One token per chunk; prompt tokens are counted from whitespace-separated words.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True)
class Behaviour:
    ttft_s: float = 0.0
    """Delay from the request to the first token."""
    itl_s: float = 0.0
    """Delay between consecutive tokens."""
    fail_every: int = 0
    """Every n-th request (1-based) answers HTTP 500; 0 never."""
    cut_every: int = 0
    """Every n-th request's stream is cut after half its tokens (connection closed); 0 never."""
    default_max_tokens: int = 16
    """Tokens generated when a request names no max_tokens."""
    tokens_per_word: float = 1.0
    """How many prompt tokens the server reports per whitespace-separated word (tokenizers differ)."""
    api_key: str | None = None
    """When set, requests without 'Authorization: Bearer KEY' get 401."""
    model: str = "static"
    """The name /v1/models lists (any requested name is answered)."""


def _prompt_words(body: dict[str, Any]) -> int:
    if isinstance(body.get("prompt"), str):
        return len(body["prompt"].split())
    words = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [content] if isinstance(content, str) else [
            p.get("text") for p in content if isinstance(p, dict)] if isinstance(content, list) else []
        words += sum(len(p.split()) for p in parts if isinstance(p, str))
    return words


@dataclass
class StaticServer:
    """The server's application and what it saw. ``run_in_thread`` serves it on 127.0.0.1 from its own
    event loop."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    """Every completion request body received, in arrival order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """The headers of those requests."""
    _count: itertools.count = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, _request: web.Request) -> web.Response:
        data = [{"id": self.behaviour.model, "object": "model"}]
        return web.json_response({"object": "list", "data": data})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        n = next(self._count)
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if b.api_key is not None and request.headers.get("Authorization") != f"Bearer {b.api_key}":
            return web.json_response({"error": {"message": "bad key", "code": 401}}, status=401)
        if b.fail_every and n % b.fail_every == 0:
            return web.json_response({"error": {"message": "injected failure", "code": 500}}, status=500)
        chat = request.path.endswith("/chat/completions")
        tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or b.default_max_tokens)
        prompt_tokens = round(_prompt_words(body) * b.tokens_per_word)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                 "total_tokens": prompt_tokens + tokens}
        name = body.get("model", b.model)
        start = time.perf_counter()
        if not body.get("stream"):
            await asyncio.sleep(b.ttft_s + b.itl_s * max(tokens - 1, 0))
            text = "".join(f"t{i} " for i in range(tokens))
            choice = {"index": 0, "finish_reason": "length",
                      **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
            kind = "chat.completion" if chat else "text_completion"
            return web.json_response({"id": f"static-{n}", "object": kind, "model": name, "choices": [choice],
                                      "usage": usage})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)

        async def send(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            chunk = {"id": f"static-{n}", "object": "chat.completion.chunk" if chat else "text_completion",
                     "model": name, "choices": choices, **(extra or {})}
            await out.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        cut_at = tokens // 2 if b.cut_every and n % b.cut_every == 0 else None
        for i in range(tokens):
            # Paced from the start, not from the last write: the schedule does not drift with the server's
            # own cost.
            delay = start + b.ttft_s + b.itl_s * i - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == cut_at:
                assert request.transport is not None
                request.transport.close()  # mid-stream: no terminating chunk, no [DONE]
                return out
            await send([{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None} if chat
                        else {"index": 0, "text": f"t{i} ", "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": "length"} if chat
                    else {"index": 0, "text": "", "finish_reason": "length"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], {"usage": usage})
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Running:
        """Serve from a daemon thread with its own event loop; returns once it accepts connections."""
        return Running.start(self, host, port)


@dataclass
class Running:
    server: StaticServer
    url: str
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    @classmethod
    def start(cls, server: StaticServer, host: str, port: int) -> Running:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(server.app(), access_log=None)
        ready = threading.Event()
        bound: list[int] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port)
            loop.run_until_complete(site.start())
            bound.append(runner.addresses[0][1])
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=main, name="static-sse-server", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the static server did not start")
        return cls(server, f"http://{host}:{bound[0]}", loop, runner, thread)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    parser.add_argument("--itl", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--cut-every", type=int, default=0)
    args = parser.parse_args()
    server = StaticServer(Behaviour(ttft_s=args.ttft, itl_s=args.itl, fail_every=args.fail_every,
                                    cut_every=args.cut_every))
    web.run_app(server.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
