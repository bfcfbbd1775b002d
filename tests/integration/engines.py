"""Start real engine servers for tests: argv lists, own process group, health wait, clean kill."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VLLM_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # vLLM 0.32 (facts/engines.md)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    log: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the whole process group, wait, then SIGKILL it: no engine worker outlives the test."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@contextlib.contextmanager
def serve(argv: list[str], env: dict[str, str], log: Path, port: int, timeout: float = 300) -> Iterator[Server]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(port, log, process)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(server.url):
            if process.poll() is not None:
                raise RuntimeError(f"engine exited with {process.returncode}:\n{server.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"engine not healthy after {timeout} s:\n{server.log_text()[-3000:]}")
            time.sleep(1)
        yield server
    finally:
        stop(process)


def vllm_argv(model: Path, port: int, *extra: str, max_model_len: int = 2048) -> list[str]:
    return [sys.executable, "-m", VLLM_MODULE, "--model", str(model), "--port", str(port), "--host", "127.0.0.1",
            "--max-model-len", str(max_model_len), "--served-model-name", "tiny", *extra]


def chat(url: str, content: str = "Hello", max_tokens: int = 8, model: str = "tiny") -> dict:
    import json

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                       "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())
