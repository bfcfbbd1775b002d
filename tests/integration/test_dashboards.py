"""Every panel of every dashboard against a real Prometheus, without Ray: the router's and the controller's
collectors (``runtime/metrics.py``) and a stand-in vLLM exporter (old names for the KV cache and inter-token
latency, current names for the rest) serve /metrics, Prometheus scrapes them every second, and each panel query
(variables as "All", then one deployment chosen) must be accepted and return data. With Debian's Prometheus 2.x
and prometheus_client 0.26 the vLLM names arrive with the colon escaped (client_python#1177): the queries' escaped
alternatives are what finds them then."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from orchestrator.observe.dashboards import panel_queries
from orchestrator.observe.queries import substitute
from orchestrator.runtime.metrics import ControllerMetrics, RouterMetrics
from orchestrator.spec.metrics import SLO_OBJECTIVES

pytestmark = pytest.mark.integration
if shutil.which("prometheus") is None:
    pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)",
                allow_module_level=True)

VLLM = {"deployment": "chat", "model": "m", "variant": "bf16", "pool": "gpu", "hardware": "h100", "engine": "vllm",
        "emulated": "false"}
MLX = {"deployment": "chat", "model": "m", "variant": "mlx-4bit", "pool": "mac-emu", "hardware": "m2-max",
       "engine": "mlx-lm", "emulated": "true"}
WINDOW = "10s"  # $__rate_interval: ten scrapes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fleet() -> tuple[RouterMetrics, ControllerMetrics]:
    router, controller = RouterMetrics(), ControllerMetrics()
    for labels, cost in ((VLLM, 4.0), (MLX, 0.5)):
        pool = {k: labels[k] for k in ("pool", "hardware", "emulated")}
        controller.pool_devices.labels(**pool).set(8)
        controller.pool_allocated.labels(**pool).set(2)
        for name, value in (("desired", 2), ("ready", 2), ("pending", 0), ("unschedulable", 0), ("restarts", 1),
                            ("capacity", 20), ("output_tokens", 400), ("batch", 16), ("cost", cost)):
            getattr(controller, name).labels(**labels).set(value)
    for objective in SLO_OBJECTIVES:
        controller.slo_target.labels(deployment="chat", objective=objective).set(0.5)
    controller.reconcile.observe(0.02)
    controller.reconcile_errors.labels(step="act").inc()
    controller.actions.labels(action="start").inc()
    rollout = {"rollout": "to-mlx", "deployment": "chat"}
    for phase in ("Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RolledBack", "Failed"):
        controller.rollout_phase.labels(**rollout, phase=phase).set(1 if phase == "Progressing" else 0)
    controller.rollout_step.labels(**rollout).set(1)
    controller.rollout_weight.labels(**rollout).set(10)
    for side, value in (("canary", 0.3), ("stable", 0.25), ("limit", 0.3)):
        controller.rollout_gate_value.labels(**rollout, gate="ttftP95", side=side).set(value)
    controller.rollout_gate_passing.labels(**rollout, gate="ttftP95").set(1)
    controller.rollout_waiting.labels(**rollout).set(0)
    controller.rollout_deadline.labels(**rollout).set(900)
    return router, controller


def _vllm_exporter() -> tuple[CollectorRegistry, dict]:
    registry = CollectorRegistry()
    labels = ["model_name"]
    m = {
        "running": Gauge("vllm:num_requests_running", "", labels, registry=registry),
        "waiting": Gauge("vllm:num_requests_waiting", "", labels, registry=registry),
        "kv_old": Gauge("vllm:gpu_cache_usage_perc", "", labels, registry=registry),
        "preemptions": Counter("vllm:num_preemptions", "", labels, registry=registry),
        "queries": Counter("vllm:prefix_cache_queries", "", labels, registry=registry),
        "hits": Counter("vllm:prefix_cache_hits", "", labels, registry=registry),
        "queue": Histogram("vllm:request_queue_time_seconds", "", labels, registry=registry),
        "ttft": Histogram("vllm:time_to_first_token_seconds", "", labels, registry=registry),
        "itl_old": Histogram("vllm:time_per_output_token_seconds", "", labels, registry=registry),
    }
    m["running"].labels("m").set(3)
    m["waiting"].labels("m").set(1)
    m["kv_old"].labels("m").set(0.4)
    return registry, m


def _traffic(router: RouterMetrics, vllm: dict, stop: threading.Event) -> None:
    for labels, replica in ((VLLM, "chat-gpu-0"), (MLX, "chat-mac-0")):
        router.in_flight.labels(**labels, replica=replica).set(2)
    while not stop.wait(0.1):
        for labels in (VLLM, MLX):
            router.requests.labels(**labels, code="200").inc(9)
            router.requests.labels(**labels, code="503").inc()
            router.retries.labels(**labels).inc()
            router.prompt_tokens.labels(**labels).inc(100)
            router.generation_tokens.labels(**labels).inc(50)
            router.ttft.labels(**labels).observe(0.2)
            router.tpot.labels(**labels).observe(0.02)
            router.e2e.labels(**labels).observe(1.5)
        vllm["preemptions"].labels("m").inc()
        vllm["queries"].labels("m").inc(10)
        vllm["hits"].labels("m").inc(4)
        for key, seconds in (("queue", 0.01), ("ttft", 0.15), ("itl_old", 0.015)):
            vllm[key].labels("m").observe(seconds)


def test_every_panel_query_is_accepted_and_shows_data(tmp_path):
    router, controller = _fleet()
    vllm_registry, vllm = _vllm_exporter()
    servers = [start_http_server(0, addr="127.0.0.1", registry=r)[0]
               for r in (router.registry, controller.registry, vllm_registry)]
    ports = [s.server_address[1] for s in servers]
    stop = threading.Event()
    threading.Thread(target=_traffic, args=(router, vllm, stop), daemon=True).start()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "moxin-router", "static_configs": [{"targets": [f"127.0.0.1:{ports[0]}"]}]},
            {"job_name": "moxin-controller", "static_configs": [{"targets": [f"127.0.0.1:{ports[1]}"]}]},
            # the controller's file_sd gives each engine target the assignment's labels
            {"job_name": "moxin-engine", "static_configs": [{"targets": [f"127.0.0.1:{ports[2]}"], "labels": VLLM}]},
        ]}))
    port = _free_port()
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def query(expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus refused {expr}: {exc.read().decode()}") from None

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(query("up == 1")) == 3:
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(1)
        time.sleep(12)  # a whole rate window of scrapes
        for values in ({}, {"deployment": "chat", "engine": "vllm|mlx-lm"}):
            empty = [(pq.dashboard, pq.panel, pq.ref_id) for pq in panel_queries()
                     if not query(substitute(pq.expr, WINDOW, values))]
            assert empty == [], f"panels without data ({values or 'All'}): {empty}"
    finally:
        stop.set()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for s in servers:
            s.shutdown()
