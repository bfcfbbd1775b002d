"""`moxin bench --record` against a real engine: mlx-lm's server (MLX CPU backend) serving the tiny Llama.

The whole command runs as a user would run it (a subprocess), and its Benchmark goes back through the loader
with the catalog's tiny-llama. Under a minute: the model is 17M parameters and mlx-lm starts in seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.spec import load_catalog
from orchestrator.spec.catalog import local_example_dir

from .conftest import TINY
from .engines import free_port, serve

pytestmark = pytest.mark.integration
pytest.importorskip("mlx_lm", reason="mlx-lm is installed by `make test` (extra 'cpu')")
pytest.importorskip("aiohttp", reason="aiohttp is in the ray extra")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_bench_records_a_valid_benchmark_of_a_real_mlx_lm_server(tmp_path: Path) -> None:
    from orchestrator.devtools.tiny_model import generate

    model = generate(out=tmp_path / "tiny-llama", **TINY["llama"])
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "bench.yaml"
    with serve(argv, env, tmp_path / "mlx.log", port, timeout=60) as server:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "bench", "--url", server.url, "--model", "default_model",
             "--concurrency", "1,2", "--requests", "4", "--prompt-tokens", "32", "--output-tokens", "8",
             "--no-progress", "--record", "-o", str(out), "--name", "tiny-mlx", "-f", str(local_example_dir()),
             "--model-name", "tiny-llama", "--variant", "bf16", "--hardware", "apple-m2-max-64g",
             "--engine", "mlx-lm", "--emulated"],
            capture_output=True, text=True, timeout=90, cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr + server.log_text()[-2000:]
    doc = load_catalog([local_example_dir(), out]).benchmarks["tiny-mlx"]
    spec = doc.spec
    assert (spec.model, spec.variant, spec.engine, spec.tensor_parallel, spec.where.emulated) == (
        "tiny-llama", "bf16", "mlx-lm", 1, True)
    assert [p.concurrency for p in spec.curve] == [1, 2]
    for point in spec.curve:
        assert point.requests == 4 and point.error_rate == 0, point
        assert 0 < point.ttft_seconds.p50 <= point.e2e_seconds.p50 and point.output_tokens_per_second > 0
    # The warm-up read mlx-lm's own prompt count (chat template included) and resized the synthetic prompts.
    assert 24 <= spec.load.prompt_tokens <= 40, spec.load
    assert 1 <= spec.load.output_tokens <= 8  # mlx-lm ignores ignore_eos: random weights may stop early
    assert "c=1" in done.stdout and "c=2" in done.stdout
