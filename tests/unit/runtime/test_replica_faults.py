"""The replica's supervisor with real guards and a stand-in engine: whatever goes wrong in it ends in FAILED with
the reason and the engine stopped, and a guard that exits on its own is no failure at all."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest
import ray

from orchestrator.runtime import replica as replica_module
from orchestrator.runtime.guard import alive
from orchestrator.runtime.reconcile import State
from tests.unit.runtime.replica_support import replicas

# A stand-in engine: answers /health and /v1/completions, until the file named by its first argument exists; then
# /health answers with something that is not HTTP.
ENGINE = """\
import http.server, pathlib, sys
broken = pathlib.Path(sys.argv[1])
port = int(sys.argv[sys.argv.index("--port") + 1])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if broken.exists():
            self.wfile.write(b"garbage\\r\\n\\r\\n")
        else:
            self.ok()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.ok()
    def ok(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
SLEEPER = ["python3", "-c", "import time; time.sleep(60)", "--port", "0"]  # never serves


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def make(tmp_path):
    """Replicas outside Ray (as a unit test can run them); whatever they started is stopped afterwards."""
    with replicas(tmp_path / "logs") as make_replica:
        yield lambda argv, readiness_s=10: make_replica(argv, readiness_s=readiness_s)


def test_a_guard_that_does_not_start_in_time_fails_the_replica_with_the_reason(make, monkeypatch):
    def timed_out(argv, **kwargs):
        raise subprocess.TimeoutExpired("moxin-guard", kwargs["timeout"])

    monkeypatch.setattr(replica_module.subprocess, "run", timed_out)
    before = time.time()
    r = make(SLEEPER)
    assert wait_until(lambda: not r._thread.is_alive(), 5)
    d = r.describe()
    assert d["state"] == "failed"
    assert d["lastError"] == "supervisor stopped: TimeoutExpired: Command 'moxin-guard' timed out after 30 seconds"
    assert before <= d["startedAt"] <= d["stateSince"] <= time.time()
    assert d["guardPid"] is None and d["enginePid"] is None
    assert not ray.is_initialized()  # a replica outside a Ray worker does not start Ray to learn its node


def test_an_unexpected_error_while_ready_fails_the_replica_and_stops_its_engine(make, tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    broken = tmp_path / "broken"
    r = make(["python3", str(script), str(broken), "--port", "0"])
    assert wait_until(lambda: r.state == State.READY, 10), r.logs()
    ready = r.describe()
    assert ready["stateSince"] > ready["startedAt"] and ready["restarts"] == 0
    guard, engine = r.guard_pid, r.engine_pid
    assert alive(guard) and alive(engine)

    broken.touch()  # the next health check gets a reply that is no HTTP: http.client raises BadStatusLine
    assert wait_until(lambda: not r._thread.is_alive(), 8), r.describe()
    assert r.state == State.FAILED
    assert r.last_error == "supervisor stopped: BadStatusLine: garbage"
    assert wait_until(lambda: not alive(guard) and not alive(engine), 5)


def test_a_guard_that_exits_just_before_it_is_signalled_is_no_failure(make, monkeypatch):
    """The engine is not ready in time, so the replica stops it; the guard exits on its own an instant before the
    replica's SIGTERM arrives (ProcessLookupError). That is a stopped engine, and the replica restarts it."""
    real_kill, raised = os.kill, []

    def kill(pid: int, signum: int) -> None:
        if signum == signal.SIGTERM and not raised:
            real_kill(pid, signal.SIGTERM)
            assert wait_until(lambda: not alive(pid), 5)
            raised.append(pid)
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
        real_kill(pid, signum)

    monkeypatch.setattr(replica_module.os, "kill", kill)
    r = make(SLEEPER, readiness_s=1)
    assert wait_until(lambda: r.state == State.RESTARTING, 6), r.describe()
    assert raised == [r.guard_pid]
    assert r.last_error == "not ready within 1 s"
    assert r.restarts == 1 and r._thread.is_alive()

