"""One replica: a Ray actor that owns one engine process (through ``guard``), waits for it to serve, restarts it
when it crashes, and stops it cleanly.

Runs inside a Ray worker on the node (and in the placement group) the controller chose. Its state is read by the
controller through ``describe()``; it never decides anything about the plan.

Fencing after node loss: the replica finds its node's raylet (the worker's ancestor) and hands its pid to the guard,
which stops the engine when the raylet is gone (within the poll and the grace period); the replica itself then
starts no engine again and exits its worker process, since Ray has given it up and places a new one elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.engines import vllm
from orchestrator.runtime import vllm_auth
from orchestrator.runtime.desired import ReplicaSpec
from orchestrator.runtime.engine_proxy import RunningProxy, serve_in_thread
from orchestrator.runtime.guard import alive, format_cpus, stop_group
from orchestrator.runtime.reconcile import State
from orchestrator.runtime.secrets import engine_key
from orchestrator.spec.plan import EngineLaunch

HEALTH_EVERY_S = 2.0
HEALTH_FAILURES_TO_RESTART = 3
RESTART_BACKOFF_S = (1, 2, 5, 10, 30, 60)
GIVE_UP_AFTER = 5
FAILED_GRACE_S = 2.0
"""Grace of a multi-node replica's processes once one of them is lost: the pipeline cannot finish a request any more,
so there is nothing to wait for; the sooner its devices are free, the sooner its replacement starts."""
"""Consecutive failed starts after which the replica reports FAILED and the controller replaces it."""
KEY_CHECKING_ENGINES = frozenset({"vllm", "vllm-metal"})
"""Engines that check the engine key themselves, given ``VLLM_API_KEY`` in their environment (never in argv, which
``ps`` shows). vLLM 0.32's own check covers only /v1, /v2, /inference and /cohere
(vllm/entrypoints/serve/middleware/authenticate.py), so the replica adds ``vllm_auth``'s middleware, which asks for
the key everywhere but /health, /metrics (Prometheus scrapes it) and /ping; tests/integration/test_engine_auth.py
shows SageMaker's /invocations closed. Other engines (mlx-lm) listen on loopback behind the replica's
``engine_proxy``."""


CPU_BINDING_ENV = ("GOMP_CPU_AFFINITY", "KMP_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES", vllm.CPU_BIND_ENV)
"""Variables that bind an OpenMP runtime's threads to CPUs. An engine gets them from its launch only, never from the
replica's environment: vLLM sets some of them for its CPU workers (vllm/utils/ompmultiprocessing.py), and an engine
that inherited another's binding would run on that engine's cores."""


def engine_env(inherited: dict[str, str], *layers: dict[str, str]) -> dict[str, str]:
    """The engine's environment: the replica's own without any CPU binding, then ``layers`` in order (the launch's,
    the key's). Pure."""
    env = {k: v for k, v in inherited.items() if k not in CPU_BINDING_ENV}
    for layer in layers:
        env.update(layer)
    return env


def node_cpus(raylet_pid: int | None) -> set[int] | None:
    """The CPUs of this node: its raylet's (on the local emulated cluster, its share of the machine), else this
    process's main thread's; None where Linux affinity cannot be asked. Not the calling thread's own: a thread can
    have been pinned (an OpenMP runtime binds the thread it starts in) and a process started from it inherits that."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    for pid in (raylet_pid, os.getpid()):
        if pid:
            try:
                return os.sched_getaffinity(pid)
            except OSError:  # the raylet is gone: the fence handles that
                continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # not in a Ray worker (unit use)
        return "127.0.0.1"


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
        return r.status


def _post(url: str, body: dict[str, Any], timeout: float, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                                  **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()
        return r.status


def engine_argv(launch: EngineLaunch, python: str = sys.executable) -> list[str]:
    """The launch's argv. ``python3`` in a plan names the image's interpreter; on a Ray node the engine runs with
    the node's own (the one Ray runs moxin with)."""
    argv = list(launch.argv)
    if argv[0] in ("python3", "python"):
        argv[0] = python
    return argv


def start_guarded(argv: list[str], env: dict[str, str], log_path: Path, grace_s: float, raylet_pid: int | None,
                  what: str) -> dict[str, int]:
    """Start ``argv`` under a detached guard owned by this process (and fenced by the node's raylet, when there is
    one), on the node's CPUs; returns the guard's and the engine's pids (empty when the guard did not say in time)."""
    pidfile = log_path.with_suffix(".pid")
    pidfile.unlink(missing_ok=True)
    watch = ["--watch-pid", str(raylet_pid)] if raylet_pid else []
    cpus = node_cpus(raylet_pid)
    pin = ["--cpus", format_cpus(cpus)] if cpus else []
    guard = [sys.executable, "-m", "orchestrator.runtime.guard", "--detach", "--owner-pid", str(os.getpid()),
             *watch, *pin, "--grace", str(grace_s), "--pidfile", str(pidfile), "--", *argv]
    with open(log_path, "ab") as log:
        log.write(f"\n==== moxin: {what} at {time.ctime()}\n".encode())
        log.flush()
        # The guard detaches (see guard.py): this process only waits for the first fork to return.
        subprocess.run(guard, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=30)
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return json.loads(pidfile.read_text()) if pidfile.exists() else {}


def kill_guarded(guard: int | None, engine: int | None, grace_s: float) -> None:
    """SIGTERM the guard (it stops the engine's group: SIGTERM, grace, SIGKILL), SIGKILL it if it outlives that, then
    make sure nothing of the engine's group is left."""
    if guard is None:
        return
    if alive(guard):
        _signal(guard, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 5
        while alive(guard) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(guard):
            _signal(guard, signal.SIGKILL)
    if engine:
        stop_group(engine, 0.0)


class Replica:
    def __init__(self, spec: ReplicaSpec, log_dir: str, grace_s: float = 15.0) -> None:
        self.spec = spec
        self.grace_s = grace_s
        self.log_path = Path(log_dir) / f"{spec.id}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._state = State.STARTING
        self.state_since = time.time()  # when it entered its current state: the controller judges stuck starts by it
        self.restarts = 0
        self.last_error = ""
        self.port = 0  # the public port, in describe()'s url: the engine's own, or its proxy's
        self.engine_port = 0
        self.engine_pid: int | None = None
        self.guard_pid: int | None = None
        self.started_at = self.state_since
        self.ready_at: float | None = None
        self.engine_started_at: float | None = None
        """When its last engine start began (``readyAt`` minus this: that engine's start time)."""
        self.host = node_ip()
        self.node_id = _node_id()
        self.raylet_pid = _raylet_pid()
        """This node's raylet, when the replica runs in a Ray worker: its loss fences the engine."""
        self.key = engine_key()  # None outside Ray without MOXIN_ENGINE_KEY: engines run unauthenticated
        self.proxy: RunningProxy | None = None
        self.followers: list[Any] = []
        """Stage actors of nodes 1.. of a multi-node replica (bundle i, node rank i), created at the first start."""
        self.follower_info: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"replica-{spec.id}", daemon=True)
        self._thread.start()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        if value != self._state:
            self._state, self.state_since = value, time.time()

    # -- what the controller reads -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"id": self.spec.id, "specHash": self.spec.spec_hash, "state": self.state.value,
                "stateSince": self.state_since,
                "url": f"http://{self.host}:{self.port}" if self.port else None, "host": self.host,
                "enginePort": self.engine_port or None, "proxied": self.proxied,
                "enginePid": self.engine_pid, "guardPid": self.guard_pid,
                "restarts": self.restarts, "lastError": self.last_error, "startedAt": self.started_at,
                "readyAt": self.ready_at, "engineStartedAt": self.engine_started_at, "log": str(self.log_path), "actorPid": os.getpid(),
                "nodeId": self.node_id, "stages": self._stages()}

    def logs(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:]) + "\n"

    def stop(self) -> bool:
        """Stop the engine (SIGTERM, grace, SIGKILL of its group); the controller kills the actor afterwards."""
        self._stop.set()
        self.state = State.STOPPING
        self._kill_engine(self.grace_s)
        self._stop_proxy()
        return True

    # -- authentication ------------------------------------------------------------------------------------------
    @property
    def proxied(self) -> bool:
        """The engine checks no key: it listens on loopback and the replica's proxy checks the key on the public
        port. Without a key, nothing changes: the engine listens where the plan says, unauthenticated."""
        return self.key is not None and self.spec.launch.engine not in KEY_CHECKING_ENGINES

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def _auth_argv(self) -> list[str]:
        """vLLM's own key check leaves /invocations and more open: the middleware closes every path but health."""
        return ["--middleware", vllm_auth.MIDDLEWARE] if self.key and self.spec.launch.engine == "vllm" else []

    def _auth_env(self) -> dict[str, str]:
        return {"VLLM_API_KEY": self.key} if self.key and not self.proxied else {}

    def _ensure_proxy(self, upstream: str) -> None:
        """One proxy for the replica's life, pointed at each new engine; started again if it has died (the health
        checks go through it, so a dead proxy restarts the engine and lands here)."""
        assert self.key is not None
        if self.proxy is None or not self.proxy.alive:
            self.proxy = serve_in_thread(upstream, self.key, _flag(self.spec.launch.argv, "--host") or "0.0.0.0",
                                         free_port(), frozenset({self.spec.launch.health_path}))
        self.proxy.proxy.upstream = upstream
        self.port = self.proxy.port

    def _stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    # -- supervision ---------------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        """The supervision thread. Whatever goes wrong in it ends in FAILED with the reason and the engine stopped,
        never in a thread that is gone while the replica still says STARTING or READY."""
        try:
            self._supervise_loop()
        except Exception as e:  # the top of the thread: the controller replaces a FAILED replica
            self.last_error = f"supervisor stopped: {type(e).__name__}: {str(e).strip()}"
            self.state = State.FAILED
            self._kill_engine(self.grace_s)
        finally:  # stopped or failed: no engine behind it any more
            self._stop_proxy()

    def _supervise_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._node_lost():
                self._fence()
                return
            ok = self._start_and_wait_ready()
            if self._stop.is_set():
                return
            if ok:
                failures = 0
                self.state, self.ready_at = State.READY, time.time()
                self._watch()
                if self._stop.is_set():
                    return
                if self.multi_node:  # a lost process on any node: stopped everywhere, the controller replaces it
                    self._fail_everywhere()
                    return
            else:
                failures += 1
                if self.multi_node:
                    self._fail_everywhere()
                    return
                if failures >= GIVE_UP_AFTER:
                    self.state = State.FAILED
                    return
            self.restarts += 1
            self.state, self.ready_at = State.RESTARTING, None
            self._stop.wait(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)])

    def _start_engine(self) -> None:
        self.engine_started_at = time.time()
        self.engine_port = free_port()
        launch = self.spec.launch.with_port(self.engine_port)
        if self.proxied:
            launch = launch.with_host("127.0.0.1")
            self._ensure_proxy(f"http://127.0.0.1:{self.engine_port}")
        else:
            self.port = self.engine_port
        with self._lock:  # the last engine's pids: gone, and possibly reused by now
            self.guard_pid = self.engine_pid = None
        argv, env = engine_argv(launch), engine_env(dict(os.environ), launch.env_for(_device_ids(self.spec)),
                                                    self._auth_env())
        if self.multi_node:  # the followers first: vLLM's rank 0 waits for them at its rendezvous
            master_port = free_port()
            env.update(self._stage_env(0))
            self._start_followers(argv, master_port)
            argv = self.spec.node_argv(argv, 0, self.host, master_port)
        if launch.engine == "mlx-lm":  # mlx-lm's /v1/models lists the hub cache, which must exist
            cache = Path(env.setdefault("HF_HUB_CACHE", str(self.log_path.parent / "hf-cache")))
            cache.mkdir(parents=True, exist_ok=True)
        via = f" behind the key-checking proxy on port {self.port}" if self.proxied else ""
        pids = start_guarded([*argv, *self._auth_argv()], env, self.log_path, self.grace_s, self.raylet_pid,
                             f"starting {self.spec.id} on port {self.engine_port}{via}")
        with self._lock:
            self.guard_pid, self.engine_pid = pids.get("guard"), pids.get("engine")
        self.state = State.STARTING

    def _leader_alive(self) -> bool:
        return self.guard_pid is not None and alive(self.guard_pid)

    def _engine_alive(self) -> bool:
        return self._leader_alive() and self._followers_alive()

    # -- multi-node replicas -------------------------------------------------------------------------------------
    @property
    def multi_node(self) -> bool:
        """The replica's stages span nodes: one bundle per node, node rank i on bundle i."""
        return len(self.spec.bundles) > 1

    def _stage_env(self, node_rank: int) -> dict[str, str]:
        """Emulated CPU nodes share this machine's cores: each node's workers get their own."""
        if self.spec.launch.platform == "cpu" and self.spec.labels.get("emulated") == "true":
            return vllm.cpu_bind(node_rank, os.cpu_count() or 1)
        return {}

    def _start_followers(self, argv: list[str], master_port: int) -> None:
        """Start the headless process of every other node, each through its stage actor on its own bundle."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from orchestrator.runtime.cluster import actor_resources
        from orchestrator.runtime.stage import Stage

        if not self.followers:
            pg = ray.util.get_current_placement_group()
            self.followers = [ray.remote(Stage).options(
                max_restarts=0, max_concurrency=4, **actor_resources(self.spec.bundles[r]),
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r),
            ).remote(self.spec.id, r, next(iter(self.spec.bundles[r])), str(self.log_path.parent), self.grace_s)
                for r in range(1, len(self.spec.bundles))]
        launch = self.spec.launch
        env = {**launch.env, **self._auth_env()}
        self.follower_info = ray.get([h.start.remote(
            self.spec.node_argv(argv, r, self.host, master_port), {**env, **self._stage_env(r)},
            launch.visibility_env) for r, h in enumerate(self.followers, 1)], timeout=60)

    def _followers_alive(self) -> bool:
        """Every other node's process lives (a stage actor gone, with its node or killed, counts as dead)."""
        if not self.followers:
            return True
        import ray

        try:
            self.follower_info = ray.get([h.describe.remote() for h in self.followers], timeout=10)
        except Exception as e:  # an actor lost with its node, or its raylet
            self.last_error = f"a stage of the replica is gone: {type(e).__name__}"
            return False
        dead = [i["nodeRank"] for i in self.follower_info if not i["alive"]]
        if dead:
            self.last_error = f"the process of node rank {dead[0]} exited (see {self.follower_info[dead[0] - 1]['log']})"
        return not dead

    def _stop_followers(self, grace_s: float) -> None:
        if not self.followers:
            return
        import ray

        try:
            ray.get([h.stop.remote(grace_s) for h in self.followers], timeout=grace_s + 10)
        except Exception:  # gone already: its guard stopped the process with it (owner gone)
            pass

    def _fail_everywhere(self) -> None:
        """Stop the replica's processes on every node, the stage actors too, and report FAILED: a multi-node
        replica is not restarted in place (the controller replaces it, placement group and all)."""
        reason = self.last_error or "a process of the replica exited"
        self._kill_engine(FAILED_GRACE_S)
        import ray

        for h in self.followers:
            try:
                ray.kill(h, no_restart=True)
            except Exception:
                pass
        self.last_error = f"{reason}: stopped on every node"
        self.state = State.FAILED

    def _stages(self) -> list[dict[str, Any]]:
        """Where each node of the replica runs: node rank 0 is this actor; the others as their stage actors said."""
        nodes = list(dict.fromkeys(self.spec.nodes))
        plan_devices = self.spec.node_devices

        def planned(rank: int) -> dict[str, Any]:
            return {"node": nodes[rank] if rank < len(nodes) else None,
                    "planDevices": plan_devices[rank] if rank < len(plan_devices) else None}

        own = {"nodeRank": 0, **planned(0), "host": self.host, "nodeId": self.node_id,
               "devices": _device_ids(self.spec), "enginePid": self.engine_pid}
        rest = [{**i, **planned(i["nodeRank"])} for i in self.follower_info]
        return [own, *rest]

    def _exit_reason(self) -> str:
        """The guard's last word in the log: the engine's exit status."""
        lines = [ln for ln in self.logs(50).splitlines() if ln.startswith("moxin-guard: engine exited")]
        return lines[-1].removeprefix("moxin-guard: ") if lines else "engine exited"

    def _start_and_wait_ready(self) -> bool:
        self._start_engine()
        launch = self.spec.launch
        base = f"http://127.0.0.1:{self.port}"  # the public port: through the proxy where there is one
        auth = self._auth_headers()
        deadline = time.monotonic() + launch.readiness_timeout_seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if not self._engine_alive():
                if not self._leader_alive():
                    self.last_error = f"{self._exit_reason()} while starting (see moxin logs {self.spec.id})"
                return False
            try:
                if _get(base + launch.health_path, 2, auth) == 200 and _post(
                        base + "/v1/completions", {"model": self.spec.request_model, "prompt": "ping",
                                                   "max_tokens": 1}, 30, auth) == 200:
                    return True
            except OSError:
                pass
            self._stop.wait(1.0)
        if not self._stop.is_set():
            self.last_error = f"not ready within {launch.readiness_timeout_seconds} s"
            self._kill_engine(self.grace_s)
        return False

    def _watch(self) -> None:
        """While ready: the engine process must live and answer its health check."""
        misses = 0
        url = f"http://127.0.0.1:{self.port}{self.spec.launch.health_path}"  # through the proxy where there is one
        auth = self._auth_headers()
        while not self._stop.wait(HEALTH_EVERY_S):
            if self._node_lost():
                return
            if not self._engine_alive():
                if not self._leader_alive():
                    self.last_error = self._exit_reason()
                return
            try:
                misses = 0 if _get(url, 5, auth) == 200 else misses + 1
            except OSError:
                misses += 1
            if misses >= HEALTH_FAILURES_TO_RESTART:
                self.last_error = f"health check failed {misses} times in a row"
                self._kill_engine(self.grace_s)
                return

    def _node_lost(self) -> bool:
        return self.raylet_pid is not None and not alive(self.raylet_pid)

    def _fence(self) -> None:
        """The node's raylet is gone: stop the engine (the guard is at it too) and leave. Nothing of this worker may
        serve or start an engine again; the controller's next replica runs elsewhere, or here once the node is back."""
        self.last_error = f"the node's raylet (pid {self.raylet_pid}) is gone: engine stopped, worker exiting"
        self.state = State.FAILED
        with open(self.log_path, "ab") as log:
            log.write(f"==== moxin: {self.last_error} at {time.ctime()}\n".encode())
        # Not the other nodes' stages through Ray (this node is cut off): they are owned by this worker and die
        # with it, and their guards stop their processes when their owner is gone.
        kill_guarded(self.guard_pid, self.engine_pid, self.grace_s)
        self._stop_proxy()
        os._exit(1)  # a worker whose raylet is gone is orphaned: Ray would leave it running for minutes

    def _kill_engine(self, grace_s: float) -> None:
        with self._lock:
            guard, engine = self.guard_pid, self.engine_pid
        kill_guarded(guard, engine, grace_s)
        self._stop_followers(grace_s)

def _signal(pid: int, signum: int) -> None:
    """Signal a process that was alive a moment ago; one that has exited since needs nothing more."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _raylet_pid() -> int | None:
    """The pid of this node's raylet when this process is a Ray worker (the raylet starts the workers: it is an
    ancestor, named ``raylet``); None elsewhere."""
    try:
        import psutil

        for parent in psutil.Process().parents():
            if parent.name() == "raylet":
                return parent.pid
    except Exception:  # no psutil (Ray depends on it), or a parent gone meanwhile: no fence, as before
        return None
    return None


def _node_id() -> str | None:
    try:
        import ray

        if not ray.is_initialized():  # not in a Ray worker: asking the runtime context would start Ray
            return None
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def granted_devices(resource: str) -> list[int] | None:
    """The devices Ray granted this actor for ``resource`` (the profile's: GPU, NPU, a custom one); None outside Ray
    or when Ray tracks no ids for it."""
    try:
        import ray

        if not ray.is_initialized():  # not in a Ray worker (unit use)
            return None
        granted = ray.get_runtime_context().get_accelerator_ids().get(resource) or []
        return [int(i) for i in granted] or None
    except Exception:
        return None


def _device_ids(spec: ReplicaSpec) -> list[int]:
    """The devices Ray granted this actor for the profile's resource, else the plan's choice."""
    return granted_devices(next(iter(spec.bundles[0]))) or list(spec.devices)
