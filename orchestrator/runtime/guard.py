"""Guard of one engine process tree: ``python -m orchestrator.runtime.guard --grace S --pidfile F -- ARGV...``.

The replica actor starts the guard; the guard starts the engine in a new session (its own process group) and
makes sure no part of that tree outlives its owner:
- the engine exits -> the rest of its group is killed, and the guard exits with the engine's status;
- SIGTERM/SIGINT to the guard -> SIGTERM to the engine's group, SIGKILL after the grace period;
- the replica actor's process dies (crash, ``ray.kill``, node shutdown) -> the guard notices that its parent
  changed and stops the engine the same way.
The guard runs in a session of its own, so that killing the Ray node's process group does not take the guard
down before it has stopped the engine. It polls; it needs nothing beyond POSIX.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moxin-guard")
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command after --")
    parent = os.getppid()
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proc = subprocess.Popen(command, start_new_session=True)
    tmp = args.pidfile.with_suffix(".tmp")
    tmp.write_text(str(proc.pid))
    tmp.replace(args.pidfile)
    print(f"moxin-guard: engine pid {proc.pid}: {' '.join(command)}", file=sys.stderr, flush=True)
    while True:
        code = proc.poll()
        if code is not None:
            print(f"moxin-guard: engine exited with status {code}", file=sys.stderr, flush=True)
            stop_group(proc.pid, 0.0)  # reap what the engine left behind (its workers)
            return code if code >= 0 else 128 - code
        if stop["signal"] or os.getppid() != parent:
            why = f"signal {stop['signal']}" if stop["signal"] else "the replica process is gone"
            print(f"moxin-guard: stopping the engine ({why})", file=sys.stderr, flush=True)
            stop_group(proc.pid, args.grace, proc)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
