"""The OpenAI-compatible router: /v1/models, /v1/chat/completions, /v1/completions (streamed or not), /metrics,
and /moxin/routes (the routing table's replicas and labels, read-only).

Model name = deployment name. Each request goes to one replica chosen by ``balance``. Towards replicas the
router keeps the limits of ``spec.router.RouterLimits``:

- a request that fails before any byte of the answer came back (connection refused or not made within the
  connect timeout, a 429 or 5xx, no first byte within the first-byte timeout) is retried on another replica, up
  to ``retry_attempts`` tries with a jittered exponential backoff between them; when no try is left the client
  gets the last replica's own 429/5xx, or, when no replica answered, a 503 (``service_unavailable``) or a 504
  (``gateway_timeout``, the last replica tried was too slow), with a JSON body in the OpenAI error shape;
- consecutive failures of a replica open its circuit (``gateway.Breakers``): it gets nothing for a cooldown, then
  one probe request; outside Ray the router also GETs each replica's /health (``check_health``);
- at most ``max_concurrent_requests`` completions at once, ``max_queued_requests`` waiting (past them: a 503 with
  Retry-After); with API keys, ``key_requests_per_second`` per key (past it: a 429 with Retry-After);
- every request has an id: the client's X-Request-Id or a new one, sent to the engine as X-Request-Id, returned
  to the client, and named in the router's log lines about the request;
- a stream is relayed a block of whole lines at a time, in one write per block the replica sent (``relay``
  rewrites the model name and finds the usage by byte search), and only once its first line has come, so that a
  retry is still possible until then; once it
  has begun, a replica that breaks off or stays silent past the idle timeout ends the client's stream with an
  SSE error event (``{"error": {..., "code": "upstream_stream_cut" | "upstream_idle_timeout"}}``) and no
  ``data: [DONE]``: what the openai SDK raises as an APIError, and what any client can tell from a finished
  stream. A non-streamed answer that breaks off is a 502;
- at most ``max_connections_per_replica`` connections per replica (aiohttp's per-host limit): requests past it
  wait for one;
- a client that goes away cancels its request here (aiohttp cancels the handler), and the upstream connection is
  closed at once: vLLM aborts a request whose connection closes, so no engine generates for nobody.

``serve`` returns a runner whose ``cleanup`` drains: the listening socket is closed first (the other routers on
the port take the new connections), requests in flight get ``drain_seconds`` to finish; a stream still going then
ends with an error event (code ``router_draining``) and no [DONE], a plain request is cut (connection closed).
``run_from_config`` does that on SIGTERM.

Every request is measured (TTFT, TPOT, end-to-end, tokens) in one schema, whatever the engine: this is the only
source of request metrics for mlx-lm, which exports none.

It is the trust boundary between clients and engines. With API keys (``keys.KeyRing``) every /v1 request needs
``Authorization: Bearer <key>`` and sees only its key's deployments. Bodies are bounded in size, parsed and
checked (``request_checks``) before a replica is picked: a client's mistake is a 4xx with an OpenAI-style error,
never a 500. Upstream, the router sends the engine key (``secrets.engine_key``) and nothing of the client's
headers.

The routing table comes from the controller (``RouterActor``, inside Ray) or from a JSON file
(``moxin router --config``, e.g. a Kubernetes ConfigMap): {"deployments": {name: [{name, url, requestModel,
weight, labels, side?}]}, "splits"?: {name: {"canaryPercent": W}}} (a rollout's canary share, see ``balance``).
A table that fails ``balance.check_deployments``/``check_splits`` never replaces the one in use. Several
routers can share one port (SO_REUSEPORT): the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import (
    ClientConnectionError,
    ClientError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    TCPConnector,
    hdrs,
    web,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.runtime.balance import (
    FAILED_COOLDOWN_S,
    Balancer,
    Endpoint,
    check_deployments,
    check_splits,
    parse_document,
)
from orchestrator.runtime.gateway import (
    REQUEST_ID_HEADER,
    Admission,
    Breakers,
    Overloaded,
    TokenBuckets,
    backoff_seconds,
    request_id,
)
from orchestrator.runtime.keys import ApiKey, KeyRing, bearer_token
from orchestrator.runtime.listener import BACKLOG
from orchestrator.runtime.metrics import RouterMetrics
from orchestrator.runtime.relay import Relay
from orchestrator.runtime.request_checks import Invalid, check_request, parse_body
from orchestrator.spec.defaults import REPLICA_HEADER, ROUTES_PATH
from orchestrator.spec.plan import METRIC_LABELS
from orchestrator.spec.router import RouterLimits

log = logging.getLogger(__name__)

BUSY = 429
"""An upstream answer that means 'not now' (nothing was sent to the client yet): another replica may take it. So do
5xx answers, which also count towards the replica's circuit breaker."""
MAX_BODY_BYTES = 4 * 2**20
"""Default request-body limit: far above any chat request, far below what would let one client fill memory."""
PUBLIC_PATHS = frozenset({"/health", "/metrics"})
"""Paths served without an API key (probes and Prometheus); everything else needs one when keys are set."""
RELOAD_S = 2.0
DRAIN_TAIL_S = 1.0
"""After the drain (``Router._drain``) has ended what was in flight, how long aiohttp's own shutdown may take."""

# Per-request slots: the ApiKey the request authenticated with; the status to count when it differs from the
# response's (a stream that broke off after its 200). Typed keys where aiohttp has them (3.13+).
_RequestKey = getattr(web, "RequestKey", None)
API_KEY: Any = _RequestKey("moxin_api_key", ApiKey) if _RequestKey else "moxin_api_key"
OUTCOME: Any = _RequestKey("moxin_outcome", int) if _RequestKey else "moxin_outcome"
REQUEST_ID: Any = _RequestKey("moxin_request_id", str) if _RequestKey else "moxin_request_id"
RAW_BODY: Any = _RequestKey("moxin_raw_body", bytes) if _RequestKey else "moxin_raw_body"


def error_json(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error in the OpenAI API's shape: clients (the openai SDK) show ``message`` and branch on ``code``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_json(message, kind, param, code), status=status, headers=headers)


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def _sse_error(message: str, code: str = "upstream_stream_cut") -> bytes:
    """An error event in the middle of a stream (as vLLM sends them): the status line went out long ago."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _count(usage: Any, key: str, default: int) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


class FirstByteTimeout(TimeoutError):
    """No byte of the answer within the first-byte timeout: nothing reached the client, another replica may try."""


class IdleTimeout(TimeoutError):
    """A stream that had begun went silent for longer than the idle timeout."""


async def _blocks(content: Any, first_s: float, idle_s: float) -> AsyncIterator[bytes]:
    """The upstream body in blocks of whole lines: all that has come, up to its last b"\\n", whatever the line
    length (``StreamReader.readline`` raises past 128 KiB); the rest waits for its newline. The last piece is
    yielded even without a newline. The first piece must come within ``first_s`` (FirstByteTimeout), each next
    one within ``idle_s`` of the last (IdleTimeout)."""
    rest = b""
    wait_s, late = first_s, FirstByteTimeout
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout_at(loop.time() + wait_s):
                piece = await content.readany()
        except TimeoutError:
            raise late from None
        if not piece:
            break
        wait_s, late = idle_s, IdleTimeout
        end = piece.rfind(b"\n")
        if end < 0:
            rest += piece
            continue
        block = rest + piece[:end + 1] if rest else piece[:end + 1] if end + 1 < len(piece) else piece
        rest = piece[end + 1:]
        yield block
    if rest:
        yield rest


class _SSEResponse(web.StreamResponse):
    """A stream whose headers go out with its first bytes, in one write."""

    _send_headers_immediately = False


@dataclass
class _Series:
    """One replica's labelled metric children, looked up once per routing table rather than per request."""

    requests: Any
    retries: Any
    in_flight: Any
    circuit: Any
    e2e: Any
    ttft: Any
    tpot: Any
    prompt_tokens: Any
    generation_tokens: Any
    by_code: dict[int, Any] = field(default_factory=dict)

    def code(self, status: int) -> Any:
        child = self.by_code.get(status)
        if child is None:
            child = self.by_code[status] = self.requests(str(status))
        return child


@dataclass
class _Failed:
    """One replica's try failed before any byte reached the client. ``slow``: it did not answer in time (a 504
    when no replica is left); ``answer``: the replica's own 429/5xx, given to the client when no try is left."""

    slow: bool = False
    answer: web.Response | None = None


class Router:
    def __init__(self, metrics: RouterMetrics | None = None, limits: RouterLimits | None = None, *,
                 keys: KeyRing | None = None, engine_key: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, health_checks: bool = False,
                 rng: random.Random | None = None) -> None:
        self.balancer = Balancer()
        self.has_table = False
        """A routing table has been taken. Until then a model request gets a retriable 503, not a 404: a router
        restarted beside others on a shared port may get connections before its first table."""
        self.metrics = metrics or RouterMetrics()
        self.limits = limits = limits or RouterLimits()
        self.keys = keys
        self.engine_key = engine_key
        self.max_body_bytes = max_body_bytes
        self.health_checks = health_checks and limits.health_check_interval_seconds > 0
        """Active health checks (``moxin router`` outside Ray): GET /health of every replica, ``check_health``."""
        self.rng = rng or random.Random()
        self.session: ClientSession | None = None
        self.breakers = Breakers(limits.circuit_failure_threshold, limits.circuit_cooldown_seconds)
        self.buckets = TokenBuckets(limits.key_requests_per_second, limits.key_bucket_size) \
            if limits.key_requests_per_second > 0 else None
        self.admission = Admission(limits.max_concurrent_requests, limits.max_queued_requests,
                                   limits.queue_timeout_seconds)
        self._series: dict[str, _Series] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        """The requests being handled: the drain waits for them, then cancels what is left."""
        self._background: set[asyncio.Task[Any]] = set()
        self._drain_over = False

    def set_table(self, table: dict[str, list[dict[str, Any]]],
                  splits: dict[str, dict[str, float]] | None = None) -> None:
        """Replace the routing table and its rollout splits ({name: {"canaryPercent": W}}); ValueError (and the
        old table stays) when they are not valid."""
        self.balancer.update(check_deployments(table), check_splits(splits or {}, table))
        names = {e.name for eps in self.balancer.table.values() for e in eps}
        self.breakers.forget(names)
        self._series = {}
        self.has_table = True

    def series(self, ep: Endpoint) -> _Series:
        """The replica's labelled metric children (cached until the table changes)."""
        got = self._series.get(ep.name)
        if got is None:
            m, labels = self.metrics, ep.labels
            own = {**labels, "replica": ep.name}
            got = self._series[ep.name] = _Series(
                lambda code: m.requests.labels(**labels, code=code), m.retries.labels(**labels),
                m.in_flight.labels(**own), m.circuit_open.labels(**own), m.e2e.labels(**labels),
                m.ttft.labels(**labels), m.tpot.labels(**labels), m.prompt_tokens.labels(**labels),
                m.generation_tokens.labels(**labels))
        return got

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._guard])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_post("/v1/completions", self.proxy)
        app.router.add_get("/metrics", self.export)
        app.router.add_get("/health", self.health)
        app.router.add_get(ROUTES_PATH, self.routes)
        app.on_startup.append(self._open)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._close)
        return app

    def runner(self) -> web.AppRunner:
        """The app's runner: its ``cleanup`` drains (``serve``); a client that disconnects cancels its handler."""
        return web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=DRAIN_TAIL_S)

    async def _drain(self, _app: web.Application) -> None:
        """On shutdown, once the listening socket is closed (aiohttp closes it first): the requests in flight get
        ``drain_seconds`` to finish, then are cancelled (``_stream`` ends a stream with an error event). aiohttp's
        own shutdown timeout would give them that time twice: it waits, then cancels only their request body."""
        pending = set(self._handlers)
        if pending:
            log.info("draining %d request(s) for up to %g s", len(pending), self.limits.drain_seconds)
            _, pending = await asyncio.wait(pending, timeout=self.limits.drain_seconds)
        self._drain_over = True
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain: %d request(s) still in flight after %g s were cut", len(pending),
                        self.limits.drain_seconds)
            await asyncio.wait(pending, timeout=DRAIN_TAIL_S)

    async def _open(self, _app: web.Application) -> None:
        # The first-byte and idle timeouts are the router's own (``_forward``, ``_lines``): aiohttp's sock_read
        # would also time the wait for headers, which engines send before their prefill.
        # Connections to replicas are kept alive and reused (aiohttp's pool, per host and port).
        connect_s = self.limits.connect_timeout_seconds
        self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=connect_s),
                                     connector=TCPConnector(limit=0,
                                                            limit_per_host=self.limits.max_connections_per_replica,
                                                            keepalive_timeout=60),
                                     skip_auto_headers=("User-Agent",))
        if self.health_checks:
            task = asyncio.get_running_loop().create_task(self.check_health_forever())
            self._background.add(task)

    async def _close(self, _app: web.Application) -> None:
        for task in self._background:
            task.cancel()
        if self.session:
            await self.session.close()

    # -- active health checks (outside Ray) -------------------------------------------------------------------
    async def check_health(self) -> None:
        """One round: GET /health of every replica at once; a replica that fails is marked down (it gets requests
        only when every replica of its deployment is down), one that passes is marked up."""
        eps = [e for eps in self.balancer.table.values() for e in eps]
        results = await asyncio.gather(*(self._healthy(e) for e in eps))
        for ep, ok in zip(eps, results, strict=True):
            if ep.down == ok:
                log.warning("replica %s (%s) is %s: its /health check %s", ep.name, ep.url,
                            "up again" if ok else "down", "passed" if ok else "failed")
            ep.down = not ok

    async def _healthy(self, ep: Endpoint) -> bool:
        assert self.session is not None
        try:
            async with asyncio.timeout(self.limits.health_check_timeout_seconds):
                async with self.session.get(ep.url + "/health", headers=self._upstream_headers()) as resp:
                    await resp.read()
                    return resp.status == 200
        except (ClientError, TimeoutError, OSError):
            return False

    async def check_health_forever(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # never let the checks die: the last marks stay
                log.exception("health check round failed")
            await asyncio.sleep(self.limits.health_check_interval_seconds)

    # -- the boundary: API key, error shape, per-key counter --------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        rid = request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
        key: ApiKey | None = None
        if self.keys is not None and request.path not in PUBLIC_PATHS:
            token = bearer_token(request.headers.getall(hdrs.AUTHORIZATION, []))
            key = self.keys.identify(token) if token is not None else None
            if key is None:
                self.metrics.key_requests.labels(key="", code="401").inc()
                return _error(401, "a valid API key is required: send Authorization: Bearer <key>",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer", REQUEST_ID_HEADER: rid})
            request[API_KEY] = key
            wait_s = self.buckets.take(key.name, time.monotonic()) if self.buckets is not None else 0.0
            if wait_s:
                self.metrics.key_requests.labels(key=key.name, code="429").inc()
                rate = self.limits.key_requests_per_second
                return _error(429, f"this API key is over its rate limit of {rate:g} requests/s; retry after "
                              f"{wait_s:.2f} s", "rate_limit_error", code="rate_limit_exceeded",
                              headers={hdrs.RETRY_AFTER: str(math.ceil(wait_s)), REQUEST_ID_HEADER: rid})
        code = 499  # unless something below says otherwise: the client went away
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            code = request.get(OUTCOME, response.status)
        except web.HTTPException as exc:  # aiohttp's own answers: no such path (404), wrong method (405), ...
            if exc.status < 400:
                raise
            code = exc.status
            allow = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
            response = _error(exc.status, f"{request.method} {_short(request.path)}: {exc.reason}", headers=allow)
        except Exception:
            code = 500
            log.exception("router error on %s %s (request %s)", request.method, _short(request.path), rid)
            response = _error(500, "the router failed on this request (a bug: see its log)", "server_error")
        finally:
            self._handlers.discard(task)  # type: ignore[arg-type]
            if key is not None:
                self.metrics.key_requests.labels(key=key.name, code=str(code)).inc()
        if not response.prepared:  # a stream sent its own (``_stream``)
            response.headers[REQUEST_ID_HEADER] = rid
        return response

    def _visible(self, request: web.Request) -> list[str]:
        key: ApiKey | None = request.get(API_KEY)
        return [name for name in sorted(self.balancer.table) if key is None or key.allows(name)]

    async def _read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        limit = self.max_body_bytes

        def too_large() -> web.Response:
            return _error(413, f"the request body is over the router's limit of {limit} bytes", param=None,
                          code="request_too_large")

        if request.content_length is not None and request.content_length > limit:
            return too_large()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length: aiohttp counts
            return too_large()
        request[RAW_BODY] = raw
        body = parse_body(raw)
        if isinstance(body, Invalid):
            return _error(400, body.message, param=body.param)
        return body

    # -- handlers --------------------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        if self.keys is not None:  # public: it must not name the deployments a key would hide
            return web.json_response({"status": "ok"})
        ready = {d: len(eps) for d, eps in self.balancer.table.items()}
        return web.json_response({"status": "ok", "readyReplicas": ready})

    async def routes(self, request: web.Request) -> web.Response:
        """The routing table as this router holds it, read-only: the replicas of each deployment the caller's key
        may see, with their labels (``moxin bench --from-status`` reads them). Upstream URLs are left out."""
        visible = self._visible(request)
        table = {d: [{"name": e.name, "side": e.side, "weight": e.weight, "labels": e.labels,
                      "inFlight": e.in_flight} for e in self.balancer.table.get(d, [])] for d in visible}
        splits = {d: {"canaryPercent": w} for d, w in self.balancer.splits.items() if d in visible}
        return web.json_response({"deployments": table, "splits": splits})

    async def export(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        table = self.balancer.table
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "moxin",
                 "ready_replicas": len(table.get(name, []))} for name in self._visible(request)]
        return web.json_response({"object": "list", "data": data})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        invalid = check_request(request.path, body)
        if invalid is not None:
            return _error(400, invalid.message, param=invalid.param)
        name = body["model"]
        if not self.has_table:
            return _error(503, "the router has no routing table yet (it is starting); retry", "service_unavailable",
                          code="router_starting", headers={"Retry-After": "1"})
        if name not in self._visible(request):  # a deployment the key may not use does not exist, for it
            return _error(404, f"model {_short(name)!r} not found; served models: {self._visible(request)}",
                          param="model", code="model_not_found")
        try:
            await self.admission.enter()
        except Overloaded:
            request[OUTCOME] = 503
            self.metrics.requests.labels(**({k: "" for k in METRIC_LABELS} | {"deployment": name}), code="503").inc()
            limits = self.limits
            return _error(503, f"the router is at its limit of {limits.max_concurrent_requests} concurrent requests "
                          f"with {limits.max_queued_requests} queued; retry later", "service_unavailable",
                          code="router_overloaded", headers={hdrs.RETRY_AFTER: "1"})
        try:
            return await self._route(request, body, name)
        finally:
            self.admission.leave()

    async def _route(self, request: web.Request, body: dict[str, Any], name: str) -> web.StreamResponse:
        """Up to ``retry_attempts`` replicas, with backoff between tries, until one answers."""
        start = time.monotonic()
        tried: set[str] = set()
        pinned = request.headers.get(REPLICA_HEADER)
        if pinned is not None:  # a measurement of one replica (moxin bench --replica): no other takes the request
            names = [e.name for e in self.balancer.table.get(name, [])]
            if pinned not in names:
                return _error(404, f"deployment {name!r} has no ready replica {_short(pinned)!r}; ready: {names}",
                              param=REPLICA_HEADER, code="replica_not_found")
            tried = set(names) - {pinned}
        side = None if pinned is not None else self.balancer.side(name)  # once per request: retries keep it
        stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        payloads: dict[str, bytes] = {}  # by the replica's request model: one encoding per request
        failed, last = _Failed(), None
        limits = self.limits
        for attempt in range(limits.retry_attempts):
            now = time.monotonic()
            blocked = tried | {e.name for e in self.balancer.table.get(name, [])
                               if self.breakers.blocked(e.name, now)} if self.breakers.circuits else tried
            ep = self.balancer.pick(name, blocked, now, side)
            if ep is None:
                break
            if attempt:
                await asyncio.sleep(backoff_seconds(attempt, limits.retry_backoff_seconds,
                                                    limits.retry_backoff_max_seconds, self.rng))
            tried.add(ep.name)
            payload = payloads.get(ep.request_model)
            if payload is None:
                try:
                    payload = payloads[ep.request_model] = self._upstream_body(request, body, ep, stream, wants_usage)
                except (RecursionError, ValueError):
                    return _error(400, "the body is nested too deeply to forward")
            answer = await self._forward(request, payload, stream, name, ep, start, wants_usage)
            if not isinstance(answer, _Failed):
                return answer
            failed, last = answer, ep
            self.series(ep).retries.inc()
        if failed.answer is not None and last is not None:  # the last replica's own 429/5xx, as it was
            request[OUTCOME] = failed.answer.status
            self._record(last, failed.answer.status, start, None, None, 0)
            return failed.answer
        status = 504 if failed.slow else 503
        self.metrics.requests.labels(**({k: "" for k in METRIC_LABELS} | {"deployment": name}), code=str(status)).inc()
        request[OUTCOME] = status
        if failed.slow:
            return _error(504, f"deployment {name!r}: no replica answered within "
                          f"{limits.first_byte_timeout_seconds:g} s ({len(tried)} tried); retry later",
                          "gateway_timeout", code="upstream_timeout")
        return _error(503, self.unavailable(name, tried), "service_unavailable")

    def unavailable(self, name: str, tried: set[str]) -> str:
        """The 503's message when no replica of ``name`` answered (``tried``: the replicas a try went to)."""
        now = time.monotonic()
        open_ = [e.name for e in self.balancer.table.get(name, []) if self.breakers.blocked(e.name, now)]
        why = (f"every ready replica failed ({len(tried)} tried)" if tried else
               f"every replica failed recently (circuit open: {', '.join(open_)})" if open_ else "no replica is ready")
        return f"deployment {name!r}: {why}; see `moxin status`"

    @staticmethod
    def _upstream_body(request: web.Request, body: dict[str, Any], ep: Endpoint, stream: bool,
                       wants_usage: bool) -> bytes:
        """The body for the replica: the client's bytes when nothing needs to change, else re-encoded with the
        replica's model name and, for a stream, the usage chunk the router measures tokens from."""
        raw: bytes = request[RAW_BODY]
        if ep.request_model == body["model"] and (not stream or wants_usage):
            return raw
        if ep.request_model == body["model"] and "stream_options" not in body:
            end = raw.rstrip()
            if end.endswith(b"}") and body:  # a non-empty object: add the key before its closing brace
                return end[:-1] + b',"stream_options":{"include_usage":true}}'
        upstream = {**body, "model": ep.request_model}
        if stream:
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return json.dumps(upstream).encode()

    def _upstream_headers(self, rid: str | None = None) -> dict[str, str]:
        """Only the router's own: the engine key replaces whatever credentials the client sent; the request id."""
        headers = {hdrs.CONTENT_TYPE: "application/json"}
        if self.engine_key:
            headers[hdrs.AUTHORIZATION] = f"Bearer {self.engine_key}"
        if rid is not None:
            headers[REQUEST_ID_HEADER] = rid
        return headers

    def _failure(self, ep: Endpoint, why: str, request: web.Request, counts: bool = True) -> None:
        """A try of ``ep`` failed: skip it for a while, count it towards its circuit (unless it was a 429)."""
        now = time.monotonic()
        ep.failed_until = now + FAILED_COOLDOWN_S
        log.info("request %s: replica %s failed (%s)", request[REQUEST_ID], ep.name, why)
        if counts and self.breakers.failure(ep.name, now):
            log.warning("replica %s: circuit open for %g s after %s", ep.name, self.breakers.cooldown_s, why)
            self.series(ep).circuit.set(1)

    def _success(self, ep: Endpoint) -> None:
        if self.breakers.circuits and self.breakers.success(ep.name):
            log.warning("replica %s: circuit closed (a probe succeeded)", ep.name)
            self.series(ep).circuit.set(0)

    async def _forward(self, request: web.Request, payload: bytes, stream: bool, name: str, ep: Endpoint,
                       start: float, wants_usage: bool) -> web.StreamResponse | _Failed:
        """Send to one replica. ``_Failed``: it failed before any byte reached the client, try another. The
        upstream response is closed on every way out but a complete answer: a client gone (the handler cancelled)
        or a timeout closes the engine's connection, and the engine aborts the request."""
        assert self.session is not None
        series = self.series(ep)
        ep.in_flight += 1
        series.in_flight.inc()
        self.breakers.begin(ep.name, time.monotonic())
        settled = False  # the breaker heard how this try went
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.first_byte_timeout_seconds
        resp: ClientResponse | None = None
        relayed = False  # once _stream has it, _stream records how it ended
        try:
            try:  # the wait for a free connection, the connect, the headers: all before the first byte
                async with asyncio.timeout_at(deadline):
                    resp = await self.session.post(ep.url + request.path, data=payload,
                                                   headers=self._upstream_headers(request[REQUEST_ID]))
            except (ClientConnectionError, TimeoutError) as exc:
                slow = isinstance(exc, TimeoutError) and not isinstance(exc, ClientConnectionError)
                settled = True
                self._failure(ep, "no first byte in time" if slow else f"connection: {exc}", request)
                return _Failed(slow=slow)
            if resp.status == BUSY or resp.status >= 500:
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await resp.read()
                except (ClientError, TimeoutError):
                    raw = b""
                settled = True
                self._failure(ep, f"answered {resp.status}", request, counts=resp.status != BUSY)
                headers = {k: v for k, v in resp.headers.items() if k in (hdrs.RETRY_AFTER, hdrs.CONTENT_TYPE)}
                return _Failed(answer=web.Response(body=raw, status=resp.status, headers=headers))
            if stream and resp.status == 200:
                left_s = max(deadline - loop.time(), 0.0)
                relayed = True
                answer = await self._stream(request, resp, name, ep, start, wants_usage, left_s)
                settled = True
                if isinstance(answer, _Failed):
                    self._failure(ep, "no first byte in time" if answer.slow else "broke off before any byte",
                                  request)
                else:
                    self._success(ep)
                return answer
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await resp.read()
            except TimeoutError:  # nothing was sent: another replica may answer in time
                settled = True
                self._failure(ep, "no answer in time", request)
                return _Failed(slow=True)
            except ClientError:
                request[OUTCOME] = 502
                self._record(ep, 502, start, None, None, 0)
                return _error(502, f"the replica of {name!r} broke off its answer", "server_error",
                              code="upstream_error")
            settled = True
            self._success(ep)
            out, usage = raw, None
            if resp.status == 200:
                out, usage = self._plain_answer(raw, name)
            self._record(ep, resp.status, start, None, usage, 0)
            return web.Response(body=out, status=resp.status, content_type=resp.content_type or "application/json")
        except asyncio.CancelledError:  # the client went away (or the drain ran out) while the replica worked
            if not relayed:
                request[OUTCOME] = 499
                self._record(ep, 499, start, None, None, 0)
            raise
        finally:
            if not settled:
                self.breakers.release(ep.name)
            if resp is not None:
                resp.close()  # a no-op after a complete answer (the connection went back to the pool)
            ep.in_flight -= 1
            series.in_flight.dec()

    @staticmethod
    def _plain_answer(raw: bytes, name: str) -> tuple[bytes, Any]:
        """A non-streamed answer with the deployment's name for its model, and its usage."""
        try:
            data = json.loads(raw)
        except ValueError:
            return raw, None
        if not isinstance(data, dict):
            return raw, None
        if data.get("model") != name:
            return json.dumps({**data, "model": name}).encode(), data.get("usage")
        return raw, data.get("usage")

    async def _stream(self, request: web.Request, resp: ClientResponse, name: str, ep: Endpoint, start: float,
                      wants_usage: bool, first_s: float) -> web.StreamResponse | _Failed:
        """Relay the replica's SSE stream a block of whole lines at a time (one write per block the replica sent),
        rewriting the model name and measuring tokens (``relay.Relay``). Nothing is sent to the client before the
        first line: until then a replica that breaks or stays silent for ``first_s`` is another replica's turn
        (``_Failed``, as ``_forward``'s). A stream that breaks off, goes idle or ends without [DONE] gets an
        error event and counts as 502, not 200."""
        out = _SSEResponse(status=200, headers={hdrs.CONTENT_TYPE: "text/event-stream", hdrs.CACHE_CONTROL: "no-cache",
                                                REQUEST_ID_HEADER: request[REQUEST_ID]})
        relay = Relay(name, ep.request_model, wants_usage)
        first: float | None = None
        code = 499  # until the stream is over: a cancelled handler is a client that went away
        cut: str | None = None  # why the stream ended early: the code of its error event
        blocks = _blocks(resp.content, first_s, self.limits.idle_timeout_seconds)
        ended = False  # the last block went out with the end of the chunked body
        try:
            while True:
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    break
                except (ClientError, TimeoutError) as exc:
                    if not out.prepared:  # nothing sent yet: retry elsewhere
                        code = -1
                        return _Failed(slow=isinstance(exc, FirstByteTimeout))
                    cut = "upstream_idle_timeout" if isinstance(exc, IdleTimeout) else "upstream_stream_cut"
                    break  # bytes were sent, so no retry
                data, found = relay.feed(block)
                if found and first is None:
                    first = time.monotonic()
                if not out.prepared:
                    await out.prepare(request)
                if relay.done and resp.content.at_eof():  # the replica's answer is over: one write ends it all
                    ended = True
                    await out.write_eof(data)
                    break
                if data:
                    await out.write(data)
            if not out.prepared:
                await out.prepare(request)
            code = 200 if relay.done and cut is None else 502
            if code != 200:
                why = (f"sent nothing for {self.limits.idle_timeout_seconds:g} s" if cut == "upstream_idle_timeout"
                       else "broke off the stream before it finished")
                log.warning("request %s: the replica %s of %r %s", request[REQUEST_ID], ep.name, name, why)
                await out.write(_sse_error(f"the replica of {name!r} {why}", cut or "upstream_stream_cut"))
            if not ended:
                await out.write_eof()
        except ConnectionResetError:
            code = 499  # the client went away
        except asyncio.CancelledError:
            if self._drain_over and out.prepared:  # not the client gone: this router's drain ran out
                code = 503
                with contextlib.suppress(ConnectionResetError):
                    await out.write(_sse_error(f"the router shut down before the stream of {name!r} finished; "
                                               "retry: another router takes new requests", "router_draining"))
                    await out.write_eof()
            raise
        finally:
            await blocks.aclose()
            if code >= 0:
                request[OUTCOME] = code
                self._record(ep, code, start, first, relay.usage, relay.chunks)
        return out

    def _record(self, ep: Endpoint, code: int, start: float, first: float | None, usage: Any,
                chunks: int) -> None:
        series = self.series(ep)
        end = time.monotonic()
        series.code(code).inc()
        if code != 200:
            return
        series.e2e.observe(end - start)
        generated = _count(usage, "completion_tokens", chunks)
        series.prompt_tokens.inc(_count(usage, "prompt_tokens", 0))
        series.generation_tokens.inc(generated)
        if first is not None:
            series.ttft.observe(first - start)
            if generated > 1:
                series.tpot.observe((end - first) / (generated - 1))


async def serve(router: Router, host: str, port: int, reuse_port: bool = True,
                sock: socket.socket | None = None) -> web.AppRunner:
    """Serve ``router`` on host:port, or on ``sock``, a listening socket already bound (``listener``: shared by
    the routers of a node). The runner's ``cleanup`` drains: it closes the listening socket (its copy of it: the
    other holders of a shared one keep accepting), waits up to ``drain_seconds`` for the requests in flight,
    cancels what is left, then closes the upstream session. A client that disconnects cancels its handler
    (``handler_cancellation``), which closes its upstream connection."""
    runner = router.runner()
    await runner.setup()
    site = (web.SockSite(runner, sock, backlog=BACKLOG) if sock is not None
            else web.TCPSite(runner, host, port, reuse_port=reuse_port))
    await site.start()
    return runner


async def serve_metrics(router: Router, sock: socket.socket) -> web.AppRunner:
    """Serve only ``router``'s /metrics on ``sock``: a worker of ``moxin router --workers`` (``workers``), whose
    parent scrapes every worker there."""
    app = web.Application()
    app.router.add_get("/metrics", router.export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def read_config(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, float]]]:
    """The deployments and splits of a routing-table file."""
    return parse_document(json.loads(path.read_text()))


def run_from_config(path: Path, host: str, port: int, api_keys: Path | None = None,
                    max_body_bytes: int = MAX_BODY_BYTES, limits: RouterLimits | None = None,
                    sock: socket.socket | None = None, metrics_sock: socket.socket | None = None) -> None:
    """``moxin router --config FILE``: a router outside Ray (Kubernetes). Reloads the file when it changes; a
    file that is not a valid table is logged and the last good table keeps serving. SIGTERM (or SIGINT) drains
    (``serve``) and exits 0. ``sock``: a listening socket to serve instead of host:port, ``metrics_sock``: one to
    serve /metrics on besides (a worker of ``moxin router --workers``)."""
    import signal

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
        runner = await serve(router, host, port, sock=sock)
        if metrics_sock is not None:
            await serve_metrics(router, metrics_sock)
        reload = asyncio.create_task(reload_forever(router, path))
        await stop.wait()
        log.info("draining: the port is closed, requests in flight have %g s", router.limits.drain_seconds)
        await runner.cleanup()
        reload.cancel()
        log.info("drained")

    run_fast(main())


def run_fast(main: Awaitable[None]) -> None:
    """Run on uvloop when it is installed (a faster event loop: fewer system calls per write), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]


async def reload_forever(router: Router, path: Path, every_s: float = RELOAD_S) -> None:
    """Watch the routing-table file; a new valid table replaces the old one, a broken one is logged and ignored
    (a ConfigMap being swapped, a hand edit gone wrong): the router keeps serving."""
    seen = path.stat().st_mtime_ns
    while True:
        await asyncio.sleep(every_s)
        try:
            stamp = path.stat().st_mtime_ns
            if stamp == seen:
                continue
            seen = stamp
            router.set_table(*read_config(path))
            log.info("routing table reloaded from %s", path)
        except (OSError, ValueError) as exc:
            log.error("routing table %s not loaded, the last good one keeps serving: %s", path, exc)
