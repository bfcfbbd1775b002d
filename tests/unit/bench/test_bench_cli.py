"""`moxin bench` end to end against static servers on 127.0.0.1: outputs, the SVG plot, recording from flags
and from moxin's router, the API key kept out of every output."""

from __future__ import annotations

import asyncio
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.spec import load_catalog
from orchestrator.spec.catalog import local_example_dir

FAST = ["--requests", "4", "--output-tokens", "8", "--prompt-tokens", "16", "--no-progress"]
MLX_FLAGS = ["--model-name", "tiny-llama", "--variant", "mlx-3bit", "--hardware", "apple-m2-max-64g",
             "--engine", "mlx-lm", "-f", str(local_example_dir())]
LABELS = {"deployment": "tiny-chat", "model": "tiny-llama", "variant": "bf16", "pool": "gpu-emu",
          "hardware": "nvidia-h100-sxm", "engine": "vllm", "emulated": "true"}


def bench(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["bench", *args], env=env, catch_exceptions=False)


def test_json_and_yaml_results_have_one_entry_per_level(static_server) -> None:
    server = static_server(ttft_s=0.01)
    out = bench("--url", server.url, "--model", "m", "--concurrency", "1,2", "--rate", "50", *FAST, "-o", "json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [(lv["concurrency"], lv["rate"], lv["requests"]) for lv in data["levels"]] == [(1, None, 4), (2, None, 4),
                                                                                       (None, 50.0, 4)]
    assert data["levels"][0]["ttftSeconds"]["p50"] >= 0.01 and data["prompts"] == "synthetic"
    out = bench("--url", server.url, "--model", "m", "--concurrency", "3", *FAST, "-o", "yaml")
    assert yaml.safe_load(out.stdout)["levels"][0]["concurrency"] == 3


def test_the_table_and_the_svg_curve(static_server, tmp_path: Path) -> None:
    server = static_server(ttft_s=0.01, itl_s=0.001, fail_every=5)
    svg = tmp_path / "curve.svg"
    out = bench("--url", server.url, "--model", "m", "--concurrency", "1,2,4", *FAST, "--plot", str(svg),
                "--warmup", "0")
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("c=")}
    assert set(lines) == {"c=1", "c=2", "c=4"}
    assert "http_500" in out.stdout  # requests 5, 10: one failure in each of the first two levels
    root = ET.fromstring(svg.read_text())
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 6  # three levels, two panels
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert titles[0].startswith("c=1: ") and "tok/s" in titles[0]


def test_record_writes_a_benchmark_the_loader_accepts_and_keeps_the_key_out(static_server, tmp_path: Path) -> None:
    server = static_server(api_key="sekret-123", ttft_s=0.01)
    path = tmp_path / "bench.yaml"
    out = bench("--url", server.url, "--model", "default_model", "--concurrency", "1,2", *FAST, "--record",
                "-o", str(path), *MLX_FLAGS, "--emulated", "--name", "mac-run", env={"MOXIN_API_KEY": "sekret-123"})
    assert out.exit_code == 0, out.output
    assert "sekret-123" not in out.output + path.read_text()
    doc = load_catalog([local_example_dir(), path]).benchmarks["mac-run"]
    assert (doc.spec.engine, doc.spec.tensor_parallel, doc.spec.where.emulated) == ("mlx-lm", 1, True)
    assert [p.concurrency for p in doc.spec.curve] == [1, 2] and all(p.error_rate == 0 for p in doc.spec.curve)
    assert doc.spec.source.command.startswith(f"moxin bench --url {server.url} --model default_model")
    key_file = tmp_path / "key"
    key_file.write_text("sekret-123\n")
    out = bench("--url", server.url, "--model", "m", "--concurrency", "1", *FAST, "--api-key-file", str(key_file),
                "-o", "json")
    assert json.loads(out.stdout)["levels"][0]["errors"] == {}


def test_traffic_comes_from_a_deployment(static_server) -> None:
    server = static_server()
    out = bench("--url", server.url, "-f", str(local_example_dir()), "--deployment", "tiny-chat", "--concurrency",
                "1", "--requests", "2", "--no-progress", "-o", "json")
    assert out.exit_code == 0, out.output
    body = server.server.bodies[-1]
    assert body["model"] == "tiny-chat" and body["max_tokens"] == 64  # traffic: 200 prompt, 64 output tokens
    assert json.loads(out.stdout)["levels"][0]["meanPromptTokens"] == 200


def test_prompts_from_a_jsonl_file(static_server, write) -> None:
    server = static_server()
    prompts = write("p.jsonl", '{"prompt": "one two three"}\n{"messages": [{"role": "user", "content": "x y"}]}\n')
    out = bench("--url", server.url, "--model", "m", "--prompts", str(prompts), "--concurrency", "1",
                "--requests", "3", "--warmup", "0", "--no-progress", "-o", "json")
    assert out.exit_code == 0, out.output
    assert [b["messages"][-1]["content"] for b in server.server.bodies] == ["one two three", "x y", "one two three"]
    assert json.loads(out.stdout)["prompts"] == "p.jsonl"


@pytest.mark.parametrize("args, fragment", [
    (["--record"], "--record writes a Benchmark document"),
    (["--record", "-o", "yaml"], "--record needs the replica's --model-name, --variant, --hardware, --engine"),
    (["--record", "-o", "yaml", "--model-name", "tiny-llama", "--variant", "bf16", "--hardware", "nvidia-h100-sxm",
      "--engine", "vllm"], "--tp, --pp"),
    (["-o", "bench.txt"], "expected table, json, yaml, or a file"),
    (["--concurrency", "1,0"], "comma-separated list of numbers > 0"),
    (["--prompts", __file__, "--prompt-tokens", "5"], "exclude each other"),
    (["--from-status"], "add --record"),
])
def test_usage_errors_before_any_request(static_server, args: list[str], fragment: str) -> None:
    server = static_server()
    out = bench("--url", server.url, "--model", "m", *args)
    assert out.exit_code == 2 and fragment in out.output, out.output
    assert server.server.bodies == []


def test_recording_refuses_references_the_catalog_does_not_know(static_server) -> None:
    server = static_server()
    flags = [f if f != "mlx-3bit" else "bf61" for f in MLX_FLAGS]
    out = bench("--url", server.url, "--model", "m", "--record", "-o", "yaml", *flags)
    assert out.exit_code == 2 and "has no variant 'bf61'" in out.output and "did you mean" in out.output
    assert server.server.bodies == []


@pytest.fixture
def router(static_server) -> Iterator:
    """moxin's router (runtime.router.Router) on 127.0.0.1, in front of static servers; call with rows' labels."""
    from orchestrator.runtime.dataplane import serve
    from orchestrator.runtime.router import Router

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    runners = []

    def start(*labels: dict[str, str], keys: object = None, others: tuple[str, ...] = ()) -> tuple[str, object]:
        upstream = static_server(ttft_s=0.01)
        r = Router(keys=keys)
        rows = {"tiny-chat": labels, **{name: (LABELS,) for name in others}}
        r.set_table({d: [{"name": f"{d}-{i}", "url": upstream.url, "requestModel": "tiny", "weight": 1.0,
                          "labels": {**lab, "deployment": d}} for i, lab in enumerate(labs)] for d, labs in rows.items()})
        runner = asyncio.run_coroutine_threadsafe(serve(r, "127.0.0.1", 0, reuse_port=False), loop).result(10)
        runners.append(runner)
        return f"http://127.0.0.1:{runner.port}", upstream

    yield start
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def test_record_from_status_takes_the_labels_from_the_router(router, tmp_path: Path) -> None:
    url, upstream = router(LABELS)
    path = tmp_path / "b.json"
    out = bench("--url", url, "--model", "tiny-chat", "--concurrency", "1", *FAST, "--record", "--from-status",
                "--tp", "1", "--pp", "1", "-o", str(path), "-f", str(local_example_dir()))
    assert out.exit_code == 0, out.output
    spec = json.loads(path.read_text())["spec"]
    assert (spec["model"], spec["variant"], spec["hardware"], spec["engine"], spec["deployment"]) == (
        "tiny-llama", "bf16", "nvidia-h100-sxm", "vllm", "tiny-chat")
    assert spec["where"]["emulated"] is True and spec["where"]["throughRouter"] is True
    assert upstream.server.bodies[-1]["model"] == "tiny"  # the router rewrote the name: the load went through it
    missing = bench("--url", url, "--model", "tiny-chat", *FAST, "--record", "--from-status", "-o", "yaml")
    assert missing.exit_code == 2 and "--tp, --pp" in missing.output


def test_record_from_status_refuses_a_deployment_of_several_replicas(router) -> None:
    url, upstream = router(LABELS, {**LABELS, "hardware": "apple-m2-max-64g", "engine": "mlx-lm"})
    out = bench("--url", url, "--model", "tiny-chat", *FAST, "--record", "--from-status", "--tp", "1", "--pp", "1",
                "-o", "yaml")
    assert out.exit_code == 1 and "has 2 ready replicas" in out.output and "apple-m2-max-64g" in out.output
    assert upstream.server.bodies == []


def test_a_missing_key_stops_at_the_warm_up_with_what_to_do(static_server) -> None:
    server = static_server(api_key="k")
    out = bench("--url", server.url, "--model", "m", *FAST, env={"MOXIN_API_KEY": ""})
    assert out.exit_code == 1 and "http_401" in out.output and "$MOXIN_API_KEY or --api-key-file" in out.output
    assert len(server.server.bodies) == 1


def test_the_routes_a_key_may_not_see_stay_hidden_and_from_status_sends_the_key(router, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from orchestrator.runtime.keys import KeyRing, create_key

    key_file = tmp_path / "keys.yaml"
    key = create_key(key_file, "bench", ("tiny-chat",))
    url, _ = router(LABELS, keys=KeyRing(key_file), others=("secret-deployment",))
    request = urllib.request.Request(url + "/moxin/routes", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert list(json.loads(resp.read())["deployments"]) == ["tiny-chat"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/moxin/routes", timeout=10)
    assert refused.value.code == 401
    out = bench("--url", url, "--model", "tiny-chat", "--concurrency", "1", *FAST, "--record", "--from-status",
                "--tp", "1", "--pp", "1", "-o", "json", "-f", str(local_example_dir()), env={"MOXIN_API_KEY": key})
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["spec"]["hardware"] == "nvidia-h100-sxm" and key not in out.output
