"""The load generator: streamed requests to an OpenAI-compatible endpoint, level after level. Effects.

One ``aiohttp.ClientSession`` for the whole sweep (connections are reused); times from ``time.perf_counter``.
A level is either a closed loop of ``concurrency`` streams (each sends its next request when the last one
completes) or Poisson arrivals at ``rate`` requests/s (open loop: arrivals do not wait for the server). A
level stops launching requests after ``requests`` of them or ``duration_s`` seconds, whichever comes first,
and waits for those in flight (each bounded by the request timeout).

Errors are counted by kind, never raised: 'http_<status>', 'connect' (refused, unreachable), 'timeout',
'cut_stream' (the connection closed before the stream's end), 'bad_response' (not an SSE stream of JSON).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from orchestrator.bench.stats import LevelSummary, RequestResult, Sweep, summarise
from orchestrator.bench.workload import Level, Stop, Synthetic, Target, Workload, request_body
from orchestrator.errors import MoxinError

SETUP_ERRORS = {
    "connect": "is the server up at --url?",
    "http_400": "the server refused the request: if it rejects ignore_eos, add --no-ignore-eos",
    "http_401": "give the API key: $MOXIN_API_KEY or --api-key-file",
    "http_403": "the API key is refused: check $MOXIN_API_KEY or --api-key-file",
    "http_404": "check --url (the base URL, without /v1/...) and --model (through moxin's router: the "
                "deployment)",
}
"""Warm-up failures that mean the setup is wrong (not an overloaded server): the sweep stops before it
starts."""

OnRequest = Callable[[RequestResult], None]


def _chunk_text(chunk: dict[str, Any]) -> bool:
    for c in chunk.get("choices") or ():
        delta = c.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or c.get("text"):
            return True
    return False


async def send(session: aiohttp.ClientSession, target: Target, body: dict[str, Any]) -> RequestResult:
    """One streamed request, measured. Never raises for the server's faults: they become ``error``."""
    start = time.perf_counter()
    chunks: list[float] = []
    usage: dict[str, Any] | None = None
    done = False

    def result(error: str | None = None) -> RequestResult:
        end = time.perf_counter()
        tokens = int((usage or {}).get("completion_tokens") or len(chunks))
        prompt = (usage or {}).get("prompt_tokens")
        return RequestResult(start, end, chunks[0] - start if chunks else None, tuple(chunks), tokens,
                             int(prompt) if isinstance(prompt, (int, float)) else None, error)

    try:
        async with session.post(target.request_url, json=body, headers=target.headers()) as resp:
            if resp.status != 200:
                await resp.read()
                return result(f"http_{resp.status}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                try:
                    chunk = json.loads(data)
                except ValueError:
                    return result("bad_response")
                if not isinstance(chunk, dict):
                    return result("bad_response")
                if _chunk_text(chunk):
                    chunks.append(now)
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except TimeoutError:
        return result("timeout")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        return result("cut_stream")
    except aiohttp.ClientConnectorError:
        return result("connect")
    except aiohttp.ClientError:
        return result("client_error")
    return result(None if done else "cut_stream")


class _Requests:
    """Hands out request bodies (global index: prompts never repeat across levels) until the level stops."""

    def __init__(self, target: Target, workload: Workload, output_tokens: int, stop: Stop, first_index: int):
        self.target, self.workload, self.output_tokens, self.stop = target, workload, output_tokens, stop
        self.index = first_index
        self.sent = 0
        self.deadline = None if stop.duration_s is None else time.perf_counter() + stop.duration_s

    def next(self) -> dict[str, Any] | None:
        if self.stop.requests is not None and self.sent >= self.stop.requests:
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return None
        t = self.target
        body = request_body(self.workload.prompt(self.index), model=t.model, endpoint=t.endpoint,
                            max_tokens=self.output_tokens, ignore_eos=t.ignore_eos)
        self.index += 1
        self.sent += 1
        return body


async def run_level(session: aiohttp.ClientSession, target: Target, level: Level, stop: Stop,
                    workload: Workload, output_tokens: int, *, first_index: int = 0, seed: int = 0,
                    on_request: OnRequest | None = None) -> LevelSummary:
    requests = _Requests(target, workload, output_tokens, stop, first_index)
    results: list[RequestResult] = []

    async def one(body: dict[str, Any]) -> None:
        r = await send(session, target, body)
        results.append(r)
        if on_request:
            on_request(r)

    if level.concurrency is not None:
        async def stream() -> None:
            while (body := requests.next()) is not None:
                await one(body)

        await asyncio.gather(*(stream() for _ in range(level.concurrency)))
    else:
        assert level.rate is not None
        rng = random.Random(seed)
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        due = 0.0
        while True:
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = requests.next()
            if body is None:
                break
            tasks.append(asyncio.ensure_future(one(body)))
            due += rng.expovariate(level.rate)
        await asyncio.gather(*tasks)
    return summarise(results, concurrency=level.concurrency, rate=level.rate)


async def sweep(target: Target, levels: list[Level], stop: Stop, workload: Workload, output_tokens: int, *,
                warmup: int = 1, seed: int = 0, on_level: Callable[[int, Level], None] | None = None,
                on_request: OnRequest | None = None) -> Sweep:
    """Warm up (``warmup`` requests, not counted; the first rescales synthetic prompts to the server's token
    count), then run each level in turn. A warm-up that fails for a setup reason (``SETUP_ERRORS``) raises."""
    started = datetime.now(UTC)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        index = 0
        for i in range(warmup):
            prompt = workload.prompt(index)
            body = request_body(prompt, model=target.model, endpoint=target.endpoint,
                                max_tokens=output_tokens, ignore_eos=target.ignore_eos)
            r = await send(session, target, body)
            index += 1
            if r.error in SETUP_ERRORS:
                raise MoxinError(f"the warm-up request to {target.public_url} failed ({r.error}); nothing "
                                 f"was measured. {SETUP_ERRORS[r.error]}")
            if i == 0 and isinstance(workload, Synthetic) and r.error is None and r.prompt_tokens:
                workload = workload.rescaled(len(prompt.as_text().split()), r.prompt_tokens)
        summaries = []
        for n, level in enumerate(levels):
            if on_level:
                on_level(n, level)
            summary = await run_level(session, target, level, stop, workload, output_tokens,
                                      first_index=index, seed=seed + n, on_request=on_request)
            index += summary.requests
            summaries.append(summary)
    return Sweep(target, workload, output_tokens, tuple(summaries), started)
