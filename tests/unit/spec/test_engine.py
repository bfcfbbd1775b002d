"""spec/engine.py: the engine settings and limits every layer reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec.engine import EngineSettings


def test_each_engine_has_its_own_sequence_limit() -> None:
    s = EngineSettings()
    assert s.max_seqs("vllm") == s.max_seqs("vllm-metal") == s.max_num_seqs == 256
    assert s.max_seqs("mlx-lm") == s.mlx_decode_concurrency == 32


def test_default_context_stays_within_the_model() -> None:
    s = EngineSettings()
    assert s.context(131072) == 8192 and s.context(4096) == 4096 and s.context(131072, 100) == 100


@pytest.mark.parametrize("field, bad", [("gpu_memory_utilization", 0), ("gpu_memory_utilization", 1.5),
                                        ("max_num_seqs", 0), ("cpu_kv_cache_gib", -1)])
def test_settings_refuse_values_outside_their_bounds(field: str, bad: float) -> None:
    with pytest.raises(ValidationError):
        EngineSettings(**{field: bad})
