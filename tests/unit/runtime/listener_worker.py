"""A router process for test_listener: serves a listening socket on 127.0.0.1:PORT until SIGTERM (a drain: it
stops offering the socket, its data plane closes its copy, it prints "drained" and lives on until killed).

argv: PORT DIR MODE PLANE. MODE "shared": the socket from ``listener.shared_listener`` (DIR the directory of
offers); "reuseport": a socket of its own with SO_REUSEPORT (one accept queue per process). PLANE "asyncio": a bare
HTTP/1.0 server answering "200 <pid>" (quick to start); "fast": the data plane (``FastRouter.start``).
Prints "ready <origin>" once it serves."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from orchestrator.runtime.listener import SharedListener, bind, shared_listener


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = str(os.getpid()).encode()
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def main(port: int, directory: Path, mode: str, plane: str) -> None:
    if mode == "shared":
        listener = await asyncio.to_thread(shared_listener, "127.0.0.1", port, directory)
    else:
        listener = SharedListener(bind("127.0.0.1", port), "bound")
    if plane == "asyncio":
        server = await asyncio.start_server(answer, sock=listener.sock)
        close = server.close
    else:
        from orchestrator.runtime.dataplane import FastRouter
        from orchestrator.runtime.router import Router

        fast = FastRouter(Router())
        await fast.start("127.0.0.1", port, sock=listener.sock)
        close = fast.close
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", listener.origin, flush=True)
    await stop.wait()
    listener.stop_offering()
    closed = close()
    if closed is not None:
        await closed
    print("drained", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
