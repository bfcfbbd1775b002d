"""The router under faults, with real servers on 127.0.0.1: each timeout towards a replica (connect, first byte,
idle), the connection cap per replica, a client that goes away (its engine request is cancelled within 2 s), and
the drain on shutdown (the port closes first, the streams in flight finish), as ``moxin router`` does on SIGTERM
and as the router actor does when the controller drains it.

The engines are ``router_support.Engine`` served with handler cancellation, so that they see their connection
closed as vLLM does (it aborts the request), and the static SSE server (``devtools.sse_server``) for the router
process."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from orchestrator.devtools.sse_server import Behaviour, StaticServer
from orchestrator.runtime.dataplane import serve
from orchestrator.runtime.router import Router
from orchestrator.spec.router import RouterLimits
from tests.unit.runtime.router_support import Engine, metric, refused_url, row, serving

REPO = Path(__file__).resolve().parents[3]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ASK = {"model": "d", "messages": MESSAGES}


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextmanager
def blackhole() -> Iterator[str]:
    """An address that never completes a TCP connection (a node gone without a reset): a listening socket whose
    accept queue is full, so the kernel drops every further SYN."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(sock.getsockname())
        except BlockingIOError:
            pass
        fill.append(c)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        for c in fill:
            c.close()
        sock.close()


@asynccontextmanager
async def fronted(replicas: list[tuple[str, Engine | str, float]], **limits: Any
                  ) -> AsyncIterator[tuple[Router, str, ClientSession]]:
    """A router (served as in production: ``dataplane.serve``) for deployment "d" over ``replicas``: (name, an
    engine or a URL, weight)."""
    router = Router(limits=RouterLimits(**limits))
    async with AsyncExitStack() as stack:
        rows = []
        for name, target, weight in replicas:
            url = target if isinstance(target, str) else await stack.enter_async_context(serving(target.runner()))
            rows.append(row(name, url, "m", weight))
        router.set_table({"d": rows})
        url = await stack.enter_async_context(serving(router))
        session = await stack.enter_async_context(ClientSession(timeout=ClientTimeout(total=30)))
        yield router, url, session


async def ask(s: ClientSession, url: str, stream: bool = False) -> tuple[int, Any]:
    async with s.post(url + CHAT, json={**ASK, "stream": stream}) as r:
        raw = await r.read()
    if stream and r.status == 200:
        return r.status, [json.loads(x[6:]) if x != b"data: [DONE]" else "[DONE]"
                          for x in raw.split(b"\n") if x.startswith(b"data: ")]
    return r.status, json.loads(raw)


async def scrape(s: ClientSession, url: str) -> str:
    async with s.get(url + "/metrics") as r:
        return await r.text()


async def until(check: Any, within_s: float) -> float:
    """Seconds until ``check()`` held (fails past ``within_s``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within_s, f"not within {within_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


# -- before the first byte: another replica, or a clean 503/504 -------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_replica_that_does_not_accept_the_connection_is_left_after_the_connect_timeout(stream):
    async def scenario():
        live = Engine("m")
        with blackhole() as hole:
            async with fronted([("hole", hole, 1000.0), ("live", live, 1.0)], connect_timeout_seconds=0.3) \
                    as (router, url, s):
                t0 = time.monotonic()
                status, body = await ask(s, url, stream)
                assert status == 200 and time.monotonic() - t0 < 2.0
                assert (body[-1] == "[DONE]") if stream else body["model"] == "d"
                assert metric(await scrape(s, url), "moxin_router_retries_total", deployment="d") == 1
                router.set_table({"d": [row("hole", hole, "m")]})
                status, body = await ask(s, url)
                assert status == 503 and body["error"]["type"] == "service_unavailable"
                assert "every ready replica failed (1 tried)" in body["error"]["message"]

    run(scenario())


@pytest.mark.parametrize(("slow", "stream"), [("headers", False), ("headers", True), ("first token", True)])
def test_a_replica_silent_past_the_first_byte_timeout_is_left_for_another_and_its_request_cancelled(stream, slow):
    """Response headers alone are not a first byte (engines send them before the prefill): a stream whose first
    token is late is retried too, since nothing reached the client."""
    async def scenario():
        late = Engine("m", headers_s=30.0) if slow == "headers" else Engine("m", first_s=30.0)
        live = Engine("m")
        async with fronted([("late", late, 1000.0), ("live", live, 1.0)],
                           first_byte_timeout_seconds=0.5) as (_, url, s):
            t0 = time.monotonic()
            status, body = await ask(s, url, stream)
            assert status == 200 and 0.5 <= time.monotonic() - t0 < 2.0
            assert (body[-1] == "[DONE]") if stream else body["model"] == "d"
            await until(lambda: late.ended, 2.0)  # the late engine's request was abandoned, not left running
            assert [how for how, _ in late.ended] == ["disconnected"]
            assert len(live.seen) == 1

    run(scenario())


def test_when_every_replica_is_too_slow_the_client_gets_a_504_json_error():
    async def scenario():
        engines = [Engine("m", headers_s=30.0), Engine("m", first_s=30.0)]
        async with fronted([("a", engines[0], 1.0), ("b", engines[1], 1.0)], first_byte_timeout_seconds=0.3) \
                as (_, url, s):
            status, body = await ask(s, url, stream=True)
            assert status == 504
            assert body["error"]["type"] == "gateway_timeout" and body["error"]["code"] == "upstream_timeout"
            assert "no replica answered within 0.3 s (2 tried)" in body["error"]["message"]
            assert metric(await scrape(s, url), "moxin_router_requests_total", deployment="d", code="504") == 1
            await until(lambda: all(e.ended for e in engines), 2.0)

    run(scenario())


# -- after the first byte: the stream ends so that the client can tell --------------------------------------------

def test_a_stream_silent_past_the_idle_timeout_ends_with_an_error_event_and_no_done():
    async def scenario():
        stuck = Engine("m", tokens=5, stall_after=2)
        async with fronted([("a", stuck, 1.0)], idle_timeout_seconds=0.4) as (_, url, s):
            t0 = time.monotonic()
            status, events = await ask(s, url, stream=True)
            assert status == 200 and 0.4 <= time.monotonic() - t0 < 2.0
            assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["t0 ", "t1 "]
            error = events[-1]["error"]
            assert error["code"] == "upstream_idle_timeout" and "sent nothing for 0.4 s" in error["message"]
            assert "[DONE]" not in events
            text = await scrape(s, url)
            assert metric(text, "moxin_router_requests_total", code="502") == 1
            assert metric(text, "moxin_router_requests_total", code="200") == 0
            await until(lambda: stuck.ended, 2.0)
            assert [how for how, _ in stuck.ended] == ["disconnected"]

    run(scenario())


# -- the connection cap --------------------------------------------------------------------------------------------

def test_no_more_connections_than_the_cap_reach_one_replica_and_the_rest_wait_their_turn():
    async def scenario():
        engine = Engine("m", tokens=4, itl_s=0.05)
        async with fronted([("a", engine, 1.0)], max_connections_per_replica=2) as (_, url, s):
            answers = await asyncio.gather(*(ask(s, url, stream=i % 2 == 0) for i in range(6)))
            assert [status for status, _ in answers] == [200] * 6
            assert engine.most_active == 2 and len(engine.seen) == 6

    run(scenario())


# -- a client that goes away ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_cancels_the_engine_request_within_2_s(stream):
    async def scenario():
        engine = Engine("m", tokens=400, itl_s=0.05) if stream else Engine("m", headers_s=30.0)
        async with fronted([("a", engine, 1.0)]) as (_, url, s):
            async def client() -> None:
                async with s.post(url + CHAT, json={**ASK, "stream": stream}) as r:
                    await r.content.readline()
                    await asyncio.sleep(30)

            task = asyncio.create_task(client())
            await until(lambda: engine.seen, 5.0)
            await asyncio.sleep(0.2)  # a stream has begun; a plain request is being generated
            task.cancel()  # the client goes away: its connection closes
            gone = time.monotonic()
            await until(lambda: engine.ended, 2.0)
            assert engine.ended[0][0] == "disconnected" and engine.ended[0][1] - gone < 2.0
            assert engine.active == 0
            text = await scrape(s, url)
            assert metric(text, "moxin_router_requests_total", code="499") == 1
            assert metric(text, "moxin_router_in_flight", replica="a") == 0

    run(scenario())


# -- drain ---------------------------------------------------------------------------------------------------------

def refused(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class StreamReader(threading.Thread):
    """A streamed chat request read line by line on a thread (the router may be another process)."""

    def __init__(self, url: str, model: str = "d", tokens: int = 20) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.tokens = url, model, tokens
        self.lines: list[bytes] = []
        self.begun = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        host, port = self.url.rsplit("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("POST", CHAT, json.dumps({"model": self.model, "messages": MESSAGES, "stream": True,
                                                  "max_tokens": self.tokens}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            while line := resp.readline():
                if line.strip():
                    self.lines.append(line.strip())
                    self.begun.set()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            self.begun.set()
            conn.close()

    @property
    def done(self) -> bool:
        return bool(self.lines) and self.lines[-1] == b"data: [DONE]"


def test_moxin_router_on_sigterm_closes_its_port_first_and_lets_the_stream_in_flight_finish(tmp_path):
    """The standalone router (Kubernetes): SIGTERM during a 2 s stream; new connections are refused at once (the
    Service's other routers take them), the stream completes with [DONE], the process exits 0."""
    with StaticServer(Behaviour(itl_s=0.1)).run_in_thread() as engine:
        config = tmp_path / "router.json"
        config.write_text(json.dumps({"deployments": {"d": [row("a", engine.url, "static")]}}))
        port = int(refused_url().rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "router", "--config", str(config), "--host",
                                 "127.0.0.1", "--port", str(port), "--drain-seconds", "10"],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while refused(url):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
            reader = StreamReader(url, tokens=20)
            reader.start()
            assert reader.begun.wait(10) and reader.error is None
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert refused(url)  # the listening socket went first
            assert not reader.done  # while the stream goes on
            reader.join(15)
            assert reader.error is None and reader.done and len(reader.lines) == 20 + 2  # tokens, finish, [DONE]
            assert proc.wait(10) == 0
            assert b"drained" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stderr.close()


def test_the_router_actor_drains_like_the_standalone_router_and_serves_no_more(monkeypatch):
    """``RouterActor.drain`` (the controller calls it before killing the actor), outside Ray."""
    from orchestrator.runtime import router_actor
    from orchestrator.runtime.router_actor import RouterActor

    def no_controller(*_args: Any, **_kw: Any) -> None:
        raise ValueError("no controller here")  # ray.get_actor would start a Ray instance

    monkeypatch.delenv("MOXIN_ENGINE_KEY", raising=False)
    monkeypatch.setattr(router_actor.ray, "get_actor", no_controller)

    async def scenario():
        async with serving(StaticServer(Behaviour(itl_s=0.05)).app()) as engine_url:
            port = int(refused_url().rsplit(":", 1)[1])
            actor = RouterActor("127.0.0.1", port, limits={"drainSeconds": 10.0})
            actor._take({"deployments": {"d": [row("a", engine_url, "static")]}})
            url = (await actor.start())["url"]
            reader = StreamReader(url, tokens=20)
            reader.start()
            assert await asyncio.to_thread(reader.begun.wait, 10)
            drain = asyncio.create_task(actor.drain())
            await asyncio.sleep(0.2)
            assert refused(url) and not reader.done
            assert await asyncio.wait_for(drain, 10) is True
            await asyncio.to_thread(reader.join, 10)
            assert reader.error is None and reader.done
            with pytest.raises(RuntimeError, match="drained"):
                await actor.start()

    run(scenario())


def test_a_stream_longer_than_the_drain_ends_with_an_error_event_after_drain_seconds():
    async def scenario():
        engine = Engine("m", tokens=400, itl_s=0.05)
        router = Router(limits=RouterLimits(drain_seconds=0.5))
        async with serving(engine.runner()) as engine_url:
            router.set_table({"d": [row("a", engine_url, "m")]})
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            plane = await serve(router, sock=sock)
            url = f"http://127.0.0.1:{plane.port}"
            reader = StreamReader(url)
            reader.start()
            assert await asyncio.to_thread(reader.begun.wait, 10)
            t0 = time.monotonic()
            await plane.close()
            assert 0.5 <= time.monotonic() - t0 < 1.5  # drain_seconds, not twice that (aiohttp's own shutdown)
            await asyncio.to_thread(reader.join, 10)
            assert not reader.done  # no [DONE]: the client knows the answer is incomplete
            error = json.loads(reader.lines[-1][6:])["error"]
            assert error["code"] == "router_draining" and "retry" in error["message"]
            await until(lambda: engine.ended, 2.0)
            assert [how for how, _ in engine.ended] == ["disconnected"]

    run(scenario())
