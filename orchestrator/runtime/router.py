"""The OpenAI-compatible router's state and rules: the routing table (``balance``), the metrics, the limits of
``spec.router.RouterLimits`` (circuit breakers, token buckets per API key, the admission queue, backoff), the API
keys, the engine key, the active health checks, and the answers of /v1/models, /health, /metrics and
/moxin/routes. The data plane that serves it, /v1/chat/completions and /v1/completions included, is
``dataplane.FastRouter``: what a request goes through (retries, timeouts, streaming, drain) is described there.

Model name = deployment name. Every request is measured (TTFT, TPOT, end-to-end, tokens) in one schema, whatever
the engine (``Router._record``): this is the only source of request metrics for mlx-lm, which exports none.

It is the trust boundary between clients and engines. With API keys (``keys.KeyRing``) every /v1 request needs
``Authorization: Bearer <key>`` and sees only its key's deployments. Upstream, the router sends the engine key
(``secrets.engine_key``) and nothing of the client's headers.

The routing table comes from the controller (``RouterActor``, inside Ray) or from a JSON file
(``moxin router --config``, e.g. a Kubernetes ConfigMap): {"deployments": {name: [{name, url, requestModel,
weight, labels, side?}]}, "splits"?: {name: {"canaryPercent": W}}} (a rollout's canary share, see ``balance``).
A table that fails ``balance.check_deployments``/``check_splits`` never replaces the one in use. Several
routers can share one port (SO_REUSEPORT): the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.runtime.balance import (
    FAILED_COOLDOWN_S,
    Balancer,
    Endpoint,
    check_deployments,
    check_splits,
    parse_document,
)
from orchestrator.runtime.gateway import Admission, Breakers, TokenBuckets
from orchestrator.runtime.keys import ApiKey, KeyRing
from orchestrator.runtime.metrics import RouterMetrics
from orchestrator.runtime.relay import is_count
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
API_KEY = "moxin_api_key"
"""The handlers' request (a mapping, ``dataplane`` passes a dict): the ApiKey the request authenticated with."""


def error_json(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error in the OpenAI API's shape: clients (the openai SDK) show ``message`` and branch on ``code``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _sse_error(message: str, code: str = "upstream_stream_cut") -> bytes:
    """An error event in the middle of a stream (as vLLM sends them): the status line went out long ago."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _count(usage: Any, key: str, default: int) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if is_count(value) else default


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

    def _visible(self, request: Any) -> list[str]:
        key: ApiKey | None = request.get(API_KEY)
        return [name for name in sorted(self.balancer.table) if key is None or key.allows(name)]

    # -- handlers of the other paths (``dataplane`` answers the completions) -------------------------------------
    async def health(self, _request: Any) -> web.Response:
        if self.keys is not None:  # public: it must not name the deployments a key would hide
            return web.json_response({"status": "ok"})
        ready = {d: len(eps) for d, eps in self.balancer.table.items()}
        return web.json_response({"status": "ok", "readyReplicas": ready})

    async def routes(self, request: Any) -> web.Response:
        """The routing table as this router holds it, read-only: the replicas of each deployment the caller's key
        may see, with their labels (``moxin bench --from-status`` reads them). Upstream URLs are left out."""
        visible = self._visible(request)
        table = {d: [{"name": e.name, "side": e.side, "weight": e.weight, "labels": e.labels,
                      "inFlight": e.in_flight} for e in self.balancer.table.get(d, [])] for d in visible}
        splits = {d: {"canaryPercent": w} for d, w in self.balancer.splits.items() if d in visible}
        return web.json_response({"deployments": table, "splits": splits})

    async def export(self, _request: Any) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: Any) -> web.Response:
        table = self.balancer.table
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "moxin",
                 "ready_replicas": len(table.get(name, []))} for name in self._visible(request)]
        return web.json_response({"object": "list", "data": data})

    def unavailable(self, name: str, tried: set[str]) -> str:
        """The 503's message when no replica of ``name`` answered (``tried``: the replicas a try went to)."""
        now = time.monotonic()
        open_ = [e.name for e in self.balancer.table.get(name, []) if self.breakers.blocked(e.name, now)]
        why = (f"every ready replica failed ({len(tried)} tried)" if tried else
               f"every replica failed recently (circuit open: {', '.join(open_)})" if open_ else "no replica is ready")
        return f"deployment {name!r}: {why}; see `moxin status`"

    @staticmethod
    def _upstream_body(raw: bytes, body: dict[str, Any], ep: Endpoint, stream: bool, wants_usage: bool) -> bytes:
        """The body for the replica: the client's bytes when nothing needs to change, else re-encoded with the
        replica's model name and, for a stream, the usage chunk the router measures tokens from."""
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

    def _upstream_headers(self) -> dict[str, str]:
        """The health checks' headers: the engine key (the data plane writes its requests' own, ``auth_line``)."""
        headers = {hdrs.CONTENT_TYPE: "application/json"}
        if self.engine_key:
            headers[hdrs.AUTHORIZATION] = f"Bearer {self.engine_key}"
        return headers

    def _failure(self, ep: Endpoint, why: str, rid: str, counts: bool = True) -> None:
        """A try of ``ep`` failed: skip it for a while, count it towards its circuit (unless it was a 429)."""
        now = time.monotonic()
        ep.failed_until = now + FAILED_COOLDOWN_S
        log.info("request %s: replica %s failed (%s)", rid, ep.name, why)
        if counts and self.breakers.failure(ep.name, now):
            log.warning("replica %s: circuit open for %g s after %s", ep.name, self.breakers.cooldown_s, why)
            self.series(ep).circuit.set(1)

    def _success(self, ep: Endpoint) -> None:
        if self.breakers.circuits and self.breakers.success(ep.name):
            log.warning("replica %s: circuit closed (a probe succeeded)", ep.name)
            self.series(ep).circuit.set(0)

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
