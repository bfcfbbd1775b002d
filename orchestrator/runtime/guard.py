"""Guard of one engine process tree:
``python -m orchestrator.runtime.guard [--detach] [--owner-pid P] --grace S --pidfile F -- ARGV...``.

The replica actor starts the guard; the guard starts the engine in a new session (its own process group) and
makes sure no part of that tree outlives its owner:
- the engine exits -> the rest of its group is killed, and the guard exits with the engine's status;
- SIGTERM/SIGINT to the guard -> SIGTERM to the engine's group, SIGKILL after the grace period;
- the owner (the replica actor's process) dies: crash, ``ray.kill``, node shutdown -> the guard stops the engine
  the same way;
- a watched process dies (``--watch-pid``: the replica passes its node's raylet) -> the same. This is the fence
  after node loss: a raylet gone means Ray has given the node up and will place the replica elsewhere, while the
  actor's worker process may live on for minutes; its engine must not.
With ``--cpus`` the engine runs on those CPUs whatever the thread that started the guard was pinned to (affinity is
per thread and inherited at fork: an engine started from a thread an OpenMP runtime had bound to one core would
inherit that core); the guard sets its own before it starts the engine, single-threaded, so no preexec is needed.
With ``--detach`` the guard leaves its parent (double fork, new session): a dying Ray worker SIGKILLs its direct
children (verified with Ray 2.60), which would kill a guard that is one before it could stop the engine. The
pidfile then tells the owner both pids, as JSON. As a last resort on Linux, the engine gets SIGKILL if the guard
itself is killed (PR_SET_PDEATHSIG). The guard polls; beyond that it needs nothing but POSIX.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.2


def stop_group(pgid: int, grace_s: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for its leader, then SIGKILL whatever is left of it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(POLL_S)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux: /proc says so; elsewhere a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _die_with_parent() -> None:
    """In the engine, before exec (Linux): SIGKILL when the guard dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse_cpus(text: str) -> set[int]:
    """``0-3,6`` -> {0, 1, 2, 3, 6} (the Cpus_allowed_list format)."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise ValueError(f"no CPU in {text!r}")
    return cpus


def format_cpus(cpus: set[int] | list[int] | tuple[int, ...]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moxin-guard")
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--owner-pid", type=int, help="Stop the engine when this process is gone [default: parent].")
    parser.add_argument("--detach", action="store_true", help="Leave the parent (double fork, new session).")
    parser.add_argument("--watch-pid", type=int, action="append", default=[],
                        help="Stop the engine when this process is gone too (repeatable; the node's raylet).")
    parser.add_argument("--cpus", type=parse_cpus, help="Run the engine on these CPUs (0-3,6) [default: the guard's].")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command after --")
    owner = args.owner_pid or os.getppid()
    if args.detach:
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.cpus and hasattr(os, "sched_setaffinity"):
        try:  # this process has one thread: the engine inherits its mask
            os.sched_setaffinity(0, args.cpus)
        except OSError as e:  # CPUs outside this cgroup's set: the engine keeps the guard's, and the log says so
            print(f"moxin-guard: cannot run on CPUs {format_cpus(args.cpus)}: {e}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(command, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    tmp = args.pidfile.with_suffix(".tmp")
    tmp.write_text(json.dumps({"guard": os.getpid(), "engine": proc.pid}))
    tmp.replace(args.pidfile)
    cpus = f" on CPUs {format_cpus(os.sched_getaffinity(0))}" if hasattr(os, "sched_getaffinity") else ""
    print(f"moxin-guard: engine pid {proc.pid}{cpus}: {' '.join(command)}", file=sys.stderr, flush=True)
    while True:
        code = proc.poll()
        if code is not None:
            print(f"moxin-guard: engine exited with status {code}", file=sys.stderr, flush=True)
            stop_group(proc.pid, 0.0)  # reap what the engine left behind (its workers)
            return code if code >= 0 else 128 - code
        lost = [pid for pid in args.watch_pid if not alive(pid)]
        if stop["signal"] or not alive(owner) or lost:
            why = (f"signal {stop['signal']}" if stop["signal"] else f"its owner (pid {owner}) is gone"
                   if not alive(owner) else f"watched process {lost[0]} (the node's raylet) is gone")
            print(f"moxin-guard: stopping the engine ({why})", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            stop_group(proc.pid, args.grace, proc)
            print(f"moxin-guard: engine stopped in {time.monotonic() - t0:.1f} s (status {proc.returncode})",
                  file=sys.stderr, flush=True)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
