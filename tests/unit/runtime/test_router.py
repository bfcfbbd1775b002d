"""The router as a real aiohttp server on 127.0.0.1 in front of static engines (real servers too): routing,
retries, error bodies, metrics, streaming, and the trust boundary (input checks, API keys, the engine key)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from orchestrator.runtime.keys import KeyRing, create_key
from orchestrator.runtime.router import Router, reload_forever
from tests.unit.runtime.router_support import USAGE, Background, Engine, metric, refused_url, row, serving

REPO = Path(__file__).resolve().parents[3]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@asynccontextmanager
async def routed(engines: dict[str, Engine], **router_kwargs: Any) -> AsyncIterator[tuple[Router, str, ClientSession]]:
    """A router serving one deployment per engine (named as the dict's keys), each engine on its own port."""
    router = Router(**router_kwargs)
    async with AsyncExitStack() as stack:
        urls = {d: await stack.enter_async_context(serving(e.app())) for d, e in engines.items()}
        router.set_table({d: [row(f"{d}-0", urls[d], e.request_model)] for d, e in engines.items()})
        url = await stack.enter_async_context(serving(router))
        session = await stack.enter_async_context(ClientSession(timeout=ClientTimeout(total=20)))
        yield router, url, session


async def post(session: ClientSession, url: str, body: Any, path: str = CHAT, **kw: Any) -> tuple[int, Any, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url + path, data=data, headers={"Content-Type": "application/json", **kw}) as r:
        raw = await r.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return r.status, parsed, dict(r.headers)


async def stream(session: ClientSession, url: str, body: dict, **headers: str) -> tuple[int, list[bytes]]:
    async with session.post(url + CHAT, json={**body, "stream": True}, headers=headers) as r:
        return r.status, [line for line in (await r.read()).split(b"\n") if line]


async def scrape(session: ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as r:
        return await r.text()


def events(lines: list[bytes]) -> list[Any]:
    return [line[6:] if line == b"data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]


# -- routing, as before -----------------------------------------------------------------------------------------

def test_a_dead_replica_is_retried_before_any_byte_and_503_says_when_none_is_left():
    async def scenario():
        live = Engine("m")
        router = Router()
        async with serving(live.app()) as live_url, serving(router) as url, ClientSession() as s:
            router.set_table({"d": [row("dead", refused_url(), "m", 1000.0), row("live", live_url, "m", 1.0)]})
            for _ in range(3):
                status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
                assert status == 200 and body["model"] == "d"
            text = await scrape(s, url)
            assert metric(text, "moxin_router_retries_total", deployment="d") >= 1
            assert metric(text, "moxin_router_requests_total", deployment="d", code="200") == 3
            router.set_table({"d": [row("dead", refused_url(), "m")]})
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
            assert status == 503 and "every ready replica failed (1 tried)" in body["error"]["message"]
            router.set_table({"d": []})
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
            assert status == 503 and "no replica is ready" in body["error"]["message"]
            assert body["error"]["type"] == "service_unavailable"

    run(scenario())


def test_a_request_naming_a_replica_goes_to_it_alone():
    """moxin bench --replica: every request reaches the named replica, whatever the weights say; a name the
    deployment does not route is a 404, and a failing pinned replica is a 503, not another replica's answer."""
    async def scenario():
        small, big = Engine("m"), Engine("m")
        router = Router()
        async with serving(small.app()) as small_url, serving(big.app()) as big_url, \
                serving(router) as url, ClientSession() as s:
            router.set_table({"d": [row("small", small_url, "m", 1.0), row("big", big_url, "m", 1000.0)]})
            for _ in range(6):
                status, _, _ = await post(s, url, {"model": "d", "messages": MESSAGES}, **{"X-Moxin-Replica": "small"})
                assert status == 200
            assert len(small.seen) == 6 and not big.seen
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES}, **{"X-Moxin-Replica": "nope"})
            assert status == 404 and body["error"]["code"] == "replica_not_found" and "small" in body["error"]["message"]
            router.set_table({"d": [row("dead", refused_url(), "m"), row("big", big_url, "m")]})
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES}, **{"X-Moxin-Replica": "dead"})
            assert status == 503 and not big.seen

    run(scenario())


def test_an_unknown_model_is_a_404_naming_the_served_ones():
    async def scenario():
        async with routed({"d": Engine("m"), "e": Engine("m")}) as (_, url, s):
            status, body, _ = await post(s, url, {"model": "nope", "prompt": "x"}, path="/v1/completions")
            assert status == 404 and body["error"]["code"] == "model_not_found"
            assert body["error"]["param"] == "model" and "['d', 'e']" in body["error"]["message"]

    run(scenario())


def test_a_router_without_a_routing_table_yet_answers_a_retriable_503_not_a_404():
    """A router Ray restarted beside another on the shared port gets connections before its first table (found by
    benchmarks/soak.py: a 404 "served models: []" while the router restarted); once a table comes, it routes."""
    async def scenario():
        engine = Engine("m")
        router = Router()
        async with serving(engine.app()) as upstream, serving(router) as url, \
                ClientSession(timeout=ClientTimeout(total=20)) as s:
            status, body, headers = await post(s, url, {"model": "d", "prompt": "x"}, path="/v1/completions")
            assert status == 503 and body["error"]["code"] == "router_starting" and headers["Retry-After"] == "1"
            router.set_table({"d": [row("d-0", upstream, "m")]})
            status, _, _ = await post(s, url, {"model": "d", "prompt": "x"}, path="/v1/completions")
            assert status == 200
            router.set_table({})  # a table without the deployment: now it is unknown
            status, body, _ = await post(s, url, {"model": "d", "prompt": "x"}, path="/v1/completions")
            assert status == 404 and body["error"]["code"] == "model_not_found"

    run(scenario())


def test_a_plain_answer_names_the_deployment_and_its_usage_is_counted():
    async def scenario():
        engine = Engine("engine-side-name")
        async with routed({"d": engine}) as (_, url, s):
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES, "max_tokens": 4})
            assert status == 200 and body["model"] == "d" and body["usage"] == USAGE
            assert engine.seen[-1]["body"]["model"] == "engine-side-name"
            text = await scrape(s, url)
            assert metric(text, "moxin_generation_tokens_total", deployment="d") == 3
            assert metric(text, "moxin_prompt_tokens_total", deployment="d") == 5
            assert metric(text, "moxin_request_e2e_seconds_count", deployment="d") == 1

    run(scenario())


def test_an_engine_error_passes_through_with_its_status():
    async def scenario():
        async with routed({"d": Engine("m", mode="status-400")}) as (_, url, s):
            status, body, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
            assert status == 400 and body["error"]["message"] == "engine says no"
            assert metric(await scrape(s, url), "moxin_router_requests_total", code="400") == 1

    run(scenario())


def test_a_stream_hides_the_usage_chunk_the_client_did_not_ask_for_but_measures_it():
    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}) as (_, url, s):
            status, lines = await stream(s, url, {"model": "d", "messages": MESSAGES})
            got = events(lines)
            assert status == 200 and got[-1] == b"[DONE]"
            assert all(e["model"] == "d" and "usage" not in e for e in got[:-1])
            assert engine.seen[-1]["body"]["stream_options"] == {"include_usage": True}
            status, lines = await stream(s, url, {"model": "d", "messages": MESSAGES,
                                                  "stream_options": {"include_usage": True}})
            assert events(lines)[-2]["usage"] == USAGE
            text = await scrape(s, url)
            assert metric(text, "moxin_generation_tokens_total", deployment="d") == 6
            assert metric(text, "moxin_request_ttft_seconds_count", deployment="d") == 2
            assert metric(text, "moxin_router_requests_total", deployment="d", code="200") == 2

    run(scenario())


# -- input checks -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    ({"model": 7, "messages": MESSAGES}, "model"),
    ({"model": ["d"], "messages": MESSAGES}, "model"),
    ({"model": "", "messages": MESSAGES}, "model"),
    ({"messages": MESSAGES}, "model"),
    ({"model": "d"}, "messages"),
    ({"model": "d", "messages": "hi"}, "messages"),
    ({"model": "d", "messages": []}, "messages"),
    ({"model": "d", "messages": [1, 2]}, "messages"),
    ({"model": "d", "messages": MESSAGES, "stream": "yes"}, "stream"),
    ({"model": "d", "messages": MESSAGES, "stream": 1}, "stream"),
    ({"model": "d", "messages": MESSAGES, "stream": True, "stream_options": "usage"}, "stream_options"),
    ({"model": "d", "messages": MESSAGES, "stream": True, "stream_options": [1]}, "stream_options"),
    ({"model": "d", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"model": "d", "messages": MESSAGES, "max_tokens": "16"}, "max_tokens"),
    ({"model": "d", "messages": MESSAGES, "max_tokens": 1.5}, "max_tokens"),
    ({"model": "d", "messages": MESSAGES, "max_tokens": True}, "max_tokens"),
    ({"model": "d", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"model": "d", "messages": MESSAGES, "n": -1}, "n"),
])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(body, param):
    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}) as (_, url, s):
            status, got, _ = await post(s, url, body)
            assert status == 400, got
            assert got["error"]["param"] == param and got["error"]["type"] == "invalid_request_error"
            assert set(got["error"]) == {"message", "type", "param", "code"}
            assert engine.seen == []  # nothing reached the engine

    run(scenario())


def test_completions_need_a_prompt_and_null_means_default():
    async def scenario():
        async with routed({"d": Engine("m")}) as (_, url, s):
            status, got, _ = await post(s, url, {"model": "d", "messages": MESSAGES}, path="/v1/completions")
            assert status == 400 and got["error"]["param"] == "prompt"
            status, got, _ = await post(s, url, {"model": "d", "prompt": "x", "stream": None, "max_tokens": None,
                                                 "stream_options": None}, path="/v1/completions")
            assert status == 200, got

    run(scenario())


@pytest.mark.parametrize("raw, says", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"model"', "must be a JSON object"),
    (b"", "not valid JSON"),
    (b'{"model": "d\xff\xfe", "messages": []}', "not UTF-8"),
    (b'{"model": "d", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN is not JSON"),
    (b'{"model": "d", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', "does not fit"),
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested too deeply"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(raw, says):
    async def scenario():
        async with routed({"d": Engine("m")}) as (_, url, s):
            status, got, _ = await post(s, url, raw)
            assert status == 400 and says in got["error"]["message"], got

    run(scenario())


def test_a_body_over_the_limit_is_a_413_with_or_without_content_length():
    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}, max_body_bytes=64 * 1024) as (_, url, s):
            big = {"model": "d", "messages": [{"role": "user", "content": "x" * 100_000}]}
            status, got, _ = await post(s, url, big)
            assert status == 413 and got["error"]["code"] == "request_too_large"

            async def chunked():
                yield json.dumps(big).encode()

            async with s.post(url + CHAT, data=chunked()) as r:  # no Content-Length: aiohttp counts as it reads
                assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
            status, got, _ = await post(s, url, {"model": "d", "messages": [{"role": "user", "content": "x" * 1000}]})
            assert status == 200 and len(engine.seen) == 1

    run(scenario())


def test_wrong_paths_and_methods_answer_json_errors():
    async def scenario():
        async with routed({"d": Engine("m")}) as (_, url, s):
            async with s.get(url + CHAT) as r:
                assert r.status == 405 and "POST" in r.headers["Allow"] and "error" in await r.json()
            async with s.post(url + "/v1/embeddings", json={}) as r:
                assert r.status == 404 and (await r.json())["error"]["type"] == "invalid_request_error"

    run(scenario())


# -- streams ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line_bytes", [300 * 1024, 3 * 2**20])
def test_an_sse_line_of_any_length_passes_through(line_bytes):
    async def scenario():
        async with routed({"d": Engine("m", mode="long-line", line_bytes=line_bytes)}) as (_, url, s):
            status, lines = await stream(s, url, {"model": "d", "messages": MESSAGES})
            got = events(lines)
            assert status == 200 and got[-1] == b"[DONE]"
            assert got[0]["choices"][0]["delta"]["content"] == "x" * line_bytes and got[0]["model"] == "d"
            assert metric(await scrape(s, url), "moxin_router_requests_total", code="200") == 1

    run(scenario())


@pytest.mark.parametrize("mode", ["cut", "no-done"])
def test_a_stream_the_engine_breaks_off_is_reported_and_counted_502(mode):
    async def scenario():
        async with routed({"d": Engine("m", mode=mode)}) as (_, url, s):
            status, lines = await stream(s, url, {"model": "d", "messages": MESSAGES})
            got = events(lines)
            assert status == 200  # the status line went out with the first byte
            assert b"[DONE]" not in got and got[-1]["error"]["code"] == "upstream_stream_cut"
            assert [e["choices"][0]["delta"]["content"] for e in got[:-1]] == ["Hel", "lo", " there"]
            text = await scrape(s, url)
            assert metric(text, "moxin_router_requests_total", code="502") == 1
            assert metric(text, "moxin_router_requests_total", code="200") == 0
            assert metric(text, "moxin_request_e2e_seconds_count") == 0

    run(scenario())


# -- routing tables ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [math.nan, math.inf, True, -1.0, 0])
def test_a_bad_table_is_refused_and_the_old_one_keeps_serving(weight):
    async def scenario():
        async with routed({"d": Engine("m")}) as (router, url, s):
            good = router.balancer.table
            with pytest.raises(ValueError, match=r"deployments.d\[0\].weight"):
                router.set_table({"d": [row("x", "http://127.0.0.1:1", "m", weight)]})
            with pytest.raises(ValueError, match=r"deployments.d\[0\]: expected an object"):
                router.set_table({"d": [["x", "http://127.0.0.1:1", "m", 1.0]]})
            assert router.balancer.table is good
            status, _, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
            assert status == 200

    run(scenario())


def test_the_table_file_reload_keeps_the_last_good_table_when_the_new_one_is_broken(tmp_path):
    async def scenario():
        config = tmp_path / "router.json"
        router = Router()
        async with serving(Engine("m").app()) as engine_url, serving(router) as url, ClientSession() as s:
            config.write_text(json.dumps({"deployments": {"d": [row("a", engine_url, "m")]}}))
            router.set_table(json.loads(config.read_text())["deployments"])
            watcher = asyncio.ensure_future(reload_forever(router, config, every_s=0.02))
            try:
                config.write_text('{"deployments": {"d": [{"name": "a", "url": "x", "requestModel": "m", '
                                  '"weight": NaN}]}}')
                await asyncio.sleep(0.2)
                assert not watcher.done()  # the loop lives on
                assert (await post(s, url, {"model": "d", "messages": MESSAGES}))[0] == 200
                config.write_text(json.dumps({"deployments": {"e": [row("b", engine_url, "m")]}}))
                await asyncio.sleep(0.2)
                assert (await post(s, url, {"model": "e", "messages": MESSAGES}))[0] == 200
                assert (await post(s, url, {"model": "d", "messages": MESSAGES}))[0] == 404
            finally:
                watcher.cancel()

    run(scenario())


# -- API keys ---------------------------------------------------------------------------------------------------

def keyring(tmp_path: Path) -> tuple[KeyRing, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    made = {"all": create_key(path, "all"), "only-d": create_key(path, "only-d", ("d",))}
    return KeyRing(path, check_every_s=0.0), made


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_a_valid_key_every_v1_request_is_a_401(tmp_path):
    ring, made = keyring(tmp_path)

    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}, keys=ring) as (_, url, s):
            for headers in ({}, bearer("mx-wrong"), {"Authorization": made["all"]},
                            {"Authorization": f"Basic {made['all']}"}, {"Authorization": "Bearer "}):
                status, got, h = await post(s, url, {"model": "d", "messages": MESSAGES}, **headers)
                assert status == 401 and got["error"]["code"] == "invalid_api_key", headers
                assert h["WWW-Authenticate"] == "Bearer"
            async with s.get(url + "/v1/models") as r:
                assert r.status == 401
            async with s.get(url + "/health") as r:  # probes and Prometheus need no key; it names no deployment
                assert r.status == 200 and await r.json() == {"status": "ok"}
            assert engine.seen == []
            assert metric(await scrape(s, url), "moxin_router_key_requests_total", key="", code="401") == 6

    run(scenario())


def test_a_key_sees_and_uses_only_its_deployments(tmp_path):
    ring, made = keyring(tmp_path)

    async def scenario():
        async with routed({"d": Engine("m"), "e": Engine("m")}, keys=ring) as (_, url, s):
            status, got, _ = await post(s, url, {"model": "e", "messages": MESSAGES}, **bearer(made["only-d"]))
            assert status == 404 and got["error"]["code"] == "model_not_found"
            assert "'e'" in got["error"]["message"] and "['d']" in got["error"]["message"]  # names only its own
            status, got, _ = await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(made["only-d"]))
            assert status == 200 and got["model"] == "d"
            async with s.get(url + "/v1/models", headers=bearer(made["only-d"])) as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["d"]
            async with s.get(url + "/v1/models", headers=bearer(made["all"])) as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["d", "e"]
            status, _, _ = await post(s, url, {"model": "e", "messages": MESSAGES}, **bearer(made["all"]))
            assert status == 200

    run(scenario())


def test_requests_are_counted_by_key_name_and_code_and_the_key_appears_nowhere(tmp_path):
    ring, made = keyring(tmp_path)

    async def scenario():
        async with routed({"d": Engine("m", mode="cut")}, keys=ring) as (_, url, s):
            await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(made["all"]))
            await post(s, url, {"model": "x", "messages": MESSAGES}, **bearer(made["all"]))
            await post(s, url, {"model": 1}, **bearer(made["only-d"]))
            await stream(s, url, {"model": "d", "messages": MESSAGES}, **bearer(made["only-d"]))
            text = await scrape(s, url)
            assert metric(text, "moxin_router_key_requests_total", key="all", code="200") == 1
            assert metric(text, "moxin_router_key_requests_total", key="all", code="404") == 1
            assert metric(text, "moxin_router_key_requests_total", key="only-d", code="400") == 1
            assert metric(text, "moxin_router_key_requests_total", key="only-d", code="502") == 1  # the cut stream
            assert not any(k in text or k[3:] in text for k in made.values())

    run(scenario())


def test_the_key_file_is_reloaded_when_it_changes_and_a_broken_one_is_ignored(tmp_path):
    ring, _ = keyring(tmp_path)

    async def scenario():
        async with routed({"d": Engine("m")}, keys=ring) as (_, url, s):
            new = create_key(ring.path, "late")
            assert (await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(new)))[0] == 200
            ring.path.write_text("keys: [{name: Not A Label, sha256: 12}]\n")
            assert (await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(new)))[0] == 200
            ring.path.write_text("keys: []\n")
            assert (await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(new)))[0] == 401

    run(scenario())


# -- the engine key ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine_key", ["engine-secret", None])
def test_the_engine_gets_the_engine_key_and_never_the_clients(tmp_path, engine_key):
    ring, made = keyring(tmp_path)

    async def scenario():
        engine = Engine("m")
        async with routed({"d": engine}, keys=ring, engine_key=engine_key) as (_, url, s):
            await post(s, url, {"model": "d", "messages": MESSAGES}, **bearer(made["all"]), Cookie="session=1",
                       **{"X-Api-Key": made["all"]})
            await stream(s, url, {"model": "d", "messages": MESSAGES}, **bearer(made["all"]))
            for seen in engine.seen:
                headers = {k.lower(): v for k, v in seen["headers"].items()}
                assert headers.get("authorization") == (f"Bearer {engine_key}" if engine_key else None)
                assert made["all"] not in json.dumps(seen["headers"]) and "cookie" not in headers
            assert len(engine.seen) == 2

    run(scenario())


def test_moxin_router_with_api_keys_sends_the_engine_key_from_the_environment(tmp_path):
    """The standalone router as Kubernetes runs it: `moxin router --config --api-keys`, MOXIN_ENGINE_KEY set."""
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, "team-a")
    engine = Engine("m")
    with Background() as bg:
        config = tmp_path / "router.json"
        config.write_text(json.dumps({"deployments": {"d": [row("a", bg.serve(engine.app()), "m")]}}))
        port = int(refused_url().rsplit(":", 1)[1])
        env = {**os.environ, "MOXIN_ENGINE_KEY": "from-a-secret", "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "router", "--config", str(config), "--host",
                                 "127.0.0.1", "--port", str(port), "--api-keys", str(keys)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
                    time.sleep(0.1)
            body = json.dumps({"model": "d", "messages": MESSAGES}).encode()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url + CHAT, body), timeout=10)
            assert refused.value.code == 401
            request = urllib.request.Request(url + CHAT, body, {"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=10) as r:
                assert json.loads(r.read())["model"] == "d"
            assert [s["headers"]["Authorization"] for s in engine.seen] == ["Bearer from-a-secret"]
        finally:
            proc.kill()
            proc.wait(10)
            proc.stderr.close()


def test_the_router_actor_keeps_the_last_good_table_from_the_controller_and_logs_a_bad_one_once(caplog, monkeypatch):
    from orchestrator.runtime.router_actor import RouterActor

    monkeypatch.delenv("MOXIN_ENGINE_KEY", raising=False)
    actor = RouterActor("127.0.0.1", 0)  # not in Ray: no engine key, no API keys
    assert actor.router.engine_key is None and actor.router.keys is None
    good = {"d": [row("a", "http://127.0.0.1:1", "m")]}
    actor._take({"deployments": good, "splits": {"d": {"canaryPercent": 20}}})
    for _ in range(3):
        actor._take({"deployments": {"d": [row("a", "http://127.0.0.1:1", "m", math.nan)]}})
    actor._take({"deployments": good, "splits": {"d": {"canaryPercent": 120}}})
    assert [e.name for e in actor.router.balancer.table["d"]] == ["a"]
    assert actor.router.balancer.splits == {"d": 20.0}
    refused = [r.getMessage() for r in caplog.records if "routing table refused" in r.getMessage()]
    assert len(refused) == 2 and "deployments.d[0].weight" in refused[0] and "canaryPercent" in refused[1]
    actor._take({"deployments": {"e": []}})
    assert list(actor.router.balancer.table) == ["e"] and actor.router.balancer.splits == {}


def test_the_router_actor_takes_a_key_file_and_refuses_to_start_without_a_good_one(tmp_path):
    from orchestrator.runtime.router_actor import RouterActor

    path = tmp_path / "keys.yaml"
    create_key(path, "a")
    assert RouterActor("0.0.0.0", 0, api_keys=str(path)).router.keys.path == path
    path.write_text("keys: [{name: a}]")
    with pytest.raises(ValueError, match="sha256"):
        RouterActor("0.0.0.0", 0, api_keys=str(path))


def test_a_rollout_split_sends_its_exact_share_to_the_canary_and_retries_cross_only_when_a_side_is_empty(tmp_path):
    """100 requests at canaryPercent 10: 10 on the canary replica, 90 on stable; the router's series tell the
    sides apart by their variant/pool labels; /moxin/routes shows sides and the split; a canary whose replica
    refuses connections gives its requests to stable (no client sees the failure); a split read from a file."""
    async def scenario():
        stable, canary = Engine("m"), Engine("m")
        router = Router()
        async with serving(stable.app()) as stable_url, serving(canary.app()) as canary_url, \
                serving(router) as url, ClientSession() as s:
            rows = [row("s-0", stable_url, "m", 5.0, variant="bf16", pool="gpu"),
                    {**row("c-0", canary_url, "m", 1.0, variant="mlx-3bit", pool="mac"), "side": "canary"}]
            router.set_table({"d": rows}, {"d": {"canaryPercent": 10}})
            for _ in range(100):
                status, _, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
                assert status == 200
            assert (len(stable.seen), len(canary.seen)) == (90, 10)
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert metric(text, "moxin_router_requests_total", variant="mlx-3bit", pool="mac", code="200") == 10
            assert metric(text, "moxin_router_requests_total", variant="bf16", pool="gpu", code="200") == 90
            async with s.get(url + "/moxin/routes") as r:
                routes = await r.json()
            assert routes["splits"] == {"d": {"canaryPercent": 10.0}}
            assert {e["name"]: e["side"] for e in routes["deployments"]["d"]} == {"s-0": "stable", "c-0": "canary"}

            rows[1]["url"] = refused_url()
            router.set_table({"d": rows}, {"d": {"canaryPercent": 50}})
            for _ in range(10):
                status, _, _ = await post(s, url, {"model": "d", "messages": MESSAGES})
                assert status == 200
            assert len(stable.seen) == 100

            with pytest.raises(ValueError, match="canaryPercent"):
                router.set_table({"d": rows}, {"d": {"canaryPercent": 150}})
            assert router.balancer.splits == {"d": 50.0}  # the refused table changed nothing

        config = tmp_path / "router.json"
        config.write_text(json.dumps({"deployments": {"d": rows}, "splits": {"d": {"canaryPercent": 30}}}))
        from orchestrator.runtime.router import read_config
        router.set_table(*read_config(config))
        assert router.balancer.splits == {"d": 30.0}

    run(scenario())
