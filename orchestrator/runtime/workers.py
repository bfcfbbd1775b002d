"""``moxin router --workers N|auto``: one router process per core on one port, outside Ray (the Kubernetes router
pod), in the pre-fork shape of nginx and gunicorn.

Where it sits: between the CLI and ``router_worker`` (the entry each worker runs: the data plane's
``run_from_config``). The parent binds the listening socket once (``listener.bind``) and passes it to N
worker processes (``subprocess`` with ``pass_fds``, argv lists): one accept queue for all, so a worker that dies
leaves its queued connections to the others. The parent restarts a worker that exits (at once after a long life,
then with a backoff doubling up to ``RESTART_MAX_S`` while it keeps dying within ``STEADY_S``). SIGTERM (or
SIGINT): the parent closes its copy of the socket, forwards SIGTERM to every worker (each closes its copy and
drains), and exits once all are done: 0 when every worker exited 0 (or was still starting: SIGTERM ends it).

Metrics: a scrape of the public port reaches one worker. Each worker also serves its /metrics on a socket of its
own (127.0.0.1, bound by the parent and passed like the listener, so a restarted worker keeps its address), and
the parent serves ``/metrics`` on ``--metrics-port``: every worker's series with a ``worker`` label (its slot,
0..N-1, kept across restarts). A label rather than a sum: a restarted worker's counters start again from 0,
which ``rate()`` reads as a counter reset of that one series; a sum would fall by the dead worker's counts and
``rate()`` would read the whole sum as new. Chosen over prometheus_client's multiprocess mode, which would answer
on the public port but writes every increment to a memory-mapped file (measured here: 3.7-3.9 us per
``inc`` + ``observe`` against 1.8-2.0 us), must be switched on before prometheus_client is imported, needs every
gauge's mode declared and leaves a file per worker pid to clean; and the data planes stay as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from orchestrator.runtime.listener import bind

log = logging.getLogger(__name__)

MAX_WORKERS = 16
"""``auto`` uses at most this many (past it the engines' connections and health checks multiply for little)."""
STEADY_S = 10.0
"""A worker that lived this long before it exited is restarted at once; sooner, with the backoff."""
RESTART_MIN_S = 0.25
RESTART_MAX_S = 10.0
SCRAPE_TIMEOUT_S = 2.0
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
WORKER_BYTES = 128 * 2**20
"""Memory ``auto`` leaves each worker (a worker on the aiohttp router: about 90 MB resident at rest)."""
PARENT_BYTES = 64 * 2**20
"""Memory ``auto`` leaves the parent (about 60 MB resident)."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # cgroup v1, or no cgroup: the affinity alone
        return None


def auto_workers(cpus: int, cpu_max: str | None, memory_max: str | None = None) -> int:
    """Workers for ``auto``: the CPUs this process may run on, fewer when the cgroup's quota (cpu.max, "QUOTA
    PERIOD" or "max PERIOD") allows less, rounded up; fewer still when its memory limit (memory.max, bytes or
    "max") holds fewer than that of ``WORKER_BYTES`` each beside the parent's ``PARENT_BYTES`` (a pod killed for
    memory serves nobody); at least 1, at most ``MAX_WORKERS``."""
    limit = cpus
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            limit = min(limit, math.ceil(int(quota) / int(period)))
    if memory_max and memory_max.strip() != "max":
        limit = min(limit, (int(memory_max) - PARENT_BYTES) // WORKER_BYTES)
    return max(1, min(limit, MAX_WORKERS))


def worker_count(value: str) -> int:
    """``--workers``: a whole number >= 1 (not capped: asked for) or "auto". ValueError otherwise."""
    if value == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
        return auto_workers(cpus, _read(CGROUP_CPU_MAX), _read(CGROUP_MEMORY_MAX))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"a whole number >= 1 or auto, not {value!r}")
    return int(value)


def merge_metrics(texts: dict[int, str]) -> bytes:
    """The exposition text of several workers as one, each sample labelled ``worker="<slot>"``."""
    families: dict[str, Metric] = {}
    for slot, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples.extend(Sample(s.name, {**s.labels, "worker": str(slot)}, s.value, s.timestamp, s.exemplar)
                                  for s in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector of metrics already gathered (registries hold collectors by identity: no dataclass here)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


@dataclass
class Supervisor:
    """The parent of ``n`` workers serving ``sock``. ``spec``: the worker's arguments (``router_worker``), the
    descriptors left out. ``sleep`` waits a backoff (a test may shorten it)."""

    spec: dict[str, Any]
    n: int
    sock: socket.socket
    metrics_socks: list[socket.socket] = field(default_factory=list)
    procs: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    restarts: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics_socks = self.metrics_socks or [bind("127.0.0.1", 0) for _ in range(self.n)]

    def argv(self, slot: int) -> list[str]:
        spec = {**self.spec, "listenFd": self.sock.fileno(), "metricsFd": self.metrics_socks[slot].fileno(),
                "worker": slot}
        return [sys.executable, "-m", "orchestrator.runtime.router_worker", json.dumps(spec)]

    async def keep(self, slot: int) -> int:
        """Run worker ``slot`` until the supervisor stops, restarting it when it exits. Its last exit code."""
        quick_deaths = 0
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.argv(slot), pass_fds=(self.sock.fileno(), self.metrics_socks[slot].fileno()))
            self.procs[slot] = proc
            code = await proc.wait()
            if self.stopping.is_set():
                return code
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < STEADY_S else 0
            delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (quick_deaths - 1)) if quick_deaths else 0.0
            log.warning("router worker %d (pid %d) exited with %s; restarting it in %.2f s", slot, proc.pid, code, delay)
            self.restarts += 1
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return code
            except TimeoutError:
                pass

    def stop(self) -> None:
        """SIGTERM: close the parent's copy of the socket (the port closes once every worker has closed its own)
        and pass SIGTERM on: each worker drains."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.sock.close()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def metrics(self, _request: web.Request) -> web.Response:
        ports = {slot: s.getsockname()[1] for slot, s in enumerate(self.metrics_socks)}
        async with ClientSession(timeout=ClientTimeout(total=SCRAPE_TIMEOUT_S)) as session:
            got = await asyncio.gather(*(_scrape(session, port) for port in ports.values()))
        texts = {slot: text for slot, text in zip(ports, got, strict=True) if text is not None}
        return web.Response(body=merge_metrics(texts), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def run(self, metrics_host: str, metrics_port: int) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, metrics_host, metrics_port).start()
        log.info("%d router workers on %s; their metrics on %s:%d/metrics", self.n, self.sock.getsockname(),
                 metrics_host, metrics_port)
        codes = await asyncio.gather(*(self.keep(slot) for slot in range(self.n)))
        await runner.cleanup()
        log.info("router workers done: exit codes %s", codes)
        # Killed by the SIGTERM passed on: a worker still starting (its handler not yet set), with nothing to drain.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


async def _scrape(session: ClientSession, port: int) -> str | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text() if response.status == 200 else None
    except (ClientError, OSError, TimeoutError):  # a worker restarting: its series are missing this time
        return None


def supervise(spec: dict[str, Any], n: int, host: str, port: int, metrics_port: int) -> None:
    """Bind host:port, run ``n`` workers on it until SIGTERM, exit with ``Supervisor.run``'s code. Raises OSError
    when the port cannot be bound."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind(host, port)

    async def main() -> int:
        return await Supervisor(spec, n, sock).run(host, metrics_port)

    sys.exit(asyncio.run(main()))
