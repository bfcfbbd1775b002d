"""The router inside Ray: an async actor that serves ``router.Router`` on the head node and refreshes its
routing table from the controller every second. If the controller is away (restarting), the last table stays.
"""

from __future__ import annotations

import asyncio

import ray

from orchestrator.runtime.router import Router, serve

REFRESH_S = 1.0


class RouterActor:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.router = Router()
        self.errors = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        from orchestrator.runtime.controller import CONTROLLER, NAMESPACE

        await serve(self.router, self.host, self.port)
        controller = None
        while True:
            try:
                controller = controller or ray.get_actor(CONTROLLER, namespace=NAMESPACE)
                self.router.set_table(await controller.routing_table.remote())
            except Exception:  # controller restarting: keep the last table, find it again next time
                controller = None
                self.errors += 1
            await asyncio.sleep(REFRESH_S)

    async def start(self) -> str:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            await asyncio.sleep(0.2)
            if self._task.done():
                self._task.result()  # surfaces a bind error to the caller
        return f"http://{ray.util.get_node_ip_address()}:{self.port}"

    async def table(self) -> dict:
        return {d: [e.name for e in eps] for d, eps in self.router.balancer.table.items()}
