"""The process guard with real processes: no part of an engine's process tree outlives its owner, and the engine runs
on the CPUs it is given, not on those of the thread that started it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.runtime.guard import alive, format_cpus, parse_cpus
from orchestrator.runtime.replica import CPU_BINDING_ENV, engine_env, kill_guarded, start_guarded

# An "engine" that starts a worker (as vLLM does) and waits; both record their pids.
ENGINE = ("import os, subprocess, sys, time\n"
          "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
          "open(sys.argv[1], 'w').write(str(w.pid))\n"
          "time.sleep(600)\n")
GUARD = [sys.executable, "-m", "orchestrator.runtime.guard"]


def wait_for(path: Path, timeout: float = 20) -> int:
    """A pid from a file: the worker's (a number) or the guard's pidfile (JSON: the engine's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            data = json.loads(path.read_text())
            return data["engine"] if isinstance(data, dict) else int(data)
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def gone(*pids: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def start(tmp_path: Path, grace: float = 5) -> tuple[subprocess.Popen, int, int]:
    guard = subprocess.Popen([*GUARD, "--grace", str(grace), "--pidfile", str(tmp_path / "engine.pid"), "--",
                              sys.executable, "-c", ENGINE, str(tmp_path / "worker.pid")], start_new_session=True)
    return guard, wait_for(tmp_path / "engine.pid"), wait_for(tmp_path / "worker.pid")


def test_sigterm_stops_the_engine_and_its_workers(tmp_path):
    guard, engine, worker = start(tmp_path)
    guard.send_signal(signal.SIGTERM)
    assert guard.wait(15) == 0
    assert gone(engine, worker)


def test_an_engine_killed_with_sigkill_takes_its_workers_along_and_the_guard_reports_it(tmp_path):
    guard, engine, worker = start(tmp_path)
    os.kill(engine, signal.SIGKILL)
    assert guard.wait(15) == 128 + signal.SIGKILL
    assert gone(worker)


def test_the_owner_dying_stops_the_engine_even_when_its_direct_children_are_killed_with_it(tmp_path):
    """As a Ray worker dies (``ray.kill``, crash): the owner is SIGKILLed and so are its direct children (Ray 2.60
    does that). The detached guard is not one of them; it stops the engine and its workers."""
    guard = [*GUARD, "--detach", "--grace", "2", "--pidfile", str(tmp_path / "engine.pid"), "--",
             sys.executable, "-c", ENGINE, str(tmp_path / "worker.pid")]
    owner = subprocess.Popen([sys.executable, "-c", f"import subprocess, time; subprocess.run({guard!r}); "
                              "time.sleep(600)"], start_new_session=True)
    engine, worker = wait_for(tmp_path / "engine.pid"), wait_for(tmp_path / "worker.pid")
    guard_pid = json.loads((tmp_path / "engine.pid").read_text())["guard"]
    os.killpg(owner.pid, signal.SIGKILL)  # the owner and anything still in its group
    owner.wait()
    assert alive(guard_pid) or not alive(engine)
    assert gone(engine, worker, guard_pid)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_guard_killed_outright_still_takes_the_engine_down(tmp_path):
    """Last resort (Linux): SIGKILL of the guard itself kills the engine (PR_SET_PDEATHSIG)."""
    guard, engine, _worker = start(tmp_path)
    guard.kill()
    guard.wait()
    assert gone(engine)


def test_an_engine_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    guard = subprocess.Popen([*GUARD, "--grace", "1", "--pidfile", str(tmp_path / "e.pid"), "--",
                              sys.executable, "-c", stubborn])
    engine = wait_for(tmp_path / "e.pid")
    time.sleep(0.5)
    t0 = time.monotonic()
    guard.send_signal(signal.SIGTERM)
    guard.wait(15)
    assert gone(engine, timeout=2) and 0.9 < time.monotonic() - t0 < 10


def test_a_watched_process_dying_stops_the_engine_while_the_owner_lives_on(tmp_path):
    """The fence after node loss: the replica has the guard watch its node's raylet; when the raylet is gone the
    engine stops, although the owner (the actor's worker process) may live on."""
    raylet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    log = tmp_path / "guard.log"
    with open(log, "wb") as out:
        guard = subprocess.Popen([*GUARD, "--watch-pid", str(raylet.pid), "--grace", "5", "--pidfile",
                                  str(tmp_path / "engine.pid"), "--", sys.executable, "-c", ENGINE,
                                  str(tmp_path / "worker.pid")], stderr=out, start_new_session=True)
    engine, worker = wait_for(tmp_path / "engine.pid"), wait_for(tmp_path / "worker.pid")
    time.sleep(0.5)
    assert alive(engine) and guard.poll() is None  # the watched process lives: nothing happens
    raylet.kill()
    raylet.wait()
    assert guard.wait(15) == 0 and gone(engine, worker)
    assert f"watched process {raylet.pid} (the node's raylet) is gone" in log.read_text()


def test_cpu_lists_parse_as_linux_writes_them():
    assert parse_cpus("0-3,6") == {0, 1, 2, 3, 6} and parse_cpus("1") == {1}
    assert format_cpus({6, 0, 1}) == "0,1,6" and parse_cpus(format_cpus({2, 5})) == {2, 5}
    with pytest.raises(ValueError):
        parse_cpus(",")


def _in_pinned_thread(cpu: int, fn):
    """``fn()`` in a thread pinned to ``cpu`` (affinity is per thread, as an OpenMP runtime leaves the thread it
    starts in); its result."""
    out = {}

    def run():
        os.sched_setaffinity(0, {cpu})
        out["result"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    return out["result"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux affinity and two CPUs")
def test_an_engine_started_from_a_pinned_thread_runs_on_the_nodes_cpus_not_the_threads(tmp_path):
    """The mlx-lm engine seen pinned to vLLM's core: a process inherits the mask of the thread that forks it. The
    replica starts its engine on the node's CPUs (here: this process's), whatever thread it starts it from."""
    node = os.sched_getaffinity(os.getpid())
    first = min(node)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    naive = _in_pinned_thread(first, lambda: subprocess.Popen(sleeper))  # what a plain Popen there would get
    try:
        assert os.sched_getaffinity(naive.pid) == {first}
    finally:
        naive.kill()
        naive.wait()
    pids = _in_pinned_thread(first, lambda: start_guarded(sleeper, dict(os.environ), tmp_path / "e.log", 1.0, None,
                                                          "test"))
    try:
        assert os.sched_getaffinity(pids["engine"]) == node
        assert f"on CPUs {format_cpus(node)}" in (tmp_path / "e.log").read_text()
    finally:
        kill_guarded(pids["guard"], pids["engine"], 1.0)
    assert gone(pids["engine"])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_the_guard_runs_the_engine_on_the_cpus_it_is_given(tmp_path):
    last = max(os.sched_getaffinity(0))
    guard = subprocess.Popen([*GUARD, "--cpus", str(last), "--grace", "1", "--pidfile", str(tmp_path / "e.pid"), "--",
                              sys.executable, "-c", "import time; time.sleep(600)"])
    engine = wait_for(tmp_path / "e.pid")
    try:
        assert os.sched_getaffinity(engine) == {last}
    finally:
        guard.send_signal(signal.SIGTERM)
        guard.wait(15)
    assert gone(engine)


def test_an_engine_inherits_no_cpu_binding_from_the_replica_only_from_its_launch():
    inherited = {"PATH": "/bin", "OMP_NUM_THREADS": "1", "GOMP_CPU_AFFINITY": "0", "KMP_AFFINITY": "proclist=[0]",
                 "OMP_PLACES": "{0}", "OMP_PROC_BIND": "true", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    env = engine_env(inherited, {"VLLM_CPU_OMP_THREADS_BIND": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}, {"K": "v"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "1",
                   "VLLM_CPU_KVCACHE_SPACE": "1", "K": "v"}
    assert set(CPU_BINDING_ENV) & set(engine_env(inherited)) == set()
