"""The router inside Ray: an async actor that serves ``router.Router`` on the head node and refreshes its
routing table from the controller every second. If the controller is away (restarting), the last table stays.
"""

from __future__ import annotations

import asyncio
import socket

import ray
from aiohttp import web

from orchestrator.runtime.names import CONTROLLER, NAMESPACE
from orchestrator.runtime.router import Router, serve

REFRESH_S = 1.0


class RouterActor:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.router = Router()
        self.metrics_port = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        await serve(self.router, self.host, self.port)
        controller = None
        # Several routers share the public port (the kernel picks one per connection), so each also serves its
        # own metrics on a private port: Prometheus scrapes every router, not whichever answers.
        own = web.Application()
        own.router.add_get("/metrics", self.router.export)
        runner = web.AppRunner(own, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        await web.SockSite(runner, sock).start()
        self.metrics_port = sock.getsockname()[1]
        while True:
            try:
                controller = controller or ray.get_actor(CONTROLLER, namespace=NAMESPACE)
                self.router.set_table(await controller.routing_table.remote())
            except Exception:  # controller restarting: keep the last table, find it again next time
                controller = None
            await asyncio.sleep(REFRESH_S)

    async def start(self) -> dict[str, str]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        while not self.metrics_port:
            await asyncio.sleep(0.05)
            if self._task.done():
                self._task.result()  # surfaces a bind error to the caller
        host = ray.util.get_node_ip_address()
        return {"url": f"http://{host}:{self.port}", "metrics": f"{host}:{self.metrics_port}"}
