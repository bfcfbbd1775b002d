"""Benchmark: the router's added latency and its ceiling; time from `moxin up` to the first token.

    python benchmarks/router.py [--levels 1,16,64] [--requests 64] [--skip-up]
    python benchmarks/router.py --peer [--peer-levels 1,16,64,256] [--peer-requests 2000] [--repeat 3]

1. `moxin up` (the embedded default, cold Ray cluster, cached tiny model) timed until the first streamed token
   comes back through the router. Skipped with --skip-up when a cluster is already up.
2. Added latency: the same streamed chats (16 tokens) sent to the vLLM replica directly and through a
   `moxin router` whose table holds only that replica, at 1, 16 and 64 concurrent streams; p50/p99 of TTFT and
   end-to-end, and router minus direct. Engines answer only holders of the cluster's engine key
   (runtime/secrets.py): the direct requests carry it, read from Ray's key-value store, and so does the router
   (in its environment, never its argv).
3. Ceiling: requests/s the router sustains when the upstream costs nothing: a static SSE server in this script
   (labelled as such), 64 concurrent streams.
Prints tables and the machine. A cluster the run started (no --skip-up) is stopped at its end. Medians and percentiles over all requests of a level; these machines are noisy.

--peer: moxin's router side by side with vllm-router (the Rust router, ``pip install vllm-router``), nothing
else ("moxin" is ``moxin router``: its data plane, runtime/dataplane.py, with its defaults: no access log, as
vllm-router runs at --log-level warning). Each router is pinned to core 0 (taskset); the static SSE upstream (a
subprocess) and this script's load generator share core 1. At each level of concurrent streams: added TTFT and end-to-end p50/p99 against the
upstream straight, requests/s, and the router's CPU seconds (every thread's run time, /proc/PID/task/*/schedstat, in ns) per
1,000 requests; the three paths alternate, ``--repeat`` times, and each figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402

from orchestrator.runtime.secrets import ENGINE_KEY_ENV  # noqa: E402
from orchestrator.spec.defaults import ROUTER_PORT  # noqa: E402

MOXIN = [sys.executable, "-m", "orchestrator"]
BODY = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Benchmark me"}], "max_tokens": 16,
        "stream": True, "ignore_eos": True}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def stream(session: aiohttp.ClientSession, url: str, body: dict,
                 headers: dict[str, str] | None = None) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line.replace(b": ", b":") \
                    and b'"content":""' not in line.replace(b": ", b":"):
                first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - t0, end - t0


async def level(url: str, concurrency: int, total: int, body: dict,
                headers: dict[str, str] | None = None) -> tuple[list[float], list[float], float]:
    results: list[tuple[float, float]] = []
    queue = list(range(total))

    async def worker(session):
        while queue:
            queue.pop()
            results.append(await stream(session, url, body, headers))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await stream(s, url, body, headers)  # warm the connection and the engine
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(s) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return [r[0] for r in results], [r[1] for r in results], wall


def start_router(table: dict, port: int, tmp: Path, engine_key: str | None = None) -> subprocess.Popen:
    config = tmp / f"router-{port}.json"
    config.write_text(json.dumps(table))
    env = {**os.environ, ENGINE_KEY_ENV: engine_key} if engine_key else None  # the environment: never argv
    proc = subprocess.Popen([*MOXIN, "router", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("router did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_engine_key() -> str | None:
    """The running cluster's engine key (its engines answer only requests that carry it: runtime/secrets.py), read
    from Ray's key-value store as the cluster's routers read it."""
    import ray

    from orchestrator.runtime.names import NAMESPACE
    from orchestrator.runtime.secrets import engine_key

    ray.init(address="auto", namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    try:
        return engine_key()
    finally:
        ray.shutdown()


def time_up(port: int) -> float:
    subprocess.run([*MOXIN, "down"], capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([*MOXIN, "up", "--port", str(port), "--metrics-port", "0"], check=True, capture_output=True)

    async def first_token() -> float:
        async with aiohttp.ClientSession() as s:
            await stream(s, f"http://127.0.0.1:{port}", BODY)
        return time.perf_counter() - t0

    return asyncio.run(first_token())


def static_payload() -> bytes:
    """The static upstream's answer body: 16 content chunks, the usage chunk, [DONE] (also benchmarks/dataplane.py's)."""
    chunk = {"id": "x", "object": "chat.completion.chunk", "model": "tiny-chat",
             "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}]}
    usage = {"id": "x", "object": "chat.completion.chunk", "model": "tiny-chat", "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}}
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [chunk] * 16 + [usage]) + \
        b"data: [DONE]\n\n"


async def static_upstream(port: int) -> web.AppRunner:
    """Benchmark-only upstream with no cost: 16 SSE chunks, at once (to find the router's own ceiling)."""
    payload = static_payload()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(payload)
        await out.write_eof()
        return out

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny-chat", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


# -- --peer: moxin's router and vllm-router side by side ------------------------------------------------------

ROUTER_CORE, LOAD_CORE = 0, 1


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, in seconds: the sum of /proc/PID/task/*/schedstat's first field
    (nanoseconds; utime+stime in /proc/PID/stat count 10 ms ticks, 2-3 ticks of noise on 500 requests), or that
    tick count where schedstat is missing."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s} s") from None
            time.sleep(0.2)


def serve_static(port: int) -> None:
    """--serve-static PORT: the static upstream alone, in its own process (the peer section pins it)."""

    async def run() -> None:
        runner = await static_upstream(port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def start_pinned(cmd: list[str], core: int) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peer(levels: list[int], requests: int, repeat: int, tmp: Path) -> None:
    import shutil

    vllm_router = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
    if not Path(vllm_router).exists():
        raise SystemExit("vllm-router is not installed: pip install vllm-router")
    os.sched_setaffinity(0, {LOAD_CORE})
    up_port, moxin_port, peer_port = free_port(), free_port(), free_port()
    upstream = start_pinned([sys.executable, __file__, "--serve-static", str(up_port)], LOAD_CORE)
    procs = [upstream]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/health")
        config = tmp / "peer-router.json"
        config.write_text(json.dumps({"deployments": {"tiny-chat": [
            {"name": "static", "url": f"http://127.0.0.1:{up_port}", "requestModel": "tiny-chat", "weight": 1}]}}))
        moxin = start_pinned([*MOXIN, "router", "--config", str(config), "--host", "127.0.0.1",
                              "--port", str(moxin_port)], ROUTER_CORE)
        procs.append(moxin)
        vr = start_pinned([vllm_router, "--worker-urls", f"http://127.0.0.1:{up_port}", "--host", "127.0.0.1",
                           "--port", str(peer_port), "--policy", "round_robin", "--log-level", "warning"], ROUTER_CORE)
        procs.append(vr)
        wait_http(f"http://127.0.0.1:{moxin_port}/health")
        wait_http(f"http://127.0.0.1:{peer_port}/health")
        paths = {"direct": (f"http://127.0.0.1:{up_port}", None), "moxin": (f"http://127.0.0.1:{moxin_port}", moxin),
                 "vllm-router": (f"http://127.0.0.1:{peer_port}", vr)}
        print(f"\nside by side: static SSE upstream (17 chunks + [DONE]), each router pinned to core {ROUTER_CORE}, "
              f"upstream and load generator on core {LOAD_CORE}; medians of {repeat} alternating runs")
        print(f"{'streams':>7} {'path':>12} {'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>9} {'e2e p99':>9} "
              f"{'+e2e p50':>9} {'+e2e p99':>9} {'req/s':>7} {'CPU s/1k':>9}")
        for c in levels:
            n = max(requests, c)
            runs: dict[str, list[tuple[float, ...]]] = {k: [] for k in paths}
            for _ in range(repeat):
                for name, (url, proc) in paths.items():
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    ttft, e2e, wall = asyncio.run(level(url, c, n, BODY))
                    cpu = (cpu_seconds(proc.pid) - before) if proc else float("nan")
                    runs[name].append((statistics.median(ttft), pct(ttft, .99), statistics.median(e2e), pct(e2e, .99),
                                       n / wall, 1000 * cpu / (n + 1)))
            med = {k: [statistics.median(r[i] for r in v) for i in range(6)] for k, v in runs.items()}
            for name, m in med.items():
                base = med["direct"]
                added = " " * 19 if name == "direct" else f"{1e3 * (m[2] - base[2]):9.2f} {1e3 * (m[3] - base[3]):9.2f}"
                cpu = "" if name == "direct" else f"{m[5]:9.3f}"
                print(f"{c:>7} {name:>12} {1e3 * m[0]:9.2f} {1e3 * m[1]:9.2f} {1e3 * m[2]:9.2f} {1e3 * m[3]:9.2f} "
                      f"{added} {m[4]:7.0f} {cpu}")
            mx, vr = med["moxin"], med["vllm-router"]
            print(f"{c:>7} {'moxin/peer':>12} CPU s/1k {mx[5] / vr[5]:.2f}x (target <= 1.2x), req/s {mx[4] / vr[4]:.2f}x "
                  f"(target >= 0.9x), +e2e p50 {1e3 * (mx[2] - vr[2]):+.2f} ms (target <= +0.3 at 1 stream)")
            paired = sorted(a[5] / b[5] for a, b in zip(runs["moxin"], runs["vllm-router"], strict=True))
            print(f"{c:>7} {'per run':>12} CPU ratio of each run's pair (moxin, then vllm-router, back to back): "
                  + " ".join(f"{r:.2f}" for r in paired) + f"; median {statistics.median(paired):.2f}x")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def through_engines(levels: str, requests: int) -> None:
    """Sections 2 and 3 on the running cluster: added latency against its vLLM replica, the ceiling."""
    st = json.loads(subprocess.run([*MOXIN, "status", "-o", "json"], check=True, capture_output=True, text=True).stdout)
    vllm = next(r for r in st["replicas"] if r.get("labels", {}).get("engine") == "vllm")
    tmp = Path(tempfile.mkdtemp())
    rport = free_port()
    key = cluster_engine_key()
    direct_headers = {"Authorization": f"Bearer {key}"} if key else None
    router = start_router({"deployments": {"tiny-chat": [{"name": vllm["id"], "url": vllm["url"],
                                                          "requestModel": "tiny-chat", "weight": 1,
                                                          "labels": vllm["labels"]}]}}, rport, tmp, key)
    try:
        print("\nadded latency, streamed chat of 16 tokens to the vLLM-cpu replica (ms)")
        print(f"{'streams':>7} {'path':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'e2e p50':>9} {'e2e p99':>9} {'req/s':>7}")
        for c in (int(x) for x in levels.split(",")):
            n = max(requests, c)
            rows = {}
            for name, url, headers in (("direct", vllm["url"], direct_headers),
                                       ("router", f"http://127.0.0.1:{rport}", None)):
                ttft, e2e, wall = asyncio.run(level(url, c, n, BODY, headers))
                rows[name] = (ttft, e2e)
                print(f"{c:>7} {name:>7} {1e3 * statistics.median(ttft):9.1f} {1e3 * pct(ttft, .99):9.1f} "
                      f"{1e3 * statistics.median(e2e):9.1f} {1e3 * pct(e2e, .99):9.1f} {n / wall:7.1f}")
            d = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in rows.items()}
            print(f"{c:>7} {'added':>7} {1e3 * (d['router'][0] - d['direct'][0]):9.1f} {'':>9} "
                  f"{1e3 * (d['router'][1] - d['direct'][1]):9.1f}")
    finally:
        router.terminate()
        router.wait()

    async def ceiling() -> tuple[float, float]:
        up_port, r_port = free_port(), free_port()
        runner = await static_upstream(up_port)
        proc = start_router({"deployments": {"tiny-chat": [{"name": "static", "url": f"http://127.0.0.1:{up_port}",
                                                            "requestModel": "tiny-chat", "weight": 1}]}}, r_port, tmp)
        try:
            n = 2000
            _, e2e_direct, wall_direct = await level(f"http://127.0.0.1:{up_port}", 64, n, BODY)
            _, e2e, wall = await level(f"http://127.0.0.1:{r_port}", 64, n, BODY)
            return n / wall, n / wall_direct
        finally:
            proc.terminate()
            proc.wait()
            await runner.cleanup()

    routed, direct = asyncio.run(ceiling())
    print(f"\nrouter ceiling (upstream: the benchmark's static SSE server, 16 chunks, 64 streams): {routed:.0f} req/s "
          f"through the router vs {direct:.0f} req/s straight to the static server (one router process, same 2 cores "
          "as the client)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", action="store_true", help="Only the side-by-side section: moxin's router and "
                    "vllm-router against a static upstream, pinned.")
    ap.add_argument("--peer-levels", default="1,16,64,256")
    ap.add_argument("--peer-requests", type=int, default=2000, help="Requests per run and level (500 at 1 stream).")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serve-static", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--requests", type=int, default=64, help="Requests per level (at least the concurrency).")
    ap.add_argument("--skip-up", action="store_true", help="Use the running cluster; do not time `moxin up`.")
    args = ap.parse_args()
    if args.serve_static:
        return serve_static(args.serve_static)
    print(f"machine: {describe()}")
    if args.peer:
        return peer([int(x) for x in args.peer_levels.split(",")], args.peer_requests, args.repeat,
                    Path(tempfile.mkdtemp()))
    port = ROUTER_PORT  # where `moxin up` starts the router
    if not args.skip_up:
        print(f"moxin up -> first token through the router: {time_up(port):.1f} s (cold Ray cluster, cached model)")
    try:
        through_engines(args.levels, args.requests)
    finally:
        if not args.skip_up:  # the cluster this run started
            subprocess.run([*MOXIN, "down"], capture_output=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
