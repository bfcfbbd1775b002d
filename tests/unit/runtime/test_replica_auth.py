"""The replica with an engine key (``MOXIN_ENGINE_KEY`` here; the Ray KV inside Ray): a key-checking engine (vLLM)
gets it through its environment, never its argv, and the replica's probes send it; an engine that checks none
(mlx-lm) listens on loopback only, behind the replica's proxy on the public port. Without a key nothing changes.

Real guards and stand-in engines (the ENGINE below), outside Ray."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.runtime.guard import alive
from orchestrator.runtime.reconcile import State
from orchestrator.runtime.replica import Replica
from orchestrator.runtime.secrets import ENGINE_KEY_ENV
from tests.unit.runtime.replica_support import replicas

from .test_replica_faults import wait_until

KEY = "replica-test-key"
# A stand-in engine that listens on its --host and, like vLLM, refuses /v1/* without the Bearer VLLM_API_KEY when
# that variable is set.
ENGINE = """\
import http.server, os, sys
host, port = sys.argv[sys.argv.index("--host") + 1], int(sys.argv[sys.argv.index("--port") + 1])
key = os.environ.get("VLLM_API_KEY")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer()
    def answer(self):
        if key and self.path.startswith("/v1") and self.headers.get("Authorization") != "Bearer " + key:
            self.send_response(401); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *args):
        pass

http.server.HTTPServer((host, port), Handler).serve_forever()
"""


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (None where it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the kernel only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def make(tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    with replicas(tmp_path / "logs") as make_replica:
        yield lambda engine: make_replica(["python3", str(script), "--host", "0.0.0.0", "--port", "8000"], engine)


def status(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, b"{}" if "/v1/" in url else None,
                                 {"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def engine_process(r: Replica) -> tuple[list[str], dict[str, str]]:
    proc = Path(f"/proc/{r.engine_pid}")
    argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")
    env = dict(v.split("=", 1) for v in proc.joinpath("environ").read_bytes().decode().split("\0") if "=" in v)
    return argv, env


def test_a_key_checking_engine_gets_the_key_in_its_environment_and_the_probes_send_it(make, monkeypatch):
    monkeypatch.setenv(ENGINE_KEY_ENV, KEY)
    r = make("vllm")
    assert wait_until(lambda: r.state == State.READY, 10), r.logs()  # the one-token probe got through the key
    d = r.describe()
    assert d["proxied"] is False and r.proxy is None and d["url"].endswith(f":{d['enginePort']}")
    argv, env = engine_process(r)
    assert env["VLLM_API_KEY"] == KEY and not any(KEY in a for a in argv)  # ps shows argv, never the key
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--middleware") + 1] == "orchestrator.runtime.vllm_auth.require_key"  # closes /invocations
    url = f"http://127.0.0.1:{d['enginePort']}"
    assert status(url + "/v1/completions") == 401 and status(url + "/v1/completions", KEY) == 200


def test_an_engine_that_checks_no_key_listens_on_loopback_behind_the_proxy(make, monkeypatch):
    monkeypatch.setenv(ENGINE_KEY_ENV, KEY)
    r = make("mlx-lm")
    assert wait_until(lambda: r.state == State.READY, 10), r.logs()
    d = r.describe()
    assert d["proxied"] is True and d["url"] == f"http://{r.host}:{r.proxy.port}" and r.port != d["enginePort"]
    argv, env = engine_process(r)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and "VLLM_API_KEY" not in env
    public = f"http://127.0.0.1:{r.port}"
    assert status(public + "/v1/completions") == 401 and status(public + "/v1/completions", "wrong") == 401
    assert status(public + "/v1/completions", KEY) == 200 and status(public + "/health") == 200
    if address := non_loopback_address():
        with pytest.raises(ConnectionRefusedError), socket.create_connection((address, d["enginePort"]), 2):
            pass
        assert status(f"http://{address}:{r.port}/v1/completions", KEY) == 200  # the proxy listens where planned

    proxy_port, engine = r.port, r.engine_pid
    r.stop()
    assert wait_until(lambda: not r._thread.is_alive(), 10) and not r.proxy.alive and not alive(engine)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", proxy_port), 2):
        pass


def test_a_dead_proxy_fails_the_health_check_and_comes_back_with_the_restarted_engine(make, monkeypatch):
    monkeypatch.setenv(ENGINE_KEY_ENV, KEY)
    r = make("mlx-lm")
    assert wait_until(lambda: r.state == State.READY, 10), r.logs()
    first = r.proxy
    first.stop()
    assert wait_until(lambda: r.state == State.RESTARTING, 12), r.describe()
    assert wait_until(lambda: r.state == State.READY, 15), r.describe()
    assert r.proxy is not first and r.proxy.alive and status(f"http://127.0.0.1:{r.port}/v1/completions", KEY) == 200


@pytest.mark.parametrize("engine", ["vllm", "mlx-lm"])
def test_without_a_key_the_engine_listens_where_the_plan_says_and_checks_nothing(make, monkeypatch, engine):
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    r = make(engine)
    assert wait_until(lambda: r.state == State.READY, 10), r.logs()
    d = r.describe()
    assert r.key is None and d["proxied"] is False and r.proxy is None and r.port == d["enginePort"]
    argv, env = engine_process(r)
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and "VLLM_API_KEY" not in env
    assert status(f"http://127.0.0.1:{r.port}/v1/completions") == 200
