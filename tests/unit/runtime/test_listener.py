"""The shared listener (runtime/listener.py) with real processes and sockets: a router SIGKILLed with connections
in the accept queue loses none of them when the routers share one socket, and loses its share with SO_REUSEPORT
(the difference the module exists for); a crashed holder's path, a stopped holder, a directory open to others; a
router that drains leaves the others accepting (the data plane's close does not shut the socket down)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import orchestrator
from orchestrator.runtime.listener import ListenerError, _address, _private_dir, ask, shared_listener

WORKER = Path(__file__).with_name("listener_worker.py")
ROOT = Path(orchestrator.__file__).parents[1]
READY_S = 60.0  # a loaded 2-core machine starts a Python process slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_socket(a: socket.socket, b: socket.socket) -> bool:
    return os.fstat(a.fileno()).st_ino == os.fstat(b.fileno()).st_ino


class Workers:
    """Router processes (listener_worker.py) started by the test, all killed at its end."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory, self.procs = port, directory, []

    def start(self, mode: str, plane: str = "asyncio") -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, str(WORKER), str(self.port), str(self.directory), mode, plane],
                                stdout=subprocess.PIPE, env=env, text=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def line(proc: subprocess.Popen, timeout_s: float = READY_S) -> str:
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        assert ready, f"worker {proc.pid} said nothing in {timeout_s} s"
        return proc.stdout.readline().strip()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()
            proc.stdout.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(free_port(), tmp_path / "listeners")
    try:
        yield group
    finally:
        group.kill_all()


def burst(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each with a whole request sent: with every router stopped they wait in the accept
    queue(s), handshake done, not accepted."""
    conns = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        conns.append(conn)
    return conns


def outcomes(conns: list[socket.socket]) -> dict[str, int]:
    """How each connection ended: "answered" (a 200), "reset" (ECONNRESET, no byte), or what else came."""
    seen: dict[str, int] = {}
    for conn in conns:
        data = b""
        try:
            while chunk := conn.recv(4096):
                data += chunk
            what = "answered" if data.startswith(b"HTTP/1.0 200") else f"other:{data[:40]!r}"
        except ConnectionResetError:
            what = "reset" if not data else "reset-after-bytes"
        finally:
            conn.close()
        seen[what] = seen.get(what, 0) + 1
    return seen


def kill_with_queue_full(workers: Workers, mode: str, count: int = 60) -> dict[str, int]:
    """Three routers; all stopped, a burst of connections queued, the first (the one that bound the socket)
    SIGKILLed, the others resumed."""
    procs = [workers.start(mode) for _ in range(3)]  # at once: the lock settles who binds
    origins = sorted(workers.line(p) for p in procs)
    if mode == "shared":
        assert origins == ["ready bound", "ready received", "ready received"]
    victim = procs[0]
    for proc in procs:
        os.kill(proc.pid, signal.SIGSTOP)
    conns = burst(workers.port, count)
    victim.kill()
    victim.wait()
    for proc in procs[1:]:
        os.kill(proc.pid, signal.SIGCONT)
    return outcomes(conns)


def test_a_router_killed_with_connections_queued_loses_none_of_them_when_the_socket_is_shared(workers):
    assert kill_with_queue_full(workers, "shared") == {"answered": 60}


def test_with_so_reuseport_the_killed_routers_queue_is_reset(workers):
    """What the shared listener fixes: each process has its own queue, and the kernel resets the victim's (about a
    third of the burst; none would be 2**-60 likely). Without net.ipv4.tcp_migrate_req, which is off by default."""
    got = kill_with_queue_full(workers, "reuseport")
    assert set(got) == {"answered", "reset"} and got["answered"] + got["reset"] == 60, got
    assert got["reset"] >= 5, got


def test_a_draining_router_leaves_the_others_accepting_and_offering(workers):
    """The binder (FastRouter.close) drains; the other router still accepts every new connection from the same
    socket, and a newcomer still receives the socket (from the other router's process)."""
    first = workers.start("shared", "fast")
    assert workers.line(first) == "ready bound"
    second = workers.start("shared", "fast")
    assert workers.line(second) == "ready received"
    first.send_signal(signal.SIGTERM)
    assert workers.line(first) == "drained"
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", workers.port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "refused or not answered after the drain"
    third = workers.start("shared")
    assert workers.line(third) == "ready received"
    assert len(list(workers.directory.glob("*.sock"))) == 2  # the drained router's offer is gone


def test_a_second_listener_receives_the_same_socket_and_the_last_one_closing_closes_it(tmp_path):
    port = free_port()
    first = shared_listener("127.0.0.1", port, tmp_path / "l")
    second = shared_listener("127.0.0.1", port, tmp_path / "l")
    assert (first.origin, second.origin) == ("bound", "received")
    assert same_socket(first.sock, second.sock)
    first.close()
    third = shared_listener("127.0.0.1", port, tmp_path / "l")  # offered by the second, the first is gone
    assert third.origin == "received" and same_socket(second.sock, third.sock)
    second.close()
    third.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_directory_too_deep_for_a_unix_socket_address_still_shares(tmp_path):
    (tmp_path / ("d" * 60)).mkdir()
    directory = tmp_path / ("d" * 60) / ("e" * 60) / "listeners"
    port = free_port()
    first = shared_listener("127.0.0.1", port, directory)
    second = shared_listener("127.0.0.1", port, directory)
    assert len(str(first.offer_path)) > 108
    assert second.origin == "received" and same_socket(first.sock, second.sock)
    first.close()
    second.close()


def test_a_crashed_holders_path_is_removed_and_the_newcomer_binds(tmp_path):
    directory = tmp_path / "l"
    directory.mkdir(mode=0o700)
    port = free_port()
    stale = directory / f"127.0.0.1_{port}.4242.deadbeef.sock"
    crashed = socket.socket(socket.AF_UNIX)
    with _address(stale) as address:  # pytest's temporary directory may be too deep for a Unix address
        crashed.bind(address)  # bound, never listening, closed without unlinking: what SIGKILL leaves
    crashed.close()
    listener = shared_listener("127.0.0.1", port, directory)
    try:
        assert listener.origin == "bound"
        assert not stale.exists()
        assert listener.offer_path is not None and listener.offer_path.exists()
    finally:
        listener.close()
    assert not listener.offer_path.exists()


def test_a_holder_that_does_not_answer_is_passed_over_after_the_timeout(tmp_path):
    """A stopped holder: its path accepts connections (the kernel queues them) and sends nothing."""
    directory = tmp_path / "l"
    directory.mkdir(mode=0o700)
    port = free_port()
    silent = socket.socket(socket.AF_UNIX)
    with _address(directory / f"127.0.0.1_{port}.4242.deadbeef.sock") as address:
        silent.bind(address)
    silent.listen()
    try:
        start = time.monotonic()
        assert ask(directory / f"127.0.0.1_{port}.4242.deadbeef.sock", port, timeout_s=0.2) is None
        listener = shared_listener("127.0.0.1", port, directory, ask_timeout_s=0.2)
        assert listener.origin == "bound" and 0.4 <= time.monotonic() - start < 5
        listener.close()
    finally:
        silent.close()


def test_a_socket_of_another_port_is_refused(tmp_path):
    first = shared_listener("127.0.0.1", free_port(), tmp_path / "l")
    try:
        assert ask(first.offer_path, free_port()) is None
    finally:
        first.close()


def test_a_directory_open_to_others_is_refused_and_the_router_binds_its_own(tmp_path):
    directory = tmp_path / "open"
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)
    with pytest.raises(ListenerError, match="mode 0700"):
        _private_dir(directory)
    listener = shared_listener("127.0.0.1", free_port(), directory)
    assert listener.origin == "bound" and listener.offer_path is None
    listener.close()


def test_port_zero_shares_nothing(tmp_path):
    listener = shared_listener("127.0.0.1", 0, tmp_path / "l")
    assert listener.sock.getsockname()[1] != 0 and listener.offer_path is None
    listener.close()
