"""The router inside Ray: an async actor that serves ``router.Router`` (on the data plane of ``dataplane``) on the
head node and refreshes its
routing table from the controller every second. If the controller is away (restarting), the last table stays;
a table the router refuses (``balance.parse_document``: deployments and rollout splits) is logged and the last good one stays too.

With ``api_keys`` (a key-file path on the head node) every /v1 request needs a key; upstream, the router sends
the cluster's engine key (``secrets.engine_key``). ``limits`` (``spec.router.RouterLimits`` as a dict, the
controller's ``routerLimits`` option) sets its timeouts, connection cap and drain.

``drain`` is its shutdown path (the controller calls it before killing the actor): the public port closes first,
requests in flight get ``drain_seconds`` to finish (``FastRouter.close``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray

from orchestrator.runtime.balance import parse_document
from orchestrator.runtime.dataplane import FastRouter, serve
from orchestrator.runtime.keys import KeyRing
from orchestrator.runtime.listener import SharedListener, shared_listener
from orchestrator.runtime.metrics import RouterMetrics
from orchestrator.runtime.names import CONTROLLER, NAMESPACE
from orchestrator.runtime.router import MAX_BODY_BYTES, Router, serve_metrics
from orchestrator.runtime.secrets import engine_key
from orchestrator.spec.router import RouterLimits

log = logging.getLogger(__name__)

REFRESH_S = 1.0
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
FIRST_TABLE_S = 5.0


class RouterActor:
    def __init__(self, host: str, port: int, api_keys: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, limits: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, port
        keys = KeyRing(Path(api_keys)) if api_keys else None  # a missing or broken key file fails the actor
        self.router = Router(RouterMetrics(), RouterLimits.model_validate(limits or {}), keys=keys,
                             engine_key=engine_key(), max_body_bytes=max_body_bytes)
        self.metrics_port = 0
        self._task: asyncio.Task | None = None
        self._plane: FastRouter | None = None
        self._listener: SharedListener | None = None
        self._drained = False
        self._refused: str | None = None  # the last table error logged, so a bad table is logged once

    async def _run(self) -> None:
        controller = await self._first_table()  # before the port opens: no request meets an empty router
        # One listening socket for the node's routers (one accept queue): a router killed loses no queued connection.
        self._listener = await asyncio.to_thread(shared_listener, self.host, self.port)
        self._plane = await serve(self.router, self.host, self.port, sock=self._listener.sock)
        # Several routers share the public port (the kernel picks one per connection), so each also serves its
        # own metrics on a private port: Prometheus scrapes every router, not whichever answers.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        await serve_metrics(self.router, sock)
        self.metrics_port = sock.getsockname()[1]
        while True:
            try:
                controller = controller or ray.get_actor(CONTROLLER, namespace=NAMESPACE)
                table = await controller.routing_document.remote()
            except Exception:  # controller restarting: keep the last table, find it again next time
                controller = None
            else:
                self._take(table)
            await asyncio.sleep(REFRESH_S)

    async def _first_table(self) -> Any:
        """The controller's routing table, waited for up to FIRST_TABLE_S (a router Ray restarted while the
        controller is away serves without one: its model requests get a retriable 503 until one comes). Returns the
        controller's handle, or None."""
        try:
            controller = ray.get_actor(CONTROLLER, namespace=NAMESPACE)
            self._take(await asyncio.wait_for(controller.routing_document.remote(), FIRST_TABLE_S))
            return controller
        except Exception:  # no controller (yet): the refresh loop keeps asking
            return None

    def _take(self, document: Any) -> None:
        """A routing-table document from the controller: {"deployments": ..., "splits": ...}."""
        try:
            self.router.set_table(*parse_document(document))
            self._refused = None
        except ValueError as exc:
            if str(exc) != self._refused:
                log.error("routing table refused, the last good one keeps serving: %s", exc)
                self._refused = str(exc)

    async def drain(self) -> bool:
        """Stop serving the public port and let the requests in flight finish (``serve``'s cleanup: up to
        ``drain_seconds``); the table refresh stops. True once drained; the actor serves no more after it."""
        self._drained = True
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.stop_offering()
        if self._plane is not None:
            plane, self._plane = self._plane, None
            await plane.close()
        return True

    async def start(self) -> dict[str, Any]:
        if self._drained:
            raise RuntimeError("this router has drained; start a new one")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        while not self.metrics_port:
            await asyncio.sleep(0.05)
            if self._task.done():
                self._task.result()  # surfaces a bind error to the caller
        # Bound to one address (127.0.0.1 without API keys): that address is where it answers, not the node's IP.
        host = ray.util.get_node_ip_address() if self.host in WILDCARD_HOSTS else self.host
        return {"url": f"http://{host}:{self.port}", "metrics": f"{host}:{self.metrics_port}", "pid": os.getpid()}
