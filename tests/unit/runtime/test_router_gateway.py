"""The router's gateway features against real engines (aiohttp servers on 127.0.0.1): retries of a 429 on another
replica, the circuit breaker and its metric, the concurrency limit's queue, request ids, the rate limit per API
key, active health checks; and the relay's byte-level handling of SSE blocks."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout, web
from pydantic import ValidationError

from orchestrator.runtime.gateway import Breakers, TokenBuckets, backoff_seconds
from orchestrator.runtime.keys import KeyRing, create_key
from orchestrator.runtime.relay import Relay
from orchestrator.runtime.router import Router
from orchestrator.spec.router import RouterLimits
from tests.unit.runtime.router_support import Engine, metric, refused_url, row, serving
from tests.unit.runtime.test_router import CHAT, MESSAGES, post, routed, run, scrape

BODY = {"model": "d", "messages": MESSAGES}


def test_a_429_goes_to_another_replica_and_with_no_try_left_the_client_gets_the_replicas_429():
    async def scenario():
        busy, ok = Engine("m", mode="status-429"), Engine("m")
        for attempts, want in ((3, 200), (1, 429)):
            router = Router(limits=RouterLimits(retry_attempts=attempts, retry_backoff_seconds=0.001))
            async with serving(busy.app()) as busy_url, serving(ok.app()) as ok_url, \
                    serving(router) as url, ClientSession() as s:
                # the busy replica has far more capacity: the balancer tries it first
                router.set_table({"d": [row("busy", busy_url, "m", 1000.0), row("ok", ok_url, "m", 1.0)]})
                before = len(ok.seen)
                status, body, _ = await post(s, url, BODY)
                assert status == want, body
                if want == 200:
                    assert len(ok.seen) == before + 1 and body["model"] == "d"
                    assert metric(await scrape(s, url), "moxin_router_retries_total", replica="") == 0
                    assert metric(await scrape(s, url), "moxin_router_retries_total", deployment="d") == 1
                else:
                    assert len(ok.seen) == before and body["error"]["message"] == "engine says no"
        assert len(busy.seen) == 2

    run(scenario())


def test_the_circuit_opens_after_consecutive_failures_keeps_the_replica_out_then_a_probe_closes_it():
    async def scenario():
        bad, other = Engine("m", mode="status-500"), Engine("m")
        limits = RouterLimits(circuit_failure_threshold=2, circuit_cooldown_seconds=0.4, retry_attempts=1)
        router = Router(limits=limits)
        pin = {"X-Moxin-Replica": "bad"}
        async with serving(bad.app()) as bad_url, serving(other.app()) as other_url, \
                serving(router) as url, ClientSession() as s:
            router.set_table({"d": [row("bad", bad_url, "m"), row("other", other_url, "m")]})
            for _ in range(2):
                status, _, _ = await post(s, url, BODY, **pin)
                assert status == 500
            assert metric(await scrape(s, url), "moxin_router_circuit_open", replica="bad") == 1
            assert metric(await scrape(s, url), "moxin_router_circuit_open", replica="other") == 0
            status, _, _ = await post(s, url, BODY, **pin)  # open: the replica is not even asked
            assert status == 503 and len(bad.seen) == 2
            status, _, _ = await post(s, url, BODY)  # unpinned: the other replica answers
            assert status == 200 and len(other.seen) == 1
            bad.mode = "ok"
            await asyncio.sleep(0.5)  # past the cooldown: one probe goes through and succeeds
            status, _, _ = await post(s, url, BODY, **pin)
            assert status == 200 and len(bad.seen) == 3
            assert metric(await scrape(s, url), "moxin_router_circuit_open", replica="bad") == 0

    run(scenario())


def test_a_failed_probe_opens_the_circuit_again_and_a_429_never_opens_it():
    breakers = Breakers(threshold=2, cooldown_s=10.0)
    assert not breakers.failure("r", now=0.0) and breakers.failure("r", now=1.0)
    assert breakers.blocked("r", now=5.0) and not breakers.blocked("r", now=11.5)
    breakers.begin("r", now=11.5)  # the probe
    assert breakers.blocked("r", now=11.6)  # one probe at a time
    assert not breakers.failure("r", now=12.0)  # already open: reopened, not newly opened
    assert breakers.blocked("r", now=21.0) and not breakers.blocked("r", now=22.5)
    assert Breakers(threshold=0, cooldown_s=1.0).failure("r", now=0.0) is False

    async def scenario():
        busy = Engine("m", mode="status-429")
        async with routed({"d": busy}, limits=RouterLimits(circuit_failure_threshold=1, retry_attempts=1)) \
                as (_, url, s):
            for _ in range(3):
                status, _, _ = await post(s, url, BODY)
                assert status == 429
            assert len(busy.seen) == 3
            assert metric(await scrape(s, url), "moxin_router_circuit_open", replica="d-0") == 0

    run(scenario())


def test_past_the_concurrency_limit_and_its_queue_a_request_is_a_503_with_retry_after():
    async def scenario():
        slow = Engine("m", headers_s=0.6)
        limits = RouterLimits(max_concurrent_requests=1, max_queued_requests=1, queue_timeout_seconds=5)
        async with routed({"d": slow}, limits=limits) as (_, url, s):
            first = asyncio.create_task(post(s, url, BODY))
            await asyncio.sleep(0.15)
            queued = asyncio.create_task(post(s, url, BODY))
            await asyncio.sleep(0.15)
            t0 = time.monotonic()
            status, body, headers = await post(s, url, BODY)
            assert status == 503 and time.monotonic() - t0 < 0.4  # refused at once, not after a wait
            assert body["error"]["code"] == "router_overloaded" and int(headers["Retry-After"]) >= 1
            assert [(await first)[0], (await queued)[0]] == [200, 200]
            assert slow.most_active == 1 and len(slow.seen) == 2

    run(scenario())


def test_a_queued_request_that_waits_past_the_queue_timeout_is_a_503():
    async def scenario():
        slow = Engine("m", headers_s=1.0)
        limits = RouterLimits(max_concurrent_requests=1, max_queued_requests=5, queue_timeout_seconds=0.2)
        async with routed({"d": slow}, limits=limits) as (_, url, s):
            first = asyncio.create_task(post(s, url, BODY))
            await asyncio.sleep(0.1)
            status, body, headers = await post(s, url, BODY)
            assert status == 503 and "Retry-After" in headers
            assert (await first)[0] == 200 and len(slow.seen) == 1

    run(scenario())


def rid(headers: dict[str, str]) -> str:
    """The X-Request-Id header, whatever its case on the wire (HTTP header names are case-insensitive)."""
    return {k.lower(): v for k, v in headers.items()}["x-request-id"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_id_reaches_the_engine_and_comes_back_to_the_client(stream):
    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}) as (_, url, s):
            body = {**BODY, "stream": stream}
            _, _, headers = await post(s, url, body, **{"X-Request-Id": "client-chose-this-1"})
            assert rid(headers) == "client-chose-this-1"
            assert rid(engine.seen[-1]["headers"]) == "client-chose-this-1"
            ids = []
            for given in ({}, {"X-Request-Id": "has spaces in it"}, {"X-Request-Id": "x" * 200}):
                _, _, headers = await post(s, url, body, **given)
                ids.append(rid(headers))
                assert rid(engine.seen[-1]["headers"]) == rid(headers)
            assert len(set(ids)) == 3 and "has spaces in it" not in ids and all(ids)
            status, _, headers = await post(s, url, {"model": "nope", "messages": MESSAGES},
                                            **{"X-Request-Id": "err-1"})
            assert status == 404 and rid(headers) == "err-1"  # errors carry it too

    run(scenario())


def keys(tmp_path: Path) -> tuple[KeyRing, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    made = {"a": create_key(path, "a"), "b": create_key(path, "b")}
    return KeyRing(path, check_every_s=0.0), made


def test_a_key_past_its_rate_limit_gets_a_429_with_retry_after_and_other_keys_do_not(tmp_path):
    ring, made = keys(tmp_path)

    async def scenario():
        engine = Engine("m")
        limits = RouterLimits(key_requests_per_second=0.5, key_burst=2)
        async with routed({"d": engine}, keys=ring, limits=limits) as (_, url, s):
            auth = {"Authorization": f"Bearer {made['a']}"}
            got = [(await post(s, url, BODY, **auth)) for _ in range(3)]
            assert [g[0] for g in got] == [200, 200, 429]
            status, body, headers = got[2]
            assert body["error"]["code"] == "rate_limit_exceeded" and 1 <= int(headers["Retry-After"]) <= 2
            status, _, _ = await post(s, url, BODY, Authorization=f"Bearer {made['b']}")
            assert status == 200 and len(engine.seen) == 3
            assert metric(await scrape(s, url), "moxin_router_key_requests_total", key="a", code="429") == 1

    run(scenario())


def test_a_token_bucket_refills_at_its_rate():
    buckets = TokenBuckets(rate_per_s=2.0, size=1.0)
    assert buckets.take("k", now=0.0) == 0
    assert buckets.take("k", now=0.1) == pytest.approx(0.4)  # 0.2 of a token back: 0.8 missing at 2/s
    assert buckets.take("k", now=0.6) == 0


def test_backoff_doubles_per_retry_is_capped_and_jittered_between_half_and_all():
    rng = random.Random(7)
    waits = [[backoff_seconds(n, 0.01, 0.05, rng) for _ in range(200)] for n in (1, 2, 3, 4)]
    for n, full in zip((1, 2, 3, 4), (0.01, 0.02, 0.04, 0.05), strict=True):
        got = waits[n - 1]
        assert min(got) >= full / 2 and max(got) <= full and max(got) - min(got) > full / 4


async def ok_health(_request: web.Request) -> web.Response:
    return web.json_response({})


def test_health_checks_mark_a_failing_replica_down_and_it_gets_requests_only_when_none_is_up():
    async def scenario():
        healthy = web.Application()
        healthy.router.add_get("/health", ok_health)
        router = Router(limits=RouterLimits(health_check_interval_seconds=0.05), health_checks=True)
        async with serving(healthy) as up_url, serving(router) as _:
            gone = refused_url()
            router.set_table({"d": [row("up", up_url, "m", 1.0), row("gone", gone, "m", 1000.0)]})
            await asyncio.sleep(0.3)  # the router's own loop checks every 50 ms
            eps = {e.name: e for e in router.balancer.table["d"]}
            assert eps["gone"].down and not eps["up"].down
            assert router.balancer.pick("d", set(), time.monotonic()).name == "up"
            assert router.balancer.pick("d", {"up"}, time.monotonic()).name == "gone"  # nothing else left

    run(scenario())


@pytest.mark.parametrize("field, value", [("retry_attempts", 0), ("circuit_cooldown_seconds", 0),
                                          ("max_queued_requests", -1), ("key_requests_per_second", -1.0)])
def test_bad_router_limits_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as exc:
        RouterLimits(**{field: value})
    assert exc.value.errors()[0]["loc"] == (field,)


def test_a_first_backoff_above_its_maximum_is_refused_saying_what_to_change():
    with pytest.raises(ValidationError, match="retryBackoffSeconds .* is above retryBackoffMaxSeconds"):
        RouterLimits.model_validate({"retryBackoffSeconds": 1.0, "retryBackoffMaxSeconds": 0.5})


def sse(*chunks: dict, done: bool = True, spaced: bool = False) -> bytes:
    seps = (", ", ": ") if spaced else (",", ":")
    lines = [b"data: " + json.dumps(c, separators=seps).encode() + b"\n\n" for c in chunks]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def chunk(model: str, content: str | None = "tok", usage: dict | None = None) -> dict:
    body = {"id": "c", "model": model,
            "choices": [] if content is None else [{"index": 0, "delta": {"content": content}}]}
    if usage:
        body["usage"] = usage
    return body


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("engine_says", ["m", "something-else"])
def test_the_relay_names_the_deployment_counts_content_and_hides_the_usage_chunk_not_asked_for(spaced, engine_says):
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    block = sse(chunk(engine_says, ""), chunk(engine_says, 'say "model": "m"'), chunk(engine_says),
                chunk(engine_says, None, usage), spaced=spaced)
    relay = Relay("d", "m", wants_usage=False)
    out, found = relay.feed(block)
    events = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: {")]
    assert [e["model"] for e in events] == ["d", "d", "d"]
    assert events[1]["choices"][0]["delta"]["content"] == 'say "model": "m"'  # generated text is left alone
    assert found and relay.usage == usage and relay.done  # the usage holds the count: only "content came" is asked
    assert b"\n\n\n" not in out and out.endswith(b"data: [DONE]\n\n")
    kept, _ = Relay("d", "m", wants_usage=True).feed(block)
    assert kept.count(b'"usage"') == 1
    bare = Relay("d", "m", wants_usage=False)  # an engine that sends no usage: its content chunks are counted
    _, found = bare.feed(sse(chunk(engine_says, ""), chunk(engine_says, 'say "model": "m"'), chunk(engine_says),
                             spaced=spaced))
    assert found == 2 and bare.chunks == 2 and bare.usage is None


def test_with_a_usage_in_every_chunk_the_relay_keeps_the_latest():
    """vLLM's continuous usage stats: each chunk carries the counts so far; a block of several gives its last."""
    block = sse(*(chunk("m", "tok", {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n})
                  for n in (1, 2, 3)), done=False)
    relay = Relay("m", "m", wants_usage=True)
    out, _ = relay.feed(block)
    assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert out == block  # chunks with choices are the client's, usage and all


def test_the_relay_does_not_take_done_inside_generated_text_for_the_end():
    relay = Relay("d", "d", wants_usage=True)
    relay.feed(sse(chunk("d", "data: [DONE]"), done=False))
    assert not relay.done
    relay.feed(b"data: [DONE]\n\n")
    assert relay.done


def test_a_stream_through_the_router_reaches_the_client_whole_with_the_engines_blocks():
    async def scenario():
        engine = Engine("m", tokens=50)
        async with routed({"d": engine}) as (_, url, s):
            async with s.post(url + CHAT, json={**BODY, "stream": True}, timeout=ClientTimeout(total=10)) as r:
                raw = await r.read()
            events = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
            assert len(events) == 51 and events[-1] == b"data: [DONE]"
            assert "".join(json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]) == \
                "".join(f"t{i} " for i in range(50))
            assert metric(await scrape(s, url), "moxin_generation_tokens_total", deployment="d") == 3  # its usage

    run(scenario())


def test_when_every_replica_is_behind_an_open_circuit_the_503_says_so():
    async def scenario():
        bad = Engine("m", mode="status-500")
        async with routed({"d": bad}, limits=RouterLimits(circuit_failure_threshold=1, retry_attempts=1)) \
                as (_, url, s):
            status, _, _ = await post(s, url, BODY)
            assert status == 500  # the replica's own answer; its circuit opens
            status, body, _ = await post(s, url, BODY)
            assert status == 503 and len(bad.seen) == 1
            assert "every replica failed recently (circuit open: " in body["error"]["message"], body

    run(scenario())
