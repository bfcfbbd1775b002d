"""One listening socket for every router on a host:port: the pre-fork model of nginx and gunicorn, for routers
that start one by one (Ray actors, a restarted worker).

Where it sits: under the data planes (``router.serve``, ``dataplane.FastRouter.start``), which serve the socket it
hands them; ``router_actor`` and the multi-worker router (``moxin router --workers``) ask it for one.

Why: with SO_REUSEPORT every process has its own accept queue, and a process SIGKILLed resets the connections
in its queue (their handshake was done, no byte of their request read; Linux moves them to another socket only
with net.ipv4.tcp_migrate_req=1). One socket shared by every router has one queue: whoever is alive accepts.

How: the first router on a host:port binds the socket; every holder offers its descriptor to newcomers over a
Unix socket (SCM_RIGHTS) at ``DIR/<host>_<port>.<pid>.<tag>.sock``, DIR a private directory (0700, ours:
``runtime_dir()``). A newcomer takes ``DIR/<host>_<port>.lock`` (flock: of two routers starting at once one binds,
the other receives; a crashed holder's lock goes with its process), asks each holder in turn and binds the socket
itself only when none answers. A path where nobody listens is a crashed holder's: removed. A holder that does not
answer within ``ASK_TIMEOUT_S`` (stopped, stuck) is passed over. The socket always has SO_REUSEPORT, so that when
two routers do bind their own (the lock not taken in time, directories they do not share) both serve, as before.

Closing: a data plane closes its own copy (close, never shutdown: a shutdown would stop the socket for every
holder; asyncio's and uvloop's servers close); the socket listens while any holder has it, and the connections
in its queue wait for whichever holder accepts next. A router that drains calls ``stop_offering`` first.

The descriptor's O_NONBLOCK flag is shared by every holder: every data plane here is asyncio's or uvloop's, which
set it; a blocking ``accept`` on a shared listener would get EAGAIN.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

BACKLOG = 1024
"""The shared accept queue's length (the kernel caps it at net.core.somaxconn)."""
ASK_TIMEOUT_S = 1.0
"""How long a newcomer waits for one holder's answer before it asks the next."""
LOCK_TIMEOUT_S = 10.0
"""How long a newcomer waits for another newcomer of the same port; past it, it goes on without the lock."""
_TAG = b"moxin-listener"


class ListenerError(RuntimeError):
    """The directory of listeners cannot be trusted (not ours, open to others): the router binds its own socket."""


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/moxin/listeners, or <tmp>/moxin-<uid>/listeners: per user, so that routers of one user
    share and nobody else's can connect."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "moxin" if base else Path(tempfile.gettempdir()) / f"moxin-{os.getuid()}"
    return root / "listeners"


@dataclass
class SharedListener:
    """A listening TCP socket and the offer of it to later routers (a thread answering on ``offer_path``).

    ``origin``: "bound" (this process bound it) or "received" (from a holder). Give ``sock`` to the data plane;
    it closes it. ``stop_offering`` before draining; ``close`` when no data plane took the socket."""

    sock: socket.socket
    origin: Literal["bound", "received"]
    offer_path: Path | None = None
    _server: socket.socket | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def stop_offering(self) -> None:
        """Later routers no longer get the socket from this one (its path is removed). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept (Linux)
        except OSError:
            pass
        server.close()
        if self._thread is not None:
            self._thread.join(timeout=ASK_TIMEOUT_S)
        if self.offer_path is not None:
            self.offer_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop offering and close this process's copy (the other holders keep listening)."""
        self.stop_offering()
        self.sock.close()


def shared_listener(host: str, port: int, directory: Path | None = None, backlog: int = BACKLOG,
                    ask_timeout_s: float = ASK_TIMEOUT_S, lock_timeout_s: float = LOCK_TIMEOUT_S) -> SharedListener:
    """The listening socket of host:port, shared with every other router of this user on this host (see the
    module's docstring). Port 0 (any free port) shares nothing. Blocking: call it from a thread in async code.
    Raises OSError when the port cannot be bound (in use by another program)."""
    if port == 0:
        return SharedListener(bind(host, port, backlog), "bound")
    try:
        folder = _private_dir(directory or runtime_dir())
    except (OSError, ListenerError) as exc:
        log.warning("listener of %s:%d not shared (%s): this router binds its own with SO_REUSEPORT", host, port, exc)
        return SharedListener(bind(host, port, backlog), "bound")
    key = f"{host or '0.0.0.0'}_{port}"
    with _locked(folder / f"{key}.lock", lock_timeout_s):
        sock: socket.socket | None = None
        for path in sorted(folder.glob(f"{key}.*.sock")):
            sock = ask(path, port, ask_timeout_s)
            if sock is not None:
                break
        origin: Literal["bound", "received"] = "received" if sock is not None else "bound"
        sock = sock or bind(host, port, backlog)
        listener = SharedListener(sock, origin)
        _offer(listener, folder / f"{key}.{os.getpid()}.{secrets.token_hex(4)}.sock")
    log.info("listener of %s:%d %s", host, port, "received from a router" if origin == "received" else "bound")
    return listener


def bind(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A new listening socket on host:port with SO_REUSEPORT (as asyncio binds: IPv6 only for an IPv6 address)."""
    family, kind, proto, _, address = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def ask(path: Path, port: int, timeout_s: float = ASK_TIMEOUT_S) -> socket.socket | None:
    """The listening socket the holder at ``path`` offers, or None: nobody there (the path of a crashed holder,
    removed), no answer within ``timeout_s``, or not a listening socket of ``port``."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout_s)
    try:
        try:
            with _address(path) as address:
                client.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return None
        _, fds, _, _ = socket.recv_fds(client, len(_TAG), 1)
    except OSError:  # a timeout included: the holder is stopped or stuck
        return None
    finally:
        client.close()
    if not fds:
        return None
    sock = socket.socket(fileno=fds[0])
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type == socket.SOCK_STREAM and listening and sock.getsockname()[1] == port:
            return sock
    except OSError:
        pass
    sock.close()
    return None


def _offer(listener: SharedListener, path: Path) -> None:
    """Answer every connection at ``path`` with the listener's descriptor, from a daemon thread, until
    ``stop_offering`` (or the data plane closed the socket). A path that cannot be made is logged: the router
    still serves, later ones bind their own."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        with _address(path) as address:
            server.bind(address)
        server.listen(64)
    except OSError as exc:
        server.close()
        log.warning("listener not offered to later routers: %s: %s", path, exc)
        return
    listener.offer_path, listener._server = path, server
    listener._thread = threading.Thread(target=_answer_forever, args=(server, listener.sock), daemon=True,
                                        name=f"listener-offer-{path.name}")
    listener._thread.start()


def _answer_forever(server: socket.socket, sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:  # stop_offering closed it
            return
        with conn:
            fd = sock.fileno()
            if fd < 0:  # the data plane closed the socket: nothing left to offer
                return
            try:
                socket.send_fds(conn, [_TAG], [fd])
            except OSError:
                pass


@contextmanager
def _address(path: Path) -> Iterator[str]:
    """``path`` as a Unix socket address: itself, or when it is too long for one (108 bytes with the NUL: a deep
    temporary directory) the same file through /proc/self/fd and a descriptor of its directory, for the block."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _private_dir(path: Path) -> Path:
    """``path`` made (0700) if missing; refused unless it and its parent are ours and closed to others (anyone
    who could write there could hand our routers a socket of theirs)."""
    for each in (path.parent, path):
        each.mkdir(mode=0o700, exist_ok=True)
    for each in (path.parent, path):
        info = each.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ListenerError(f"{each} must be a directory of uid {os.getuid()} with mode 0700 "
                                f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    return path


@contextmanager
def _locked(path: Path, timeout_s: float) -> Iterator[bool]:
    """An exclusive flock on ``path`` for the block (True), or False after ``timeout_s``: the caller goes on
    without it. The lock file stays (removing it would let two routers lock two different files)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    log.warning("%s not locked (%s): going on without it", path, exc)
                    yield False
                    return
                time.sleep(0.02)
        yield True
    finally:
        os.close(fd)  # releases the lock
