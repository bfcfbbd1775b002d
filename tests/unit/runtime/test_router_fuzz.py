"""Hostile requests against a running router (a real aiohttp server on 127.0.0.1, API keys on, a real static
engine behind it): random JSON, wrong types in every field the router reads, bodies over the limit, JSON nested
10,000 deep, bad UTF-8, header abuse, wrong methods and paths. Whatever comes in: never a 500, every error the
router writes is an OpenAI-style JSON error, and a valid request still succeeds after each batch.

Bounded: a few hundred requests, each on its own connection to 127.0.0.1, a few seconds in all.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.runtime.keys import KeyRing, create_key
from orchestrator.runtime.request_checks import FIELDS
from orchestrator.runtime.router import Router
from tests.unit.runtime.router_support import Background, Engine, row

LIMIT = 256 * 1024
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
VALID = {"model": "d", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, Any]]:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    key = create_key(path, "fuzz", ("d",))
    engine = Engine("m")
    with Background() as bg:
        engine_url = bg.serve(engine.app())
        router = Router(keys=KeyRing(path), engine_key="engine-secret", max_body_bytes=LIMIT)
        router.set_table({"d": [row("d-0", engine_url, "m")], "hidden": [row("h-0", engine_url, "m")]})
        url = urlsplit(bg.serve(router))
        yield {"host": url.hostname, "port": url.port, "key": key, "engine": engine}


def send(served: dict, method: str, path: str, body: bytes | None = None,
         headers: dict[str, Any] | None = None, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(served["host"], served["port"], timeout=10)
    try:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if auth:
            all_headers.setdefault("Authorization", f"Bearer {served['key']}")
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_answered_well(status: int, headers: dict[str, str], body: bytes) -> None:
    """The router's contract with any client: no 500, and every error an OpenAI-style JSON object."""
    assert status != 500, body[:300]
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"] and "type" in error, body[:300]


def assert_still_serving(served: dict) -> None:
    status, _, body = send(served, "POST", "/v1/chat/completions", json.dumps(VALID).encode())
    assert status == 200 and json.loads(body)["model"] == "d", body[:300]


def raw_exchange(served: dict, data: bytes) -> bytes:
    """Bytes in, the first bytes of the answer out (b"" if the router closed without one)."""
    with socket.create_connection((served["host"], served["port"]), timeout=10) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it refused before reading everything: what it answered is still there
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@FUZZ
@given(body=json_values)
def test_random_json_bodies(served, body):
    assert_answered_well(*send(served, "POST", "/v1/chat/completions", json.dumps(body).encode()))


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={name: json_values | st.just(VALID.get(name, 1))
                                                for name in ("model", *FIELDS)}),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_wrong_types_in_every_field_the_router_reads(served, body, path):
    assert_answered_well(*send(served, "POST", path, json.dumps(body).encode()))


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=100).map(lambda t: t.encode("utf-16")))
def test_bytes_that_are_not_utf8_json(served, raw):
    status, headers, body = send(served, "POST", "/v1/completions", raw)
    assert_answered_well(status, headers, body)
    assert status == 400, body[:300]


def _field_value(raw: bytes) -> bytes:
    """What HTTP allows in a header value: no control characters (aiohttp's parser refuses them with a 400
    before the router sees anything; the protocol-level test sends those)."""
    return bytes(c for c in raw if c == 9 or 32 <= c != 127)


header_value = st.binary(max_size=200).map(_field_value)


@FUZZ
@given(auth=st.one_of(header_value, st.text(max_size=60).map(lambda t: _field_value(("Bearer " + t).encode())),
                      st.sampled_from(["Bearer", "Bearer  ", "bearer mx-", "Token x", "Basic Zm9vOmJhcg=="])),
       extra=st.dictionaries(st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"), header_value, max_size=20))
def test_bad_authorization_and_odd_headers(served, auth, extra):
    status, headers, body = send(served, "POST", "/v1/chat/completions", json.dumps(VALID).encode(),
                                 {"Authorization": auth, **extra})
    assert_answered_well(status, headers, body)
    assert status == 401 and headers["www-authenticate"] == "Bearer"


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]),
       path=st.one_of(st.sampled_from(["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1", "/",
                                       "/health", "/metrics", "/v1/chat/completions/", "//v1/models",
                                       "/v1/../v1/models", "/v1/%2e%2e/metrics"]),
                      st.text(max_size=40).map(lambda t: "/" + quote(t, safe="/%?&=."))),
       auth=st.booleans())
def test_wrong_methods_and_paths(served, method, path, auth):
    status, headers, body = send(served, method, path, json.dumps(VALID).encode(), auth=auth)
    assert status != 500
    if status >= 400 and method != "HEAD":
        assert_answered_well(status, headers, body)
    if not auth and status < 400:
        assert path in ("/health", "/metrics") and method in ("GET", "HEAD")


def test_hostile_sizes_and_shapes(served):
    """The few big ones, once each: over the limit (declared and chunked), deep nesting, a lying length."""
    over = json.dumps({**VALID, "messages": [{"role": "user", "content": "x" * (2 * LIMIT)}]}).encode()
    status, _, body = send(served, "POST", "/v1/chat/completions", over)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(over[i:i + 8192]), over[i:i + 8192]) for i in range(0, len(over), 8192))
    answer = raw_exchange(served, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          + served["key"].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    for deep in (b"[" * 10_000 + b"]" * 10_000, b'{"model":' * 10_000 + b'"d"' + b"}" * 10_000):
        status, _, body = send(served, "POST", "/v1/chat/completions", deep)
        assert status == 400 and "nested too deeply" in json.loads(body)["error"]["message"]
    answer = raw_exchange(served, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n"
                          b"Authorization: Bearer " + served["key"].encode() + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert_still_serving(served)


def test_header_abuse_at_the_protocol_level(served):
    key = served["key"].encode()
    cases = [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\x28" + key + b"\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ключ\r\n\r\n".encode(),
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"\r\nAuthorization: Bearer "
        + key + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"k" * 7000 + b"\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"FROB /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01\x7fb\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad\x00Name: v\r\n\r\n",
    ]
    for data in cases:
        answer = raw_exchange(served, data)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
        assert status == 0 or 400 <= status < 500, (data[:80], answer[:200])  # none of them is a valid request
    assert_still_serving(served)


@pytest.fixture(autouse=True)
def _still_serving_after_each_batch(served):
    yield
    assert_still_serving(served)
