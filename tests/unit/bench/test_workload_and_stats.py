"""Prompts, request bodies and the statistics of a level, on constructed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.bench.stats import RequestResult, percentile, summarise
from orchestrator.bench.workload import Synthetic, Target, read_prompts, request_body
from orchestrator.errors import SpecError


def test_synthetic_prompts_are_deterministic_sized_and_distinct() -> None:
    a, b = Synthetic(100, seed=1), Synthetic(100, seed=1)
    assert a.prompt(5) == b.prompt(5)
    assert a.prompt(5) != a.prompt(6) and Synthetic(100, seed=2).prompt(5) != a.prompt(5)
    assert len(a.prompt(5).as_text().split()) == 100
    assert len(a.rescaled(100, 150).prompt(5).as_text().split()) == 67  # 1.5 tokens a word -> 2/3 of the words


def test_jsonl_prompts_read_both_shapes_and_report_bad_lines_by_number(write) -> None:
    good = write("p.jsonl", '{"prompt": "hello"}\n\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    prompts = read_prompts(good)
    assert prompts.name == "p.jsonl" and len(prompts.prompts) == 2
    assert prompts.prompt(2) == prompts.prompt(0) and prompts.prompt(1).as_messages()[0]["content"] == "hi"
    bad = write("bad.jsonl", '{"prompt": "ok"}\nnot json\n{"messages": []}\n{"prompt": 3}\n')
    with pytest.raises(SpecError) as info:
        read_prompts(bad)
    assert [p.line for p in info.value.problems] == [2, 3, 4]
    assert "not JSON" in info.value.problems[0].message
    with pytest.raises(SpecError, match="no prompts"):
        read_prompts(write("empty.jsonl", "\n"))


def test_request_bodies_stream_with_usage_and_ask_for_the_exact_length() -> None:
    p = Synthetic(4).prompt(0)
    chat = request_body(p, model="m", endpoint="chat", max_tokens=9, ignore_eos=True)
    assert chat["messages"] == [{"role": "user", "content": p.text}] and chat["max_tokens"] == 9
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True} and chat["ignore_eos"]
    text = request_body(p, model="m", endpoint="completions", max_tokens=9, ignore_eos=False)
    assert text["prompt"] == p.text and "messages" not in text and "ignore_eos" not in text


def test_public_url_drops_credentials() -> None:
    assert Target(url="http://u:p@127.0.0.1:8000/x", model="m").public_url == "http://127.0.0.1:8000/x"
    assert Target(url="http://127.0.0.1:8000", model="m").public_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0], list(np.random.default_rng(0).
                                                                                     exponential(size=101))])
def test_percentiles_interpolate_like_numpy(values: list[float]) -> None:
    for q in (0.5, 0.95, 0.99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_a_level_summary_of_constructed_requests() -> None:
    ok1 = RequestResult(0.0, 1.0, 0.2, (0.2, 0.4, 0.6, 1.0), output_tokens=4, prompt_tokens=10)
    ok2 = RequestResult(0.5, 2.0, 0.5, (1.0, 2.0), output_tokens=2, prompt_tokens=20)
    bad = RequestResult(1.0, 1.1, error="http_500")
    level = summarise([ok1, ok2, bad], concurrency=2)
    assert level.requests == 3 and level.errors == {"http_500": 1} and level.error_rate == pytest.approx(1 / 3)
    assert level.duration_s == 2.0
    assert level.output_tokens_per_second == 3.0 and level.requests_per_second == 1.0  # 6 tokens, 2 requests, 2 s
    assert level.ttft_s.p50 == pytest.approx(0.35)
    assert ok1.tpot_s == pytest.approx(0.8 / 3) and ok2.tpot_s == pytest.approx(1.0)
    assert sorted(ok1.itls_s + ok2.itls_s) == pytest.approx([0.2, 0.2, 0.4, 1.0])
    assert level.e2e_s.p99 <= 1.5 and level.mean_prompt_tokens == 15 and level.mean_output_tokens == 3
    json.dumps(level.to_json())


def test_a_level_with_no_success_has_no_latencies() -> None:
    level = summarise([RequestResult(0.0, 0.1, error="connect")], rate=2.0)
    assert level.ttft_s is None and level.e2e_s is None and level.output_tokens_per_second == 0
    assert level.label == "rate 2/s" and level.to_json()["ttftSeconds"] is None
