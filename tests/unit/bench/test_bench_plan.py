"""From `moxin bench --record` to `moxin plan -f bench.yaml`: a document recorded against a static server on 127.0.0.1
(no engine: its figures describe that server) makes a pool without datasheet speed plannable, and the plan names it.
The real chain (`moxin up`'s router and real engines) is not run here; see the report of this change."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.spec import load_catalog

ROOT = Path(__file__).resolve().parents[3]
MEASURED = ROOT / "tests" / "data" / "measured"
FLEET = [str(ROOT / "manifests" / "local" / "tiny-llama.yaml"), str(MEASURED / "nospeed-fleet.yaml")]
LABELS = ["--model-name", "tiny-llama", "--variant", "bf16", "--hardware", "test-nospeed", "--engine", "vllm", "--tp",
          "1", "--pp", "1", "--emulated"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_recorded_benchmark_makes_the_null_speed_pool_plannable(static_server, tmp_path: Path) -> None:
    server = static_server(ttft_s=0.01, itl_s=0.001)
    unmeasured = run("plan", *[a for p in FLEET for a in ("-f", p)])
    assert "UNPLACED tiny-nospeed" in unmeasured.output and "--record -o bench.yaml" in unmeasured.output
    path = tmp_path / "bench.yaml"
    files = [a for p in FLEET for a in ("-f", p)]
    out = run("bench", "--url", server.url, *files, "--deployment", "tiny-nospeed", "--concurrency", "1,2",
              "--requests", "4", "--no-progress", "--record", "-o", str(path), *LABELS, "--name", "static-run")
    assert out.exit_code == 0, out.output
    recorded = load_catalog([*map(Path, FLEET), path]).benchmarks["static-run"]
    assert (recorded.spec.context_tokens, recorded.spec.load.output_tokens) == (2048, 64)
    planned = run("plan", *files, "-f", str(path), "-o", "yaml")
    assert planned.exit_code == 0, planned.output
    assert "measuredBy: static-run" in planned.output and "unplaced: []" in planned.output
    assert "capacity measured by Benchmark static-run" in run("plan", *files, "-f", str(path)).output
