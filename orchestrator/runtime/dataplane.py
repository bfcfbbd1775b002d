"""The router's data plane: HTTP/1.1 on raw asyncio Protocols and httptools (C HTTP parsers), around a ``Router``
(``runtime/router.py``: its table, rollout splits, metrics, circuit breakers, limits, admission queue, keys and
engine key). ``moxin router`` (outside Ray) and the ``RouterActor`` (inside Ray) serve on it (``serve``). Built
to spend per request about what a Rust router does (issue #18, ``benchmarks/router.py --peer``).

Per request:

- HTTP/1.1 from clients: keep-alive, pipelined requests answered in order, Content-Length or chunked bodies (up
  to ``max_body_bytes``: a 413 at once, the rest of the body read and dropped), ``Expect: 100-continue``;
  HTTP/1.0 clients get an unchunked answer and a close; a head over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` is a
  431; a request not wholly arrived within ``client_timeout_seconds`` of its first byte is a 408 (a slow client
  cannot hold connections), and a keep-alive connection idle that long is closed; repeated header fields are
  joined (two Authorization headers are no key);
- POST /v1/chat/completions and /v1/completions, streamed or not: the body is parsed and checked
  (``request_checks``), the model looked up (404 naming the served ones, a key sees only its deployments),
  ``max_concurrent_requests`` at once with ``max_queued_requests`` waiting in ``gateway.Admission`` (past it, or
  past ``queue_timeout_seconds`` in it: a 503 with Retry-After), a replica picked (``Balancer.pick``, the
  split's side once per request, ``X-Moxin-Replica`` pinning), the body forwarded as is when nothing changes
  (``Router._upstream_body``) over a pooled keep-alive connection to the replica, http:// or https:// (at most
  ``max_connections_per_replica``; past it requests wait for one), the answer parsed by httptools (a body
  delimited by the replica closing its connection too);
- a stream is relayed one write to the client per upstream ``data_received`` (whole lines: ``relay.Relay``
  rewrites the model name and finds usage and [DONE] by byte search), its head going out with its first block so
  that a retry is still possible until then; a plain answer gets the deployment's name for its model;
- retries before any byte reached the client (no connection within the connect timeout, a 429 or 5xx, no first
  byte within the first-byte timeout) on another replica, with a jittered exponential backoff, up to
  ``retry_attempts`` tries; then the last replica's own 429/5xx, or a 503 (none answered) or 504 (too slow),
  in the OpenAI error shape; the circuit breaker per replica (``gateway.Breakers``);
- once a stream has begun, a replica that breaks off or stays silent past the idle timeout ends it with an SSE
  error event (``upstream_stream_cut`` / ``upstream_idle_timeout``) and no [DONE]; a plain answer broken off is
  a 502;
- API keys (``Authorization: Bearer``, the key's deployments, the per-key token bucket: 429 with Retry-After,
  the per-key counter); upstream only the engine key and the request id, none of the client's headers;
- X-Request-Id: the client's (when a plain token) or a new one, to the replica and back to the client, in the
  router's log lines about the request and in its access-log line (``access_log``, off by default);
- a client that goes away closes its replica connection at once (vLLM aborts the request);
- ``close`` drains (SIGTERM, the actor's ``drain``): the listening socket closes first (the other routers on the
  port take new connections), idle connections close, requests in flight get ``drain_seconds``, then a stream
  still going ends with a ``router_draining`` error event and no [DONE], and the rest are cut.

Timeouts are not a timer per request: one sweep every ``SWEEP_S`` looks at the requests in flight (first byte,
idle stream) and once a second at the client connections (read timeout, idle keep-alive).

Other paths (/health, /metrics, /v1/models, /moxin/routes) are answered by the ``Router``'s own handlers.

Not covered: TLS to clients (terminate it in front: an ingress or load balancer), HTTP/2, HTTP/1.1 upgrades
(a 400).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from random import getrandbits
from typing import Any
from urllib.parse import urlsplit

import httptools

from orchestrator.runtime.balance import Endpoint
from orchestrator.runtime.gateway import backoff_seconds, request_id
from orchestrator.runtime.keys import ApiKey, bearer_token
from orchestrator.runtime.listener import BACKLOG
from orchestrator.runtime.relay import Relay
from orchestrator.runtime.request_checks import Invalid, check_request, parse_body
from orchestrator.runtime.router import (
    API_KEY,
    BUSY,
    MAX_BODY_BYTES,
    PUBLIC_PATHS,
    Router,
    _sse_error,
    error_json,
    read_config,
    reload_forever,
    run_fast,
)
from orchestrator.spec.defaults import REPLICA_HEADER, ROUTES_PATH
from orchestrator.spec.plan import METRIC_LABELS
from orchestrator.spec.router import RouterLimits

log = logging.getLogger(__name__)
access = logging.getLogger("orchestrator.access")

SWEEP_S = 0.25
"""How often the first-byte and idle timeouts are looked at (``FastRouter._sweep``): they are that late at most."""
CLIENT_SWEEP_EVERY = 4
"""Clients' read and keep-alive timeouts are looked at every this many sweeps (once a second)."""
MAX_HEAD_BYTES = 32 * 1024
"""A request's URL and headers, at most (past it: a 431): a real client's head is a few hundred bytes."""
MAX_HEADERS = 100
DISCARD_BYTES = 64 * 2**20
"""Of a body over the limit, how much is still read (and dropped) so that the client, still sending, can read its
413 (a socket closed with unread bytes is reset); past it the connection is closed."""
FAST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_H_RID, _H_AUTH, _H_EXPECT, _H_REPLICA = b"x-request-id", b"authorization", b"expect", REPLICA_HEADER.lower().encode()
_READ_HEADERS = frozenset({_H_RID, _H_AUTH, _H_EXPECT, _H_REPLICA, b"content-length"})
"""The request headers the router reads; the others are counted (``MAX_HEADERS``, ``MAX_HEAD_BYTES``), not kept."""
_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"


def _head(status: int, content_type: bytes, rid: str, length: int | None, extra: bytes = b"",
          close: bool = False) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nX-Request-Id: %s\r\n" % (
        status, _PHRASES.get(status, b"Unknown"), content_type, rid.encode())]
    parts.append(b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def _error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
                code: str | None = None) -> bytes:
    return json.dumps(error_json(message, kind, param, code)).encode()


class _Pool:
    """Keep-alive connections to one replica (host, port): idle ones are reused, at most ``limit`` open, requests
    past it wait for one."""

    def __init__(self, fast: FastRouter, url: str, limit: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"a replica's URL is http:// or https://, not {url!r}")
        self.tls: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.fast, self.host = fast, parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls is not None else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = (parts.netloc or self.host).encode()
        self.limit = limit
        self.idle: list[_Upstream] = []
        self.open = 0
        self.waiters: deque[Callable[[_Upstream | None, BaseException | None], None]] = deque()

    def acquire(self, done: Callable[[_Upstream | None, BaseException | None], None]) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                done(conn, None)
                return
        if self.open < self.limit:
            self._connect(done)
        else:
            self.waiters.append(done)

    def _connect(self, done: Callable[[_Upstream | None, BaseException | None], None]) -> None:
        self.open += 1
        loop = self.fast.loop
        task = loop.create_task(asyncio.wait_for(
            loop.create_connection(lambda: _Upstream(self), self.host, self.port, ssl=self.tls),
            self.fast.router.limits.connect_timeout_seconds))

        def made(t: asyncio.Task[Any]) -> None:
            exc = None if t.cancelled() else t.exception()
            if t.cancelled() or exc is not None:
                self.open -= 1
                done(None, exc or ConnectionError("connect cancelled"))
                self._serve_waiter()
                return
            done(t.result()[1], None)

        task.add_done_callback(made)

    def release(self, conn: _Upstream) -> None:
        """A connection whose answer is complete and which the replica keeps alive."""
        if conn.closed:
            return
        if self.waiters:
            self.waiters.popleft()(conn, None)
        else:
            self.idle.append(conn)

    def lost(self, conn: _Upstream) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._serve_waiter()

    def _serve_waiter(self) -> None:
        if self.waiters and self.open < self.limit:
            self._connect(self.waiters.popleft())

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle = []


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to a replica; its answer's events go to the exchange using it."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.complete = False
        self.keep = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, exchange: _Exchange, data: bytes) -> None:
        self.exchange, self.status, self.headers, self.complete = exchange, 0, [], False
        self.transport.write(data)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # here: llhttp forgets it once the message is over

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # nothing asked: a replica that talks out of turn is not reused
            self.transport.close()
            return
        self.pieces = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.exchange = None
            self.transport.close()
            ex.upstream_lost("a malformed answer")
            return
        if self.status:
            ex.upstream_data(self)

    def finished(self) -> None:
        """The exchange is done with it: back to the pool when its answer was complete and kept alive."""
        self.exchange = None
        if self.complete and self.keep:
            self.pool.release(self)
        else:
            self.transport.close()

    def abort(self) -> None:
        self.exchange = None
        self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.lost(self)
        ex = self.exchange
        if ex is None:
            return
        if exc is None and self.status and not self.complete and _close_delimited(self.headers):
            self.complete, self.keep, self.pieces = True, False, []  # its end is the connection's close
            ex.upstream_data(self)
            return
        self.exchange = None
        ex.upstream_lost("closed the connection")


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    """An answer with neither a length nor chunks: its body ends where the connection does (RFC 9112 6.3)."""
    return not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers)


class _Exchange:
    """One completion request: its tries of replicas, then the relay of the answer to the client."""

    __slots__ = (
        "admitted",
        "answer",
        "answered",
        "attempt",
        "body",
        "chunked",
        "client",
        "code",
        "conn",
        "deadline",
        "done",
        "ep",
        "failed_ep",
        "fast",
        "first",
        "keep",
        "key",
        "last",
        "name",
        "path",
        "payloads",
        "raw",
        "received",
        "relay",
        "replica",
        "rest",
        "rid",
        "sent",
        "series",
        "settled",
        "side",
        "slow",
        "start",
        "stream",
        "tried",
        "wants_usage",
    )

    def __init__(self, fast: FastRouter, client: _Client, rid: str, path: str, raw: bytes, body: dict[str, Any],
                 name: str, key: ApiKey | None, chunked: bool, keep: bool) -> None:
        self.fast, self.client, self.rid, self.path, self.body, self.name = fast, client, rid, path, body, name
        self.raw = raw
        self.failed_ep: Endpoint | None = None
        self.key, self.chunked, self.keep = key, chunked, keep
        self.stream = bool(body.get("stream"))
        self.wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.start = time.monotonic()
        self.tried: set[str] = set()
        self.side: str | None = None
        self.attempt = 0
        self.ep: Endpoint | None = None
        self.series: Any = None
        self.conn: _Upstream | None = None
        self.payloads: dict[str, bytes] = {}
        self.relay: Relay | None = None
        self.first: float | None = None
        self.rest = b""
        self.sent = False  # a byte of the answer went to the client: no retry any more
        self.answered = False  # the client's stream ended at [DONE]; the replica's end of body is still to come
        self.done = False
        self.deadline = 0.0  # the loop time by which the replica's first byte is due (0: none)
        self.last = 0.0
        self.settled = True
        self.slow = False
        self.answer: tuple[int, bytes, bytes, bytes] | None = None  # the last replica's 429/5xx
        self.code = 499
        self.admitted = False  # holds a slot of the admission limit (``Router.admission``)
        self.received = 0.0  # the loop time its first byte came (the access log's duration)
        self.replica = "-"  # the last replica tried

    # -- tries ------------------------------------------------------------------------------------------------
    def next_try(self) -> None:
        fast, router = self.fast, self.fast.router
        if self.attempt >= router.limits.retry_attempts:
            return self.give_up()
        now = time.monotonic()
        breakers = router.breakers
        blocked = self.tried | {e.name for e in router.balancer.table.get(self.name, [])
                                if breakers.blocked(e.name, now)} if breakers.circuits else self.tried
        ep = router.balancer.pick(self.name, blocked, now, self.side)
        if ep is None:
            return self.give_up()
        self.attempt += 1
        self.tried.add(ep.name)
        payload = self.payloads.get(ep.request_model)
        if payload is None:
            try:
                payload = self.payloads[ep.request_model] = router._upstream_body(
                    self.raw, self.body, ep, self.stream, self.wants_usage)
            except (RecursionError, ValueError):
                return self.reply(400, _error_body("the body is nested too deeply to forward"))
        if self.attempt > 1:
            limits = router.limits
            wait_s = backoff_seconds(self.attempt - 1, limits.retry_backoff_seconds, limits.retry_backoff_max_seconds,
                                     router.rng)
            fast.loop.call_later(wait_s, self.send, ep, payload)
        else:
            self.send(ep, payload)

    def send(self, ep: Endpoint, payload: bytes) -> None:
        if self.done:
            return
        router = self.fast.router
        self.ep, self.series, self.replica = ep, router.series(ep), ep.name
        ep.in_flight += 1
        self.series.in_flight.inc()
        router.breakers.begin(ep.name, time.monotonic())
        self.settled = False
        loop = self.fast.loop
        self.deadline = loop.time() + router.limits.first_byte_timeout_seconds
        pool = self.fast.pool(ep)
        head = b"".join((b"POST ", pool.prefix, self.path.encode(), b" HTTP/1.1\r\nHost: ", pool.host_header,
                         b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: " % len(payload),
                         self.rid.encode(), self.fast.auth_line, b"\r\n\r\n"))
        request = head + payload

        def got(conn: _Upstream | None, exc: BaseException | None) -> None:
            if conn is None:
                if not self.done:
                    self.try_failed(f"connection: {exc!r}")  # not made in time is not made: a 503
                return
            if self.done or self.ep is not ep:  # the client went away, or this try timed out, meanwhile
                conn.pool.release(conn)
                return
            self.conn = conn
            conn.send(self, request)

        pool.acquire(got)

    def end_try(self) -> None:
        """This replica is done with (whatever the outcome): its counters, its deadline."""
        self.deadline = 0.0
        ep = self.ep
        if ep is not None:
            if not self.settled:
                self.fast.router.breakers.release(ep.name)
                self.settled = True
            ep.in_flight -= 1
            self.series.in_flight.dec()
            self.ep = None

    def try_failed(self, why: str, slow: bool = False, counts: bool = True,
                   answer: tuple[int, bytes, bytes, bytes] | None = None) -> None:
        """The try failed before any byte reached the client: mark the replica, try another."""
        ep, router = self.ep, self.fast.router
        self.drop_conn()
        assert ep is not None
        self.settled = True
        router._failure(ep, why, self.rid, counts)
        self.series.retries.inc()
        self.slow, self.answer, self.failed_ep = slow, answer, ep
        self.end_try()
        self.next_try()

    def give_up(self) -> None:
        router = self.fast.router
        if self.answer is not None and self.failed_ep is not None:  # the last replica's own 429/5xx, as it was
            status, ctype, extra, raw = self.answer
            router._record(self.failed_ep, status, self.start, None, None, 0)
            return self.reply(status, raw, ctype, extra)
        status = 504 if self.slow else 503
        router.metrics.requests.labels(**({k: "" for k in METRIC_LABELS} | {"deployment": self.name}),
                                       code=str(status)).inc()
        if self.slow:
            body = _error_body(f"deployment {self.name!r}: no replica answered within "
                               f"{router.limits.first_byte_timeout_seconds:g} s ({len(self.tried)} tried); retry "
                               "later", "gateway_timeout", code="upstream_timeout")
        else:
            body = _error_body(router.unavailable(self.name, self.tried), "service_unavailable")
        self.reply(status, body)

    # -- the replica's answer ---------------------------------------------------------------------------------
    def upstream_data(self, conn: _Upstream) -> None:
        if self.done:
            return
        status = conn.status
        if self.stream and status == 200:
            return self.stream_data(conn)
        if not conn.complete:
            self.rest += b"".join(conn.pieces)
            return
        raw = self.rest + b"".join(conn.pieces) if self.rest else b"".join(conn.pieces)
        self.rest = b""
        ctype, extra = b"application/json", []
        for k, v in conn.headers:
            lk = k.lower()
            if lk == b"content-type":
                ctype = v
            elif lk == b"retry-after":
                extra.append(b"Retry-After: " + v + b"\r\n")
        if status == BUSY or status >= 500:
            self.conn = None
            conn.finished()
            return self.try_failed(f"answered {status}", counts=status != BUSY,
                                   answer=(status, ctype, b"".join(extra), raw))
        router, ep = self.fast.router, self.ep
        assert ep is not None
        self.settled = True
        router._success(ep)
        usage = None
        if status == 200:
            raw, usage = Router._plain_answer(raw, self.name)
        router._record(ep, status, self.start, None, usage, 0)
        self.code = status
        self.conn = None
        conn.finished()
        self.reply(status, raw, ctype)

    def stream_data(self, conn: _Upstream) -> None:
        pieces = conn.pieces
        data = b"".join(pieces) if len(pieces) != 1 else pieces[0]
        if self.rest:
            data = self.rest + data
        complete = conn.complete
        if complete:
            block, self.rest = data, b""
        else:
            end = data.rfind(b"\n") + 1
            if not end:
                self.rest = data
                return
            block, self.rest = (data, b"") if end == len(data) else (data[:end], data[end:])
        relay = self.relay
        if relay is None:
            assert self.ep is not None
            relay = self.relay = Relay(self.name, self.ep.request_model, self.wants_usage)
        elif self.answered:  # the client has its whole answer: what the replica adds after [DONE] is dropped
            if complete:
                self.conn = None
                conn.finished()
                self.finish_stream([], None, "")
            return
        out, found = relay.feed(block) if block else (b"", 0)
        if found and self.first is None:
            self.first = time.monotonic()
        parts = []
        loop = self.fast.loop
        self.last = loop.time()
        if not self.sent:  # the first byte: from now on the idle timeout
            self.sent = True
            parts.append(_SSE_HEAD + b"X-Request-Id: " + self.rid.encode() +
                         (b"\r\nTransfer-Encoding: chunked\r\n\r\n" if self.chunked else b"\r\nConnection: close\r\n\r\n"))
        if out:
            parts.append(b"%x\r\n%s\r\n" % (len(out), out) if self.chunked else out)
        if complete:
            self.conn = None
            conn.finished()
            cut = None if relay.done else "upstream_stream_cut"
            self.finish_stream(parts, cut, f"the replica of {self.name!r} broke off the stream before it finished")
            return
        if relay.done and self.chunked:  # [DONE]: the client's body ends in this write, not in one more later
            self.answered = True
            parts.append(b"0\r\n\r\n")
        self.client.write(b"".join(parts))

    def finish_stream(self, parts: list[bytes], cut: str | None, why: str) -> None:
        """The stream is over: its last bytes, an error event when it did not finish, the end of the body."""
        router, ep = self.fast.router, self.ep
        assert ep is not None
        if self.answered:  # the client had its whole answer, [DONE] and the end of the body, already
            cut = None
        else:
            if cut is not None:
                log.warning("request %s: %s", self.rid, why)
                event = _sse_error(why, cut)
                parts.append(b"%x\r\n%s\r\n" % (len(event), event) if self.chunked else event)
            if self.chunked:
                parts.append(b"0\r\n\r\n")
        self.code = 200 if cut is None else 502 if cut != "router_draining" else 503
        if cut is None:
            self.settled = True
            router._success(ep)
        relay = self.relay
        router._record(ep, self.code, self.start, self.first, relay.usage if relay else None,
                       relay.chunks if relay else 0)
        self.end_try()
        self.done = True
        if parts:
            self.client.write(b"".join(parts))
        self.client.exchange_over(self, keep=self.keep and self.chunked)

    def upstream_lost(self, why: str) -> None:
        if self.done:
            return
        self.conn = None
        if not self.sent:
            return self.try_failed(f"broke off before any byte ({why})")
        if self.stream:
            return self.finish_stream([], "upstream_stream_cut",
                                      f"the replica of {self.name!r} broke off the stream before it finished")

    def drop_conn(self) -> None:
        """Close this try's replica connection at once (the engine aborts the request)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def check_time(self, now: float) -> None:
        """The sweep's look (``FastRouter._sweep``): a first byte overdue is another replica's turn; a stream that
        began and went idle past the idle timeout is cut."""
        if self.done:
            return
        if not self.sent:
            if self.deadline and now >= self.deadline:
                self.try_failed("no first byte in time", slow=True)
            return
        idle_s = self.fast.router.limits.idle_timeout_seconds
        if not self.stream or now - self.last < idle_s:
            return
        self.drop_conn()
        self.finish_stream([], "upstream_idle_timeout", f"the replica of {self.name!r} sent nothing for {idle_s:g} s")

    # -- the end ----------------------------------------------------------------------------------------------
    def reply(self, status: int, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"") -> None:
        self.end_try()
        self.code = status
        self.done = True
        self.client.write(_head(status, ctype, self.rid, len(body), extra, close=not self.keep) + body)
        self.client.exchange_over(self, keep=self.keep)

    def cancel(self) -> None:
        """The client went away: close the replica's connection (the engine aborts the request)."""
        if self.done:
            return
        self.done = True
        self.drop_conn()
        if self.ep is not None:
            self.fast.router._record(self.ep, 499, self.start, None, None, 0)
        self.code = 499
        self.end_try()
        self.fast.exchange_closed(self)

    def drain_cut(self) -> None:
        """The drain ran out: a stream that began ends with an error event, the rest are cut."""
        if self.done:
            return
        if self.sent and self.stream:
            self.drop_conn()
            self.finish_stream([], "router_draining", f"the router shut down before the stream of {self.name!r} "
                               "finished; retry: another router takes new requests")
        else:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    """One client connection: its requests, one at a time (pipelined ones wait their turn)."""

    def __init__(self, fast: FastRouter) -> None:
        self.fast = fast
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.refuse = 0  # the status a request over a limit gets: 413 (its body), 431 (its head)
        self.discard = 0  # bytes of a refused body still read and dropped before the connection is closed
        self.head = 0  # bytes of the current request's head (its URL, header names and values)
        self.fields = 0  # header fields of the current request
        self.in_head = True  # no request, or one whose head is not complete: what comes is head bytes
        self.raw_head = 0  # bytes received while in the head: a bound on what the parser buffers
        self.reading = False  # a request has begun and is not complete: the read timeout runs
        self.since = fast.loop.time()  # when the connection went idle, or the request began
        self.busy: Any = None  # the exchange (or delegated task, or wait in the admission queue) answering now
        self.queue: deque[tuple[Any, ...]] = deque()
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.fast.clients.add(self)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.refuse:  # the rest of a refused body: read (so that the client can read the 413), not kept
            self.discard -= len(data)
            if self.discard < 0:
                self.transport.close()
                return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()
            return
        if self.closed:
            return
        if self.in_head:
            self.raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._bad(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            if not self.refuse:
                self._bad(400, "malformed HTTP request")
        if self.in_head and self.raw_head > MAX_HEAD_BYTES and not self.closed:
            self._bad(431, f"the request's head is over the router's limit of {MAX_HEAD_BYTES} bytes")

    def _bad(self, status: int, message: str) -> None:
        body = _error_body(message)
        self.write(_head(status, b"application/json", request_id(None), len(body), close=True) + body)
        self.fast.access("-", "-", "-", status, self.since)
        self.transport.close()
        self.closed = True

    def check_time(self, now: float, timeout_s: float) -> None:
        """The sweep's look: a request whose head and body take longer than ``timeout_s`` to arrive (a slow
        client, or one holding connections open on purpose) is a 408; a keep-alive connection idle that long is
        closed."""
        if self.busy is not None or self.queue or self.closed or now - self.since < timeout_s:
            return
        if self.reading:
            self._bad(408, f"the request did not arrive within {timeout_s:g} s")
        else:
            self.closed = True
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size, self.refuse, self.head, self.fields = b"", {}, [], 0, 0, 0, 0
        self.reading, self.since = True, self.fast.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value) + 4
        self.fields += 1
        name = name.lower()
        if name in _READ_HEADERS:  # the only ones read: the rest are not kept
            had = self.headers.get(name)
            self.headers[name] = value if had is None else had + b", " + value  # RFC 9110 5.3: one list

    def on_headers_complete(self) -> None:
        self.in_head, self.raw_head = False, 0
        if self.head > MAX_HEAD_BYTES or self.fields > MAX_HEADERS:
            return self._refuse(431)
        length = self.headers.get(b"content-length")
        limit = self.fast.router.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return self._refuse(413)
        if self.headers.get(_H_EXPECT, b"").lower() == b"100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refuse:
            return
        self.size += len(body)
        if self.size > self.fast.router.max_body_bytes:
            self._refuse(413)
        else:
            self.body.append(body)

    def _refuse(self, status: int) -> None:
        """A request over a limit is answered now (and the connection closed after), not once it is all read:
        the rest may never come, or be endless."""
        self.refuse, self.reading, self.body = status, False, []
        self.discard = DISCARD_BYTES if status == 413 else 0
        p = self.parser
        item = (p.get_method(), self.url, self.headers, b"", False, p.get_http_version() != "1.0", status, self.since)
        if self.busy is not None or self.queue:
            self.queue.append(item)
        else:
            self.fast.dispatch(self, *item)
        if not self.discard:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.refuse:  # the refused body is over: the connection closes once its answer went out
            self.discard = 0
            if self.closed:
                self.transport.close()
            return
        p = self.parser
        self.in_head, self.reading = True, False
        item = (p.get_method(), self.url, self.headers, b"".join(self.body), p.should_keep_alive(),
                p.get_http_version() != "1.0", self.refuse, self.since)
        if self.busy is not None or self.queue:
            self.queue.append(item)
        else:
            self.fast.dispatch(self, *item)

    def exchange_over(self, exchange: Any, keep: bool) -> None:
        self.fast.exchange_closed(exchange)
        self.busy = None
        self.since = self.fast.loop.time()
        if not keep:
            self.closed = True
            self.transport.close()
            return
        if self.queue:
            self.fast.dispatch(self, *self.queue.popleft())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.fast.clients.discard(self)
        busy, self.busy = self.busy, None
        self.queue.clear()
        if busy is not None:
            busy.cancel()


class FastRouter:
    """The data plane around a ``Router`` (its table, metrics, limits, breakers, keys, admission queue)."""

    def __init__(self, router: Router, access_log: bool = False) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.pools: dict[str, _Pool] = {}
        self.active: set[Any] = set()
        self.clients: set[_Client] = set()
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeps = 0
        self._health: asyncio.Task[None] | None = None
        self.auth_line = b"\r\nAuthorization: Bearer " + router.engine_key.encode() if router.engine_key else b""
        self.access_log = access_log
        self._draining = False

    def pool(self, ep: Endpoint) -> _Pool:
        got = self.pools.get(ep.url)
        if got is None:
            got = self.pools[ep.url] = _Pool(self, ep.url, self.router.limits.max_connections_per_replica)
        return got

    async def start(self, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = True,
                    sock: socket.socket | None = None) -> asyncio.Server:
        """Listen on host:port (SO_REUSEPORT: several routers may share it), or on ``sock``, a socket bound (and
        maybe listening) already; start the sweep and, outside Ray, the replicas' health checks."""
        if sock is not None:
            self.server = await self.loop.create_server(lambda: _Client(self), sock=sock, backlog=BACKLOG)
        else:
            self.server = await self.loop.create_server(lambda: _Client(self), host, port, reuse_port=reuse_port,
                                                        backlog=BACKLOG)
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)
        router = self.router
        if router.health_checks:  # off the hot path: the aiohttp client is fine for them
            from aiohttp import ClientSession, ClientTimeout

            router.session = ClientSession(timeout=ClientTimeout(total=None))
            self._health = self.loop.create_task(router.check_health_forever())
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Timeouts, looked at every ``SWEEP_S`` rather than a timer per request; the clients' every second."""
        now = self.loop.time()
        for ex in list(self.active):
            if isinstance(ex, _Exchange):
                ex.check_time(now)
        self._sweeps += 1
        if self._sweeps % CLIENT_SWEEP_EVERY == 0:
            timeout_s = self.router.limits.client_timeout_seconds
            for client in list(self.clients):
                client.check_time(now, timeout_s)
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def exchange_closed(self, exchange: Any) -> None:
        self.active.discard(exchange)
        if isinstance(exchange, _Exchange):
            if exchange.admitted:
                exchange.admitted = False
                self.router.admission.leave()
            if exchange.key is not None:
                self.router.metrics.key_requests.labels(key=exchange.key.name, code=str(exchange.code)).inc()
            if self.access_log:
                self.access(exchange.rid, "POST", exchange.path, exchange.code, exchange.received, exchange.name,
                            exchange.replica)

    def access(self, rid: str, method: str, path: str, status: int, since: float, model: str = "-",
               replica: str = "-") -> None:
        """The request's access-log line (logger ``orchestrator.access``): its id, what it asked, the answer's
        status, the time from its first byte to the answer's last, the deployment and replica. No header, no key,
        no body: nothing a client sent in confidence."""
        if self.access_log:
            access.info("%s %s %s %d %.1fms model=%s replica=%s", rid, method, path[:200], status,
                        (self.loop.time() - since) * 1000, model[:80], replica)

    def dispatch(self, client: _Client, method: bytes, url: bytes, headers: dict[bytes, bytes], raw: bytes,
                 keep: bool, chunked: bool, refuse: int, since: float) -> None:
        given = headers.get(_H_RID)
        rid = request_id(given.decode("latin-1")) if given is not None else f"{getrandbits(128):032x}"
        router = self.router
        path = url.split(b"?", 1)[0].decode("latin-1")
        if self._draining:
            keep = False
        if refuse == 431:
            return self._answer(client, rid, 431, _error_body(
                f"the request's head is over the router's limit of {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} "
                "header fields", code="request_header_fields_too_large"), b"", False, None, method, path, since)
        key: ApiKey | None = None
        if router.keys is not None and path not in PUBLIC_PATHS:
            auth = headers.get(_H_AUTH)
            token = bearer_token([auth.decode("latin-1")] if auth is not None else [])
            key = router.keys.identify(token) if token is not None else None
            if key is None:
                router.metrics.key_requests.labels(key="", code="401").inc()
                return self._answer(client, rid, 401, _error_body(
                    "a valid API key is required: send Authorization: Bearer <key>", code="invalid_api_key"),
                    b"WWW-Authenticate: Bearer\r\n", keep, None, method, path, since)
            wait_s = router.buckets.take(key.name, time.monotonic()) if router.buckets is not None else 0.0
            if wait_s:
                router.metrics.key_requests.labels(key=key.name, code="429").inc()
                rate = router.limits.key_requests_per_second
                return self._answer(client, rid, 429, _error_body(
                    f"this API key is over its rate limit of {rate:g} requests/s; retry after {wait_s:.2f} s",
                    "rate_limit_error", code="rate_limit_exceeded"),
                    b"Retry-After: %d\r\n" % math.ceil(wait_s), keep, None, method, path, since)
        if path in FAST_PATHS:
            if method != b"POST":
                return self._answer(client, rid, 405, _error_body(f"{method.decode()} {path}: Method Not Allowed"),
                                    b"Allow: POST\r\n", keep, key, method, path, since)
            if refuse == 413:
                return self._answer(client, rid, 413, _error_body(
                    f"the request body is over the router's limit of {router.max_body_bytes} bytes",
                    code="request_too_large"), b"", False, key, method, path, since)
            return self._complete(client, rid, path, raw, headers, key, keep, chunked, since)
        self._delegate(client, rid, method, path, key, keep, since)

    def _answer(self, client: _Client, rid: str, status: int, body: bytes, extra: bytes, keep: bool,
                key: ApiKey | None = None, method: bytes = b"POST", path: str = "-", since: float = 0.0,
                model: str = "-") -> None:
        if key is not None:
            self.router.metrics.key_requests.labels(key=key.name, code=str(status)).inc()
        if self.access_log:
            self.access(rid, method.decode("latin-1"), path, status, since or self.loop.time(), model)
        client.busy = None
        client.since = self.loop.time()
        client.write(_head(status, b"application/json", rid, len(body), extra, close=not keep) + body)
        if not keep:
            client.closed = True
            if not client.discard:  # else once the refused body is read (``_Client.on_message_complete``)
                client.transport.close()
        elif client.queue:
            self.dispatch(client, *client.queue.popleft())

    def _complete(self, client: _Client, rid: str, path: str, raw: bytes, headers: dict[bytes, bytes],
                  key: ApiKey | None, keep: bool, chunked: bool, since: float) -> None:
        router = self.router
        body = parse_body(raw)
        if isinstance(body, Invalid):
            return self._answer(client, rid, 400, _error_body(body.message, param=body.param), b"", keep, key,
                                b"POST", path, since)
        invalid = check_request(path, body)
        if invalid is not None:
            return self._answer(client, rid, 400, _error_body(invalid.message, param=invalid.param), b"", keep, key,
                                b"POST", path, since)
        name = body["model"]
        if not router.has_table:  # as Router.proxy: a restarted router before its first table
            return self._answer(client, rid, 503, _error_body(
                "the router has no routing table yet (it is starting); retry", "service_unavailable",
                code="router_starting"), b"Retry-After: 1\r\n", keep, key, b"POST", path, since, name)
        table = router.balancer.table
        if name not in table or (key is not None and not key.allows(name)):
            visible = [n for n in sorted(table) if key is None or key.allows(n)]
            return self._answer(client, rid, 404, _error_body(
                f"model {name[:80]!r} not found; served models: {visible}", param="model", code="model_not_found"),
                b"", keep, key, b"POST", path, since, name)
        pinned = headers.get(_H_REPLICA)
        pin: str | None = None
        if pinned is not None:
            names = [e.name for e in table.get(name, [])]
            pin = pinned.decode("latin-1")
            if pin not in names:
                return self._answer(client, rid, 404, _error_body(
                    f"deployment {name!r} has no ready replica {pin[:80]!r}; ready: {names}", param=REPLICA_HEADER,
                    code="replica_not_found"), b"", keep, key, b"POST", path, since, name)
        ex = _Exchange(self, client, rid, path, raw, body, name, key, chunked, keep)
        ex.received = since
        if pin is not None:
            ex.tried = {e.name for e in table.get(name, [])} - {pin}
        else:
            ex.side = router.balancer.side(name)
        admission = router.admission
        if admission.limit:
            if not admission.try_enter():
                if admission.full():
                    return self._overloaded(ex)
                return self._queue(ex)
            ex.admitted = True
        client.busy = ex
        self.active.add(ex)
        ex.next_try()

    def _queue(self, ex: _Exchange) -> None:
        """No free slot under ``max_concurrent_requests``: wait in the admission queue (``gateway.Admission``)."""
        client = ex.client
        wait = self.loop.create_task(self.router.admission.enter())
        client.busy = wait
        self.active.add(wait)

        def admitted(task: asyncio.Task[None]) -> None:
            self.active.discard(task)
            if task.cancelled() or client.busy is not task:  # the client went away while it waited
                return
            if task.exception() is not None:
                return self._overloaded(ex)
            ex.admitted = True
            client.busy = ex
            self.active.add(ex)
            ex.next_try()

        wait.add_done_callback(admitted)

    def _overloaded(self, ex: _Exchange) -> None:
        router, limits = self.router, self.router.limits
        router.metrics.requests.labels(**({k: "" for k in METRIC_LABELS} | {"deployment": ex.name}), code="503").inc()
        self._answer(ex.client, ex.rid, 503, _error_body(
            f"the router is at its limit of {limits.max_concurrent_requests} concurrent requests with "
            f"{limits.max_queued_requests} queued; retry later", "service_unavailable", code="router_overloaded"),
            b"Retry-After: 1\r\n", ex.keep, ex.key, b"POST", ex.path,
            ex.received, ex.name)

    def _delegate(self, client: _Client, rid: str, method: bytes, path: str, key: ApiKey | None,
                  keep: bool, since: float) -> None:
        """The other paths: the ``Router``'s own handlers, with a stand-in for the request."""
        router = self.router
        handlers = {"/health": router.health, "/metrics": router.export, "/v1/models": router.models,
                    ROUTES_PATH: router.routes}
        handler = handlers.get(path)
        if handler is None:
            return self._answer(client, rid, 404, _error_body(f"{method.decode()} {path[:80]}: Not Found"), b"",
                                keep, key, method, path, since)
        if method != b"GET":
            return self._answer(client, rid, 405, _error_body(f"{method.decode()} {path[:80]}: Method Not Allowed"),
                                b"Allow: GET\r\n", keep, key, method, path, since)

        async def run() -> None:
            resp = await handler({API_KEY: key})
            body = resp.body if isinstance(resp.body, bytes) else bytes(resp.body or b"")
            ctype = resp.headers.get("Content-Type") or resp.content_type
            if key is not None:
                router.metrics.key_requests.labels(key=key.name, code=str(resp.status)).inc()
            self.access(rid, method.decode("latin-1"), path, resp.status, since)
            client.write(_head(resp.status, ctype.encode(), rid, len(body), close=not keep) + body)
            client.exchange_over(task, keep)

        task = self.loop.create_task(run())
        client.busy = task
        self.active.add(task)

    async def close(self) -> None:
        """Drain: stop listening (other routers on the port take new connections), give the requests in flight
        ``drain_seconds``, then end the streams still going with a ``router_draining`` event and cut the rest;
        close idle connections, the pools, the health checks."""
        self._draining = True
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):  # idle keep-alive connections: nothing to finish
            if client.busy is None and not client.queue and not client.reading:
                client.closed = True
                client.transport.close()
        pending = [ex for ex in self.active if not isinstance(ex, _Exchange) or not ex.done]
        drain_s = self.router.limits.drain_seconds
        if pending:
            log.info("draining %d request(s) for up to %g s", len(pending), drain_s)
        deadline = self.loop.time() + drain_s
        while self.active and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.active:
            log.warning("drain: %d request(s) still in flight after %g s were cut", len(self.active), drain_s)
        for ex in list(self.active):
            if isinstance(ex, _Exchange):
                ex.drain_cut()
            else:
                ex.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._health is not None:
            self._health.cancel()
        for pool in self.pools.values():
            pool.close()
        for client in list(self.clients):
            client.transport.close()
        if self.router.session is not None:
            await self.router.session.close()
            self.router.session = None
        await asyncio.sleep(0)  # let the transports' closes run


async def serve(router: Router, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = True,
                sock: socket.socket | None = None, access_log: bool = False) -> FastRouter:
    """Serve ``router`` on host:port (or on ``sock``, a listening socket bound already: ``listener``, shared by a
    node's routers); ``await close()`` on the result drains."""
    fast = FastRouter(router, access_log)
    await fast.start(host, port, reuse_port, sock)
    return fast


def run_from_config(path: Path, host: str, port: int, api_keys: Path | None = None,
                    max_body_bytes: int = MAX_BODY_BYTES, limits: RouterLimits | None = None,
                    access_log: bool = False, sock: socket.socket | None = None,
                    metrics_sock: socket.socket | None = None) -> None:
    """``moxin router --config FILE``: a router outside Ray (Kubernetes). Reloads the file when it changes; a
    file that is not a valid table is logged and the last good table keeps serving. SIGTERM (or SIGINT) drains
    (``FastRouter.close``) and exits 0. ``sock``: a listening socket to serve instead of host:port, ``metrics_sock``:
    one to serve /metrics on besides (a worker of ``moxin router --workers``)."""
    import signal

    from orchestrator.runtime.keys import KeyRing
    from orchestrator.runtime.router import serve_metrics
    from orchestrator.runtime.secrets import engine_key

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        keys = KeyRing(api_keys) if api_keys is not None else None
        router = Router(limits=limits, keys=keys, engine_key=engine_key(), max_body_bytes=max_body_bytes,
                        health_checks=True)
        router.set_table(*read_config(path))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        fast = await serve(router, host, port, sock=sock, access_log=access_log)
        if metrics_sock is not None:
            await serve_metrics(router, metrics_sock)
        reload = asyncio.create_task(reload_forever(router, path))
        await stop.wait()
        log.info("draining: the port is closed, requests in flight have %g s", router.limits.drain_seconds)
        reload.cancel()
        await fast.close()
        log.info("drained")

    run_fast(main())
