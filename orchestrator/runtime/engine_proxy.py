"""The authenticating reverse proxy in front of an engine that checks no key itself (mlx-lm).

Such an engine listens on loopback only; the replica runs this proxy on the public port it reports, so the engine
answers only the holders of the engine key: the router and the replica's own probes. Every request but the health
check must carry ``Authorization: Bearer <key>`` (compared in constant time); anything else gets a 401 in the
OpenAI error shape and never reaches the engine. Requests pass through with their method, path, query and body;
responses come back unchanged (status, headers, body bytes as they arrive, so server-sent events stream).

The replica runs it in a thread of its own process (``serve_in_thread``): the proxy's socket lives and dies with the
replica's process, however that process ends, and nothing outlives it. vLLM checks the key itself and needs none.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from dataclasses import dataclass, field

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web

# Per-connection headers (RFC 9110 7.6.1) are not forwarded; aiohttp frames each hop's body itself.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Host", "Content-Length"))
MAX_BODY_BYTES = 64 * 2**20  # the router's own limit
SHUTDOWN_S = 2.0
"""How long a stopping proxy lets requests in flight finish (the engine behind it is being stopped too)."""


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def authorized(header: str | None, key: str) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


@dataclass
class EngineProxy:
    upstream: str
    """Base URL of the engine on loopback; the replica points it at each new engine process."""
    key: str
    open_paths: frozenset[str] = frozenset({"/health"})
    """Paths answered without the key (the engine's health check)."""
    connect_timeout_s: float = 5.0
    session: ClientSession | None = field(default=None, init=False)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        # auto_decompress off: the body goes back byte for byte, with the engine's own Content-Encoding.
        self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
                                     connector=TCPConnector(limit=0), auto_decompress=False)

    async def _close(self, _app: web.Application) -> None:
        if self.session:
            await self.session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if request.path not in self.open_paths and not authorized(request.headers.get("Authorization"), self.key):
            return _error(401, "missing or wrong engine key (Authorization: Bearer ...)", "authentication_error")
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"}  # the key goes no further
        body = await request.read()
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                            headers=headers, data=body or None,
                                            allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        response.headers.add(k, v)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientConnectionError as e:
            if response is not None and response.prepared:
                raise  # mid-body: the client sees the connection end, as it would from the engine
            # Before any byte: the router tries another replica on a 502.
            return _error(502, f"engine not reachable: {type(e).__name__}", "upstream_error")


class AppThread:
    """An aiohttp application served on its own event loop in a daemon thread of this process."""

    def __init__(self, app: web.Application, host: str, port: int, start_timeout_s: float = 10.0) -> None:
        self.host, self.port = host, port
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: Exception | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name=f"http-{host}:{port}", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout_s):
            raise TimeoutError(f"HTTP server did not start on {host}:{port} within {start_timeout_s} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_S)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, self.host, self.port).start())
        except Exception as e:  # reported to the starting thread, which raises it
            self._error = e
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = SHUTDOWN_S + 3) -> None:
        """Close the listening socket and the connections; returns when the thread has ended (or after the timeout)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)


class RunningProxy(AppThread):
    """An ``EngineProxy`` served in a thread; ``proxy.upstream`` may be changed while it runs."""

    def __init__(self, proxy: EngineProxy, host: str, port: int) -> None:
        self.proxy = proxy
        super().__init__(proxy.app(), host, port)


def serve_in_thread(upstream: str, key: str, host: str, port: int,
                    open_paths: frozenset[str] = frozenset({"/health"})) -> RunningProxy:
    """Start the proxy on ``host:port``; returns once it accepts connections (or raises why it could not)."""
    return RunningProxy(EngineProxy(upstream, key, open_paths), host, port)
