"""Benchmark: the router data plane's own Python per streamed request, with no sockets and no kernel.

    python benchmarks/dataplane.py [--requests 20000] [--repeat 7]
    python benchmarks/dataplane.py --instructions      # needs valgrind: callgrind's instruction count

The client connection (``dataplane._Client``) and one pooled replica connection (``dataplane._Upstream``) get fake
transports that keep what is written to them. Each request is `benchmarks/router.py`'s request as aiohttp sends it,
then the static upstream's answer (16 content chunks, the usage chunk, [DONE], chunked) in one block: the same
Python the router runs per request in `router.py --peer` (parse, checks, pick, the upstream request, the relay,
the metrics), without the system calls and wake-ups, which are most of a request's CPU there and too noisy to
compare small changes by. Prints microseconds per request (median and spread of ``--repeat`` runs) and the
machine; ``--instructions`` runs this script under callgrind at 200 and 3,200 requests (PYTHONHASHSEED=0) and
prints the difference per request: a count that moves by a few percent run to run, not with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402
from router import BODY, static_payload  # noqa: E402  (benchmarks/router.py: the same request and answer)

from orchestrator.runtime import dataplane  # noqa: E402
from orchestrator.runtime.router import Router  # noqa: E402

MODEL = BODY["model"]


class _Transport:
    """What a protocol writes goes to ``out`` (cleared between runs)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _messages() -> tuple[bytes, bytes]:
    """The client's request and the replica's answer, byte for byte as aiohttp writes them in router.py --peer."""
    body = json.dumps(BODY).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept: */*\r\n"
               b"Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.13\r\n"
               b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n" % len(body)) + body
    payload = static_payload()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
              b"Date: Sat, 05 Dec 2026 07:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.13\r\n\r\n"
              + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")
    return request, answer


async def _plane() -> tuple[Any, _Transport, _Transport]:
    """A data plane with one replica and one idle pooled connection to it; returns one request's driver."""
    router = Router()
    router.set_table({MODEL: [{"name": "static", "url": "http://127.0.0.1:9", "requestModel": MODEL, "weight": 1}]})
    plane = dataplane.FastRouter(router)
    pool = plane.pool(router.balancer.table[MODEL][0])
    upstream, up_t = dataplane._Upstream(pool), _Transport()
    upstream.connection_made(up_t)
    pool.open, pool.idle = 1, [upstream]
    client, client_t = dataplane._Client(plane), _Transport()
    client.connection_made(client_t)
    request, answer = _messages()

    def one() -> None:
        client.data_received(request)
        upstream.data_received(answer)

    return one, client_t, up_t


async def _run(requests: int, repeat: int, warmup: int) -> list[float] | None:
    one, client_t, up_t = await _plane()
    for _ in range(warmup):
        one()
    sent = b"".join(client_t.out[-3:])
    if b"data: [DONE]" not in sent or b'"usage"' in sent:  # the client asked for no usage: the relay drops it
        raise SystemExit(f"the data plane did not relay the stream as expected: {sent[-300:]!r}")
    if repeat == 0:  # --count: exactly `requests` more, for callgrind
        for _ in range(requests):
            one()
        return None
    runs = []
    for _ in range(repeat):
        client_t.out.clear()
        up_t.out.clear()
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(requests):
            one()
        runs.append((time.perf_counter() - t0) / requests * 1e6)
    return runs


def _instructions() -> int:
    """Instructions per request: callgrind at 200 and 3,200 requests, the difference over 3,000."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")

    def total(n: int) -> int:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              __file__, "--count", str(n)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": "0"}, check=True).stderr
        refs = [line for line in out.splitlines() if "refs:" in line]
        return int(refs[-1].split()[-1].replace(",", ""))

    return (total(3200) - total(200)) // 3000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000, help="Requests per run.")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--instructions", action="store_true", help="Instructions per request, by callgrind.")
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.count is not None:
        asyncio.run(_run(args.count, 0, 300))
        return
    print(f"machine: {describe()}")
    runs = asyncio.run(_run(args.requests, args.repeat, 2000))
    assert runs is not None
    print("\nthe data plane's Python per streamed request (fake transports: no system call, no wake-up)")
    print(f"{'us/request p50':>15} {'min':>7} {'max':>7} {'runs':>5} {'requests/run':>13}")
    print(f"{statistics.median(runs):15.1f} {min(runs):7.1f} {max(runs):7.1f} {len(runs):5d} {args.requests:13d}")
    if args.instructions:
        print(f"\ninstructions per request (callgrind, 3,200 minus 200 requests): {_instructions():,}")


if __name__ == "__main__":
    main()
