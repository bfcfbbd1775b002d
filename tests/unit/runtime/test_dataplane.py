"""The data plane (runtime/dataplane.py) as a real server on 127.0.0.1 in front of real static engines:
a stream relayed byte for byte, usage counted, the request id both ways, keep-alive reuse on both sides, retries
before the first byte, a cut stream, a client gone, the other paths delegated."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from orchestrator.runtime.dataplane import FastRouter
from orchestrator.runtime.keys import KeyRing, create_key
from orchestrator.runtime.router import Router
from orchestrator.spec.router import RouterLimits
from tests.unit.runtime.router_support import (
    TOKENS,
    USAGE,
    Engine,
    listening_socket,
    metric,
    refused_url,
    row,
    serving,
)

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def sent_id(engine: Engine, i: int = 0) -> str:
    return {k.lower(): v for k, v in engine.seen[i]["headers"].items()}["x-request-id"]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@asynccontextmanager
async def fast_routed(table: dict[str, list[dict[str, Any]]], **router_kwargs: Any
                      ) -> AsyncIterator[tuple[Router, FastRouter, str]]:
    access_log = router_kwargs.pop("access_log", False)
    router = Router(**router_kwargs)
    router.set_table(table)
    fast = FastRouter(router, access_log=access_log)
    server = await fast.start("127.0.0.1", 0, reuse_port=False)
    port = server.sockets[0].getsockname()[1]
    try:
        yield router, fast, f"http://127.0.0.1:{port}"
    finally:
        await fast.close()
        server.close()


@asynccontextmanager
async def setup(engine: Engine, **router_kwargs: Any) -> AsyncIterator[tuple[Router, FastRouter, str, ClientSession]]:
    async with AsyncExitStack() as stack:
        engine_url = await stack.enter_async_context(serving(engine.runner()))
        router, fast, url = await stack.enter_async_context(
            fast_routed({"d": [row("d-0", engine_url, engine.request_model)]}, **router_kwargs))
        session = await stack.enter_async_context(ClientSession(timeout=ClientTimeout(total=20),
                                                                connector=TCPConnector(limit=1)))
        yield router, fast, url, session


def test_a_stream_is_relayed_byte_for_byte_with_usage_counted_and_the_request_id_both_ways():
    async def scenario():
        engine = Engine("d")
        async with setup(engine) as (_router, _fast, url, s):
            body = {"model": "d", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
            async with s.post(url + CHAT, json=body, headers={"X-Request-Id": "req-42"}) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/event-stream"
                assert r.headers["X-Request-Id"] == "req-42"
                got = await r.read()
            expected = b"".join(engine.chunk(t) for t in TOKENS) + engine.chunk(None, USAGE) + b"data: [DONE]\n\n"
            assert got == expected
            assert sent_id(engine) == "req-42"
            assert engine.seen[0]["body"] == body  # forwarded as is
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert metric(text, "moxin_router_requests_total", code="200") == 1
            assert metric(text, "moxin_generation_tokens_total") == USAGE["completion_tokens"]
            assert metric(text, "moxin_prompt_tokens_total") == USAGE["prompt_tokens"]
            assert metric(text, "moxin_request_ttft_seconds_count") == 1

    run(scenario())


def test_the_usage_chunk_the_router_asked_for_is_measured_and_dropped_and_a_new_request_id_is_made():
    async def scenario():
        engine = Engine("d")
        async with setup(engine) as (_router, _fast, url, s):
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                got = await r.read()
                rid = r.headers["X-Request-Id"]
            assert got == b"".join(engine.chunk(t) for t in TOKENS) + b"data: [DONE]\n\n"
            assert len(rid) == 32 and sent_id(engine) == rid
            assert engine.seen[0]["body"]["stream_options"] == {"include_usage": True}
            async with s.get(url + "/metrics") as r:
                assert metric(await r.text(), "moxin_generation_tokens_total") == 3

    run(scenario())


def test_keep_alive_is_reused_towards_the_client_and_the_replica():
    async def scenario():
        engine = Engine("d")
        peers: set[Any] = set()
        async with setup(engine) as (_router, fast, url, s):
            for i in range(5):
                stream = i % 2 == 0
                async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": stream}) as r:
                    assert r.status == 200
                    raw = await r.read()
                    peers.add(r.connection.transport.get_extra_info("sockname") if r.connection else None)
                if not stream:
                    assert json.loads(raw)["usage"] == USAGE
            pool = next(iter(fast.pools.values()))
            assert pool.open == 1 and len(pool.idle) == 1  # one connection to the replica, reused 5 times
            assert len(engine.seen) == 5
            assert len(s.connector._conns) == 1  # and one from the client  # type: ignore[attr-defined]

    run(scenario())


def test_pipelined_requests_on_a_raw_socket_are_answered_in_order():
    async def scenario():
        engine = Engine("d")
        async with setup(engine) as (_router, _fast, url, _s):
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            one = json.dumps({"model": "d", "messages": MESSAGES}).encode()
            req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n\r\n%s"
            writer.write(req % (len(one), b"a", one) + req % (len(one), b"b", one))
            data = b""
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
                data += await reader.read(65536)
            assert data.index(b"X-Request-Id: a") < data.index(b"X-Request-Id: b")
            writer.close()

    run(scenario())


def test_a_dead_replica_and_a_503_are_retried_before_any_byte():
    async def scenario():
        live, busy = Engine("m"), Engine("m", mode="status-503")
        async with AsyncExitStack() as stack:
            live_url = await stack.enter_async_context(serving(live.runner()))
            busy_url = await stack.enter_async_context(serving(busy.runner()))
            table = {"d": [row("dead", refused_url(), "m", 1000.0), row("busy", busy_url, "m", 100.0),
                           row("live", live_url, "m", 1.0)]}
            _router, _fast, url = await stack.enter_async_context(fast_routed(table))
            s = await stack.enter_async_context(ClientSession())
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                assert r.status == 200
                lines = [x for x in (await r.read()).split(b"\n") if x]
            assert lines[-1] == b"data: [DONE]"
            assert b'"model": "d"' in lines[0]  # the replica's model name became the deployment's
            assert len(busy.seen) == 1 and len(live.seen) == 1
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert metric(text, "moxin_router_retries_total") == 2

    run(scenario())


def test_every_replica_answering_503_gives_the_client_the_last_one():
    async def scenario():
        engine = Engine("d", mode="status-503")
        async with setup(engine) as (_router, _fast, url, s), \
                s.post(url + CHAT, json={"model": "d", "messages": MESSAGES}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["message"] == "engine says no"
            assert len(engine.seen) == 1  # one replica, so one try

    run(scenario())


def test_a_stream_cut_by_its_replica_ends_with_an_error_event_and_no_done():
    async def scenario():
        async with setup(Engine("d", mode="cut")) as (_router, _fast, url, s):
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                assert r.status == 200
                lines = [x for x in (await r.read()).split(b"\n") if x]
            assert b"data: [DONE]" not in lines
            assert json.loads(lines[-1][6:])["error"]["code"] == "upstream_stream_cut"
            async with s.get(url + "/metrics") as r:
                assert metric(await r.text(), "moxin_router_requests_total", code="502") == 1

    run(scenario())


def test_a_client_gone_closes_the_replica_connection():
    async def scenario():
        engine = Engine("d", tokens=100, itl_s=0.05)
        async with setup(engine) as (router, _fast, url, _s):
            port = int(url.rsplit(":", 1)[1])
            sock = socket.create_connection(("127.0.0.1", port))
            one = json.dumps({"model": "d", "messages": MESSAGES, "stream": True}).encode()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(one), one))
            await asyncio.get_running_loop().run_in_executor(None, sock.recv, 100)
            sock.close()
            for _ in range(100):
                if engine.ended:
                    break
                await asyncio.sleep(0.02)
            assert engine.ended[0][0] == "disconnected"
            assert router.balancer.table["d"][0].in_flight == 0

    run(scenario())


def test_other_paths_are_the_routers_own_and_bad_requests_get_openai_errors():
    async def scenario():
        async with setup(Engine("d")) as (_router, _fast, url, s):
            async with s.get(url + "/v1/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["d"]
            async with s.get(url + "/health") as r:
                assert r.status == 200
            async with s.post(url + CHAT, data=b"{nope") as r:
                assert r.status == 400 and "error" in await r.json()
            async with s.post(url + CHAT, json={"model": "other", "messages": MESSAGES}) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
            async with s.get(url + CHAT) as r:
                assert r.status == 405
            async with s.get(url + "/nothing") as r:
                assert r.status == 404

    run(scenario())


def test_a_replica_with_no_first_byte_in_time_is_retried_and_an_idle_stream_is_cut():
    async def scenario():
        slow, live = Engine("m", headers_s=30), Engine("m")
        async with AsyncExitStack() as stack:
            slow_url = await stack.enter_async_context(serving(slow.runner()))
            live_url = await stack.enter_async_context(serving(live.runner()))
            table = {"d": [row("slow", slow_url, "m", 1000.0), row("live", live_url, "m", 1.0)]}
            limits = RouterLimits(first_byte_timeout_seconds=0.3, idle_timeout_seconds=0.3)
            _router, _fast, url = await stack.enter_async_context(fast_routed(table, limits=limits))
            s = await stack.enter_async_context(ClientSession())
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES}) as r:
                assert r.status == 200 and len(live.seen) == 1
            stalled = Engine("d", stall_after=1)
            stalled_url = await stack.enter_async_context(serving(stalled.runner()))
            _router, _fast, url = await stack.enter_async_context(
                fast_routed({"d": [row("d-0", stalled_url, "d")]}, limits=limits))
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                lines = [x for x in (await r.read()).split(b"\n") if x]
            assert json.loads(lines[-1][6:])["error"]["code"] == "upstream_idle_timeout"

    run(scenario())


def test_before_its_first_table_the_fast_path_answers_a_retriable_503_as_the_router_does():
    async def scenario():
        router = Router()
        fast = FastRouter(router)
        server = await fast.start("127.0.0.1", 0, reuse_port=False)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with ClientSession(timeout=ClientTimeout(total=20)) as s:
                async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES}) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "1"
                    assert (await r.json())["error"]["code"] == "router_starting"
        finally:
            await fast.close()
            server.close()

    run(scenario())


async def exchange(port: int, data: bytes, within_s: float = 5.0) -> tuple[bytes, float]:
    """Bytes to the router on a new connection; all it answers until it closes the connection, and when it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(data)
    try:
        answer = await asyncio.wait_for(reader.read(), within_s)
    finally:
        writer.close()
    return answer, time.monotonic() - t0


def test_a_client_that_sends_its_request_too_slowly_gets_a_408_and_an_idle_connection_is_closed():
    """A slow-loris client cannot hold connections: client_timeout_seconds from its request's first byte (looked
    at once a second), and the same for a keep-alive connection with nothing to do."""
    async def scenario():
        async with setup(Engine("d"), limits=RouterLimits(client_timeout_seconds=0.3)) as (_r, _f, url, _s):
            port = int(url.rsplit(":", 1)[1])
            answer, took = await exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                                b"Content-Length: 100\r\n\r\n{")  # the other 99 bytes never come
            assert answer.startswith(b"HTTP/1.1 408") and 0.3 <= took < 2.5
            assert b"did not arrive within 0.3 s" in answer
            answer, took = await exchange(port, b"")
            assert answer == b"" and 0.3 <= took < 2.5

    run(scenario())


def test_a_head_over_the_limit_is_a_431_and_a_body_over_it_a_413_the_client_can_read():
    async def scenario():
        async with setup(Engine("d"), max_body_bytes=1000) as (_r, _f, url, _s):
            port = int(url.rsplit(":", 1)[1])
            answer, _ = await exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000
                                       + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 431")
            body = json.dumps({"model": "d", "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
            answer, _ = await exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer

    run(scenario())


async def close_delimited(stream: bool) -> asyncio.Server:
    """A replica answering as HTTP/1.0 servers may: no Content-Length, no chunks, the body ends with the
    connection."""
    engine = Engine("m")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        if stream:
            body = b"".join(engine.chunk(t) for t in TOKENS) + engine.chunk(None, USAGE) + b"data: [DONE]\n\n"
            ctype = b"text/event-stream"
        else:
            body = json.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [],
                               "usage": USAGE}).encode()
            ctype = b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 50):  # in pieces: the router must wait for the close, not the first piece
            writer.write(body[i:i + 50])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_delimited_by_the_replica_closing_its_connection_is_relayed_whole(stream):
    async def scenario():
        server = await close_delimited(stream)
        replica = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with fast_routed({"d": [row("d-0", replica, "m")]}) as (_router, _fast, url), ClientSession() as s:
                async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": stream}) as r:
                    assert r.status == 200
                    raw = await r.read()
                if stream:
                    lines = [x for x in raw.split(b"\n") if x]
                    assert lines[-1] == b"data: [DONE]" and len(lines) == len(TOKENS) + 1 and b"error" not in raw
                else:
                    assert json.loads(raw)["model"] == "d"
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
                assert metric(text, "moxin_router_requests_total", code="200") == 1
                assert metric(text, "moxin_generation_tokens_total", deployment="d") == USAGE["completion_tokens"]
        finally:
            server.close()

    run(scenario())


def test_each_request_has_an_access_log_line_with_its_id_and_never_the_key(tmp_path, caplog):
    async def scenario():
        path = tmp_path / "keys.yaml"
        key = create_key(path, "team", ("d",))
        async with setup(Engine("d"), keys=KeyRing(path), access_log=True) as (_r, _f, url, s):
            caplog.set_level(logging.INFO, logger="orchestrator.access")
            headers = {"Authorization": f"Bearer {key}", "X-Request-Id": "req-42"}
            async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES}, headers=headers) as r:
                assert r.status == 200
            async with s.get(url + "/v1/models", headers={"X-Request-Id": "req-43"}) as r:
                assert r.status == 401
        lines = [r.getMessage() for r in caplog.records if r.name == "orchestrator.access"]
        assert lines[0].startswith("req-42 POST /v1/chat/completions 200 ") and "model=d replica=d-0" in lines[0]
        assert lines[1].startswith("req-43 GET /v1/models 401 ")
        assert key not in caplog.text

    run(scenario())


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the test trusts it through SSL_CERT_FILE)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_an_https_replica_is_reached_over_tls_and_its_certificate_is_checked(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)

    async def scenario(trusted: bool) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        runner = Engine("m").runner()
        await runner.setup()
        sock = listening_socket()
        await web.SockSite(runner, sock, ssl_context=context).start()
        replica = f"https://127.0.0.1:{sock.getsockname()[1]}"
        try:
            async with fast_routed({"d": [row("d-0", replica, "m")]}, limits=RouterLimits(retry_attempts=1)) \
                    as (_r, _f, url), ClientSession() as s:
                async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                    raw = await r.read()
                    assert not trusted or raw.rstrip().endswith(b"data: [DONE]")
                    return r.status
        finally:
            await runner.cleanup()

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert run(scenario(trusted=True)) == 200
    monkeypatch.delenv("SSL_CERT_FILE")
    assert run(scenario(trusted=False)) == 503  # a certificate nobody vouches for is no connection


def test_a_stream_ends_for_the_client_at_done_even_when_its_replica_is_slow_to_end_its_body():
    """[DONE] is the end of the answer: the client's body ends in the same write (one write fewer per stream),
    without waiting for the replica's own end of body; a replica that never sends it is a 200 all the same."""
    async def scenario():
        engine = Engine("m")

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
            body = b"".join(engine.chunk(t) for t in TOKENS) + engine.chunk(None, USAGE) + b"data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(body), body))
            await asyncio.sleep(30)  # and the end of the chunked body never comes

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        replica = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            limits = RouterLimits(idle_timeout_seconds=0.3)
            async with fast_routed({"d": [row("d-0", replica, "m")]}, limits=limits) as (_r, _f, url), \
                    ClientSession() as s:
                t0 = time.monotonic()
                async with s.post(url + CHAT, json={"model": "d", "messages": MESSAGES, "stream": True}) as r:
                    lines = [x for x in (await r.read()).split(b"\n") if x]
                assert time.monotonic() - t0 < 0.25 and lines[-1] == b"data: [DONE]" and len(lines) == 4
                await asyncio.sleep(1.0)  # the idle timeout ends the replica's side
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
                assert metric(text, "moxin_router_requests_total", code="200") == 1
                assert metric(text, "moxin_router_requests_total", code="502") == 0
        finally:
            server.close()

    run(scenario())
