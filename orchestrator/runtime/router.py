"""The OpenAI-compatible router: /v1/models, /v1/chat/completions, /v1/completions (streamed or not), /metrics,
and /moxin/routes (the routing table's replicas and labels, read-only).

Model name = deployment name. Each request goes to one replica chosen by ``balance``; a request whose connection
fails before any byte came back is retried on another replica; no ready replica -> 503 with the reason. Every
request is measured (TTFT, TPOT, end-to-end, tokens) in one schema, whatever the engine: this is the only source
of request metrics for mlx-lm, which exports none.

The routing table comes from the controller (``RouterActor``, inside Ray) or from a JSON file
(``moxin router --config``, e.g. a Kubernetes ConfigMap): {"deployments": {name: [{name, url, requestModel,
weight, labels}]}}. Several routers can share one port (SO_REUSEPORT): the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.runtime.balance import FAILED_COOLDOWN_S, Balancer, Endpoint, parse_table
from orchestrator.spec.plan import METRIC_LABELS
from orchestrator.runtime.metrics import RouterMetrics

RETRY_STATUSES = {502, 503}
"""Upstream answers that mean 'not me, not now' (nothing was sent to the client yet): try another replica."""


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _has_content(chunk: dict[str, Any]) -> bool:
    for c in chunk.get("choices") or []:
        delta = c.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or c.get("text"):
            return True
    return False


class Router:
    def __init__(self, metrics: RouterMetrics | None = None, connect_timeout_s: float = 5.0) -> None:
        self.balancer = Balancer()
        self.metrics = metrics or RouterMetrics()
        self.connect_timeout_s = connect_timeout_s
        self.session: ClientSession | None = None

    def set_table(self, table: dict[str, list[dict[str, Any]]]) -> None:
        self.balancer.update(table)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_post("/v1/completions", self.proxy)
        app.router.add_get("/metrics", self.export)
        app.router.add_get("/health", self.health)
        app.router.add_get("/moxin/routes", self.routes)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
                                     connector=TCPConnector(limit=0))

    async def _close(self, _app: web.Application) -> None:
        if self.session:
            await self.session.close()

    async def health(self, _request: web.Request) -> web.Response:
        ready = {d: len(eps) for d, eps in self.balancer.table.items()}
        return web.json_response({"status": "ok", "readyReplicas": ready})

    async def routes(self, _request: web.Request) -> web.Response:
        """The routing table as this router holds it, read-only: each deployment's replicas with their labels
        (``moxin bench --from-status`` reads them). Upstream URLs are left out."""
        table = {d: [{"name": e.name, "weight": e.weight, "labels": e.labels, "inFlight": e.in_flight} for e in eps]
                 for d, eps in sorted(self.balancer.table.items())}
        return web.json_response({"deployments": table})

    async def export(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, _request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "moxin",
                 "ready_replicas": len(eps)} for name, eps in sorted(self.balancer.table.items())]
        return web.json_response({"object": "list", "data": data})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except Exception:
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        name = body.get("model")
        if name not in self.balancer.table:
            served = sorted(self.balancer.table)
            return _error(404, f"model {name!r} is not served here; served models: {served}", "invalid_request_error")
        start = time.monotonic()
        tried: set[str] = set()
        while True:
            ep = self.balancer.pick(name, tried, time.monotonic())
            if ep is None:
                labels = {k: "" for k in METRIC_LABELS} | {"deployment": name}
                self.metrics.requests.labels(**labels, code="503").inc()
                why = "no replica is ready" if not tried else f"every ready replica failed ({len(tried)} tried)"
                return _error(503, f"deployment {name!r}: {why}; see `moxin status`", "service_unavailable")
            tried.add(ep.name)
            answer = await self._forward(request, body, name, ep, start)
            if answer is not None:
                return answer
            self.metrics.retries.labels(**ep.labels).inc()

    async def _forward(self, request: web.Request, body: dict[str, Any], name: str, ep: Endpoint,
                       start: float) -> web.StreamResponse | None:
        """Send to one replica. None: it failed before any byte reached the client (try another)."""
        assert self.session is not None
        stream = bool(body.get("stream"))
        upstream = {**body, "model": ep.request_model}
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        in_flight = self.metrics.in_flight.labels(**ep.labels, replica=ep.name)
        ep.in_flight += 1
        in_flight.inc()
        try:
            try:
                resp = await self.session.post(ep.url + request.path, json=upstream)
            except (ClientConnectionError, asyncio.TimeoutError):
                ep.failed_until = time.monotonic() + FAILED_COOLDOWN_S
                return None
            async with resp:
                if resp.status in RETRY_STATUSES:
                    ep.failed_until = time.monotonic() + FAILED_COOLDOWN_S
                    return None
                if stream and resp.status == 200:
                    return await self._stream(request, resp, name, ep, start, wants_usage)
                raw = await resp.read()
                out = raw
                usage = None
                if resp.status == 200:
                    try:
                        data = json.loads(raw)
                        usage = data.get("usage")
                        if data.get("model") != name:
                            data["model"] = name
                            out = json.dumps(data).encode()
                    except ValueError:
                        pass
                self._record(ep, resp.status, start, None, usage, 0)
                return web.Response(body=out, status=resp.status,
                                    content_type=resp.content_type or "application/json")
        finally:
            ep.in_flight -= 1
            in_flight.dec()

    async def _stream(self, request: web.Request, resp: Any, name: str, ep: Endpoint, start: float,
                      wants_usage: bool) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)
        first: float | None = None
        chunks = 0
        usage = None
        code = 200
        try:
            async for line in resp.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    try:
                        chunk = json.loads(line[6:])
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict):
                        if _has_content(chunk):
                            chunks += 1
                            first = first or time.monotonic()
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                            if not chunk.get("choices") and not wants_usage:
                                continue  # the usage-only chunk the router asked for, not the client
                        if chunk.get("model") != name:
                            chunk["model"] = name
                            line = b"data: " + json.dumps(chunk).encode() + b"\n"
                await out.write(line)
            await out.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            code = 499  # the client went away
            raise
        except ClientConnectionError:
            code = 502  # the replica died mid-stream: bytes were sent, so no retry
        finally:
            self._record(ep, code, start, first, usage, chunks)
        return out

    def _record(self, ep: Endpoint, code: int, start: float, first: float | None, usage: dict | None,
                chunks: int) -> None:
        m, labels = self.metrics, ep.labels
        end = time.monotonic()
        m.requests.labels(**labels, code=str(code)).inc()
        if code != 200:
            return
        m.e2e.labels(**labels).observe(end - start)
        generated = (usage or {}).get("completion_tokens", chunks) or 0
        m.prompt_tokens.labels(**labels).inc((usage or {}).get("prompt_tokens", 0) or 0)
        m.generation_tokens.labels(**labels).inc(generated)
        if first is not None:
            m.ttft.labels(**labels).observe(first - start)
            if generated > 1:
                m.tpot.labels(**labels).observe((end - first) / (generated - 1))


async def serve(router: Router, host: str, port: int, reuse_port: bool = True) -> web.AppRunner:
    runner = web.AppRunner(router.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    return runner


def read_config(path: Path) -> dict[str, list[dict[str, Any]]]:
    return parse_table(json.loads(path.read_text()))


def run_from_config(path: Path, host: str, port: int) -> None:
    """``moxin router --config FILE``: a router outside Ray (Kubernetes). Reloads the file when it changes."""

    async def main() -> None:
        router = Router()
        router.set_table(read_config(path))
        await serve(router, host, port)
        seen = path.stat().st_mtime
        while True:
            await asyncio.sleep(2)
            try:
                if path.stat().st_mtime != seen:
                    seen = path.stat().st_mtime
                    router.set_table(read_config(path))
            except (OSError, ValueError, KeyError):
                pass  # a ConfigMap being swapped: keep the last good table

    asyncio.run(main())
