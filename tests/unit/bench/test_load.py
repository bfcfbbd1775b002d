"""The load generator against a static server whose pace is known: the figures it reports are the server's."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from orchestrator.bench.load import sweep
from orchestrator.bench.workload import FromFile, Level, Prompt, Stop, Synthetic, Target
from orchestrator.errors import MoxinError

TTFT, ITL, TOKENS = 0.05, 0.01, 16
E2E = TTFT + ITL * (TOKENS - 1)  # 0.2 s: the server's pace, the fastest a request can be


def run(url: str, levels: list[Level], stop: Stop, workload=None, output_tokens: int = TOKENS, **kw):
    target = Target(url=url, model="static", **{k: kw.pop(k) for k in ("api_key", "endpoint", "ignore_eos",
                                                                     "timeout_s") if k in kw})
    return asyncio.run(sweep(target, levels, stop, workload or Synthetic(32), output_tokens, **kw))


def test_latencies_and_throughput_are_the_servers_pace(static_server) -> None:
    server = static_server(ttft_s=TTFT, itl_s=ITL)
    result = run(server.url, [Level(concurrency=1), Level(concurrency=4)], Stop(requests=12))
    for level in result.levels:
        assert level.requests == 12 and level.errors == {}
        # Never faster than the server's pace; slower only by the client's and server's own cost.
        assert TTFT - 0.002 <= level.ttft_s.p50 <= TTFT + 0.025, level.ttft_s
        assert ITL * 0.9 <= level.tpot_s.p50 <= ITL * 1.2, level.tpot_s
        assert E2E - 0.002 <= level.e2e_s.p50 <= E2E + 0.04, level.e2e_s
        assert level.mean_output_tokens == TOKENS
        expected = level.concurrency * TOKENS / E2E  # tokens/s when every stream is always busy
        assert 0.75 * expected <= level.output_tokens_per_second <= 1.02 * expected, (level.concurrency, expected)
        assert level.requests_per_second == pytest.approx(level.output_tokens_per_second / TOKENS)
    c1, c4 = result.levels
    assert c4.output_tokens_per_second / c1.output_tokens_per_second == pytest.approx(4, rel=0.2)


def test_the_sweep_runs_concurrency_then_rate_levels_with_prompts_never_repeated(static_server) -> None:
    server = static_server()
    levels = [Level(concurrency=1), Level(concurrency=3), Level(rate=50.0)]
    result = run(server.url, levels, Stop(requests=7), warmup=2)
    assert [(lv.concurrency, lv.rate, lv.requests) for lv in result.levels] == [(1, None, 7), (3, None, 7),
                                                                                (None, 50.0, 7)]
    bodies = server.server.bodies
    assert len(bodies) == 2 + 3 * 7
    firsts = sorted(int(b["messages"][0]["content"].split()[0]) for b in bodies)
    assert firsts == list(range(23))  # a global index opens every prompt: no shared prefix
    body = bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == TOKENS and body["ignore_eos"] is True and body["model"] == "static"


def test_a_duration_ends_a_level(static_server) -> None:
    server = static_server(ttft_s=0.0, itl_s=0.01)  # 0.15 s per request
    result = run(server.url, [Level(concurrency=2)], Stop(duration_s=0.6), warmup=0)
    level = result.levels[0]
    # 2 streams x (0.6 s / 0.15 s) = 8 requests started before the deadline, give or take one per stream.
    assert 4 <= level.requests <= 10, level.requests
    assert level.duration_s < 0.6 + 0.15 + 0.1


def test_rate_levels_send_poisson_arrivals_on_the_seeded_schedule(static_server) -> None:
    server = static_server(ttft_s=0.0, itl_s=0.001)
    rate, n = 10.0, 12
    result = run(server.url, [Level(rate=rate)], Stop(requests=n), warmup=0, seed=7)
    starts = sorted(r.start_s for r in result.levels[0].results)
    sent = [b - starts[0] for b in starts]
    rng = random.Random(7)
    due = [0.0]
    for _ in range(n - 1):
        due.append(due[-1] + rng.expovariate(rate))
    # Each request leaves when the schedule says (a shared 2-core machine wakes a sleeper a little late).
    assert max(abs(a - b) for a, b in zip(sent, due, strict=True)) < 0.04, (sent, due)


def test_errors_are_counted_by_kind(static_server) -> None:
    server = static_server(itl_s=0.001, fail_every=3, cut_every=4)
    level = run(server.url, [Level(concurrency=1)], Stop(requests=12), warmup=0).levels[0]
    # Requests 3, 6, 9, 12 answer 500; 4 and 8 are cut halfway (12 failed first).
    assert level.errors == {"http_500": 4, "cut_stream": 2}
    assert level.succeeded == 6 and level.error_rate == 0.5
    assert level.mean_output_tokens == TOKENS  # only successful requests count


def test_a_server_that_is_not_there_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        level = run(f"http://127.0.0.1:{port}", [Level(concurrency=2)], Stop(requests=4), warmup=0).levels[0]
    assert level.errors == {"connect": 4} and level.ttft_s is None and level.output_tokens_per_second == 0


def test_a_request_slower_than_the_timeout_is_a_timeout(static_server) -> None:
    server = static_server(ttft_s=3.0)
    level = run(server.url, [Level(concurrency=1)], Stop(requests=1), warmup=0, timeout_s=1.0).levels[0]
    assert level.errors == {"timeout": 1}


@pytest.mark.parametrize("fields, fragment", [({"api_key": "k"}, "http_401"), ({"fail_every": 1}, None)])
def test_a_warm_up_refused_for_a_setup_reason_stops_the_sweep(static_server, fields, fragment) -> None:
    server = static_server(**fields)
    if fragment is None:  # a server error is load, not setup: the sweep goes on and counts it
        assert run(server.url, [Level(concurrency=1)], Stop(requests=2)).levels[0].errors == {"http_500": 2}
        return
    with pytest.raises(MoxinError, match="warm-up request .* failed \\(http_401\\); nothing was measured. give"):
        run(server.url, [Level(concurrency=1)], Stop(requests=2))
    assert len(server.server.bodies) == 1


def test_the_api_key_is_sent_as_a_bearer_token(static_server) -> None:
    server = static_server(api_key="sekret")
    ok = run(server.url, [Level(concurrency=1)], Stop(requests=2), warmup=0, api_key="sekret").levels[0]
    refused = run(server.url, [Level(concurrency=1)], Stop(requests=2), warmup=0).levels[0]
    assert ok.errors == {} and refused.errors == {"http_401": 2}
    assert server.server.headers[0]["Authorization"] == "Bearer sekret"
    assert "sekret" not in repr(Target(url=server.url, model="m", api_key="sekret"))


def test_synthetic_prompts_are_resized_to_the_servers_token_count(static_server) -> None:
    server = static_server(tokens_per_word=2.0)  # a tokenizer that splits every word in two
    level = run(server.url, [Level(concurrency=1)], Stop(requests=4), Synthetic(64)).levels[0]
    assert len(server.server.bodies[0]["messages"][0]["content"].split()) == 64  # the warm-up, before
    assert level.mean_prompt_tokens == pytest.approx(64, abs=1)  # after: 32 words, 64 tokens


def test_prompts_from_a_file_go_out_in_turn_on_either_endpoint(static_server) -> None:
    server = static_server()
    chat = (Prompt(messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})),
            Prompt(text="tell me more"))
    run(server.url, [Level(concurrency=1)], Stop(requests=3), FromFile(chat, "p.jsonl"), warmup=0)
    run(server.url, [Level(concurrency=1)], Stop(requests=1), FromFile(chat[1:], "p.jsonl"), warmup=0,
        endpoint="completions", ignore_eos=False)
    bodies = server.server.bodies
    assert [len(b["messages"]) for b in bodies[:3]] == [2, 1, 2]
    assert bodies[1]["messages"] == [{"role": "user", "content": "tell me more"}]
    assert bodies[3]["prompt"] == "tell me more" and "ignore_eos" not in bodies[3]
