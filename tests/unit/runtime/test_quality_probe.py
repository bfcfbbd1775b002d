"""quality_probe.probe against a small OpenAI stand-in: the request it sends, the logprobs fallback, errors; and
the Ray controller's HttpProbe.answer_prompts, which sends through it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from orchestrator.rollout.quality import compare
from orchestrator.runtime.quality_probe import ProbeError, load_prompts, probe, probe_headers
from orchestrator.runtime.rollout_probe import HttpProbe
from orchestrator.spec.defaults import REPLICA_HEADER
from orchestrator.spec.rollout import Quality
from tests.unit.runtime.router_support import refused_url, serving


class OpenAI:
    """Answers each prompt with its words reversed; with logprobs, one entry per word."""

    def __init__(self, max_top: int | None = None, status: int = 200, shift: bool = False) -> None:
        self.max_top, self.status, self.shift = max_top, status, shift
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.peak = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.status != 200:
            return web.json_response({"error": {"message": "nope"}}, status=self.status)
        if body.get("logprobs") and self.max_top is not None and body["top_logprobs"] > self.max_top:
            return web.json_response({"error": {"message": "top_logprobs too large"}}, status=400)
        words = body["messages"][0]["content"].split()[::-1]
        if self.shift:
            words = words[1:] + words[:1]
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": w, "logprob": -0.1,
                                               "top_logprobs": [{"token": w, "logprob": -0.1},
                                                                {"token": "x", "logprob": -3.0}]}
                                              for w in words]}
        return web.json_response({"choices": [choice]})


PROMPTS = ["a b c", "one two three four", "x y"]
QUALITY = Quality(max_tokens=16, top_logprobs=5, min_exact_match=1.0)


def _run(coro):
    return asyncio.run(coro)


def test_probe_sends_greedy_requests_with_logprobs_and_pinning_headers():
    engine = OpenAI()

    async def go():
        async with serving(engine.app()) as url:
            return await probe(url, PROMPTS, QUALITY, model="tiny", seed=7, concurrency=2,
                               headers=probe_headers(api_key="k1", replica="tiny-canary-0"))

    result = _run(go())
    assert result.logprobs and result.note == ""
    assert [g.text for g in result.generations] == ["c b a", "four three two one", "y x"]
    assert result.generations[0].tokens == ("c", "b", "a")
    body = engine.bodies[0]
    assert {k: body[k] for k in ("model", "temperature", "seed", "max_tokens", "logprobs", "top_logprobs")} == {
        "model": "tiny", "temperature": 0, "seed": 7, "max_tokens": 16, "logprobs": True, "top_logprobs": 5}
    assert {h["Authorization"] for h in engine.headers} == {"Bearer k1"}
    assert {h[REPLICA_HEADER] for h in engine.headers} == {"tiny-canary-0"}
    assert engine.peak <= 2


def test_an_engine_refusing_logprobs_is_asked_again_without_them():
    engine = OpenAI(max_top=3)  # like mlx-lm, which refuses top_logprobs above 11

    async def go():
        async with serving(engine.app()) as url:
            return await probe(url, PROMPTS, QUALITY, model="tiny", concurrency=1)

    result = _run(go())
    assert not result.logprobs and "logprobs refused" in result.note
    assert all(g.tokens is None and g.top is None for g in result.generations)
    assert [g.text for g in result.generations] == ["c b a", "four three two one", "y x"]
    assert not engine.bodies[-1].get("logprobs")


def test_same_answers_pass_and_different_answers_fail_the_comparison():
    same, other = OpenAI(), OpenAI(shift=True)

    async def go():
        async with serving(same.app()) as a, serving(other.app()) as b:
            return (await probe(a, PROMPTS, QUALITY, model="m"), await probe(a, PROMPTS, QUALITY, model="m"),
                    await probe(b, PROMPTS, QUALITY, model="m"))

    stable, again, shifted = _run(go())
    assert compare(PROMPTS, stable.generations, again.generations, QUALITY).exact_match_rate == 1.0
    report = compare(PROMPTS, stable.generations, shifted.generations, QUALITY)
    assert not report.passed and report.exact_match_rate == 0.0 and report.first_divergence_min == 0


@pytest.mark.parametrize("status, hint", [(401, "API key"), (404, "model name")])
def test_a_refusal_other_than_logprobs_is_an_error_with_a_hint(status, hint):
    async def go():
        async with serving(OpenAI(status=status).app()) as url:
            await probe(url, PROMPTS, QUALITY, model="tiny")

    with pytest.raises(ProbeError, match=f"answered {status}.*\n.*{hint}"):
        _run(go())


def test_an_unreachable_side_is_an_error():
    with pytest.raises(ProbeError, match="reachable"):
        _run(probe(refused_url(), PROMPTS, QUALITY, model="tiny", timeout_s=5))


def test_prompts_builtin_or_from_a_file_next_to_the_rollout(tmp_path):
    assert len(load_prompts(Quality())) == 12
    (tmp_path / "golden.jsonl").write_text('{"prompt": "hi"}\nplain line\n\n')
    assert load_prompts(Quality(prompts="golden.jsonl"), tmp_path) == ["hi", "plain line"]
    with pytest.raises(ProbeError, match="To fix"):
        load_prompts(Quality(prompts="missing.txt"), tmp_path)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(ProbeError, match="line 1"):
        load_prompts(Quality(prompts="bad.jsonl"), tmp_path)


def test_the_controllers_probe_sends_the_golden_prompts_with_its_engine_key():
    """``rollout_probe.HttpProbe.answer_prompts`` (the Ray controller's quality gate) is ``probe`` with the engine
    key."""
    engine = OpenAI()

    async def go():
        async with serving(engine.app()) as url:
            return await asyncio.to_thread(HttpProbe("k2").answer_prompts, url, "tiny", PROMPTS, QUALITY)

    answers = _run(go())
    assert [g.text for g in answers] == ["c b a", "four three two one", "y x"]
    assert {h["Authorization"] for h in engine.headers} == {"Bearer k2"}
    assert all(b["logprobs"] and b["temperature"] == 0 for b in engine.bodies)
