"""The engine proxy against a small real upstream (an aiohttp app on 127.0.0.1): it refuses requests without the
engine key before they reach the engine, forwards the others unchanged (a streamed SSE response as it is produced),
leaves the health check open, and stops listening when stopped."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading

import pytest
from aiohttp import web

from orchestrator.runtime.engine_proxy import AppThread, authorized, serve_in_thread
from orchestrator.runtime.replica import free_port

KEY = "k3y-for-tests"
EVENTS = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n', b"data: [DONE]\n\n"]


class Upstream:
    """Records what reaches it. /v1/echo answers with the request it got; /v1/stream sends one event, then the rest
    only once the test has seen the first one through the proxy (so a buffering proxy would deadlock)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.first_event_arrived = threading.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/echo", self.echo)
        app.router.add_post("/v1/stream", self.stream)
        return app

    async def health(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path})
        return web.Response(text="")

    async def echo(self, request: web.Request) -> web.Response:
        seen = {"method": request.method, "path": request.path, "query": request.query_string,
                "body": (await request.read()).decode(), "authorization": request.headers.get("Authorization")}
        self.seen.append(seen)
        return web.json_response(seen, status=418, headers={"X-Engine": "stand-in"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"path": request.path})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(EVENTS[0])
        arrived = await asyncio.to_thread(self.first_event_arrived.wait, 10)
        for event in EVENTS[1:] if arrived else []:
            await response.write(event)
        await response.write_eof()
        return response


@pytest.fixture
def upstream():
    stand_in = Upstream()
    server = AppThread(stand_in.app(), "127.0.0.1", free_port())
    yield stand_in, f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def proxy(upstream):
    running = serve_in_thread(upstream[1], KEY, "127.0.0.1", free_port())
    yield running
    running.stop()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer "])
def test_a_request_without_the_right_key_gets_401_json_and_never_reaches_the_engine(upstream, proxy, header):
    status, headers, body = request(proxy.port, "POST", "/v1/echo", b"{}",
                                    {"Authorization": header} if header else {})
    assert status == 401 and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == 401 and error["type"] == "authentication_error" and "engine key" in error["message"]
    assert upstream[0].seen == []


def test_the_right_key_is_forwarded_with_method_path_query_body_status_and_headers(upstream, proxy):
    status, headers, body = request(proxy.port, "POST", "/v1/echo?a=1&b=two", b'{"prompt": "hi"}',
                                    {"Authorization": f"Bearer {KEY}"})
    assert status == 418 and headers["X-Engine"] == "stand-in"
    assert json.loads(body) == {"method": "POST", "path": "/v1/echo", "query": "a=1&b=two",
                                "body": '{"prompt": "hi"}', "authorization": None}  # the key goes no further
    assert upstream[0].seen == [json.loads(body)]


def test_a_streamed_sse_response_comes_through_as_it_is_produced(upstream, proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/v1/stream", b"{}", {"Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
        first = r.read1(len(EVENTS[0]))  # the upstream sends nothing more until this arrived
        upstream[0].first_event_arrived.set()
        rest = r.read()
    finally:
        conn.close()
    assert first == EVENTS[0] and first + rest == b"".join(EVENTS)


def test_the_health_check_is_open_without_the_key(upstream, proxy):
    status, _, _ = request(proxy.port, "GET", "/health")
    assert status == 200 and upstream[0].seen == [{"path": "/health"}]


def test_an_engine_that_is_not_there_is_a_502_the_router_retries_elsewhere(proxy):
    proxy.proxy.upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, _, body = request(proxy.port, "POST", "/v1/echo", b"{}", {"Authorization": f"Bearer {KEY}"})
    assert status == 502 and json.loads(body)["error"]["type"] == "upstream_error"


def test_a_stopped_proxy_no_longer_listens(upstream):
    running = serve_in_thread(upstream[1], KEY, "127.0.0.1", free_port())
    assert request(running.port, "GET", "/health")[0] == 200
    running.stop()
    assert not running.alive
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", running.port), timeout=2):
        pass


def test_a_port_in_use_is_an_error_of_the_start_not_a_dead_thread(upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve_in_thread(upstream[1], KEY, "127.0.0.1", taken.getsockname()[1])


@pytest.mark.parametrize(("header", "ok"), [(f"Bearer {KEY}", True), (f"bearer {KEY}", True), (KEY, False),
                                            ("Bearer", False), (f"Bearer {KEY} ", True), ("Bearer ключ", False)])
def test_authorized_accepts_only_a_bearer_token_equal_to_the_key(header, ok):
    assert authorized(header, KEY) is ok
