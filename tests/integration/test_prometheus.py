"""moxin up's Prometheus for real, without Ray: the server `runtime/prometheus.py` starts scrapes the targets of a
file_sd list like the controller's and loads moxin's alert rules, `moxin top` reads the same numbers from it as
from the /metrics pages (two routers, each counting its share of the requests: both sources sum them), and stop
leaves no process."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import pytest
from prometheus_client import start_http_server

from orchestrator.observe.alerts import alerts, rules_text
from orchestrator.runtime import prometheus
from orchestrator.runtime.guard import alive
from orchestrator.runtime.metrics import ControllerMetrics, RouterMetrics
from orchestrator.runtime.top_sources import MetricsSource, PrometheusSource

pytestmark = pytest.mark.integration
if shutil.which("prometheus") is None:
    pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)",
                allow_module_level=True)

LABELS = {"deployment": "chat", "model": "m", "variant": "bf16", "pool": "gpu", "hardware": "h100",
          "engine": "vllm", "emulated": "true"}
RATE = 5.0  # requests per second the two fake routers answer together


def test_moxin_top_reads_the_same_rates_from_prometheus_as_from_the_metrics_pages(tmp_path):
    routers, controller = [RouterMetrics(), RouterMetrics()], ControllerMetrics()
    controller.desired.labels(**LABELS).set(1)
    controller.capacity.labels(**LABELS).set(10)
    servers = [start_http_server(0, addr="127.0.0.1", registry=m.registry)[0] for m in (*routers, controller)]
    ports = [s.server_address[1] for s in servers]
    sd = tmp_path / "prometheus-sd.json"
    sd.write_text(json.dumps([{"targets": [f"127.0.0.1:{p}" for p in ports[:2]], "labels": {"job": "moxin-router"}},
                              {"targets": [f"127.0.0.1:{ports[2]}"], "labels": {"job": "moxin-controller"}}]))
    stop = threading.Event()

    def traffic() -> None:  # RATE requests/s, 8 tokens each; one of three to the first router, two to the other
        n = 0
        while not stop.wait(1 / RATE):
            router, n = routers[min(n % 3, 1)], n + 1
            router.requests.labels(**LABELS, code="200").inc()
            router.generation_tokens.labels(**LABELS).inc(8)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    info = prometheus.start(sd, port=prometheus.free_port(0), scrape_interval_s=1, home=tmp_path,
                            rule_files={"moxin.rules.yml": rules_text()})
    try:
        assert prometheus.running(tmp_path)["url"] == info["url"]
        with urllib.request.urlopen(info["url"] + "/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert {a.name for a in alerts()} == {rule["name"] for g in groups for rule in g["rules"]}
        source = PrometheusSource(info["url"], window_s=5)
        deadline, views = time.monotonic() + 60, []
        while time.monotonic() < deadline:  # until Prometheus has scraped both targets over a whole window
            views = source.frame()
            if views and views[0].total.replicas_desired == 1 and views[0].total.requests_per_second > 0:
                time.sleep(6)
                views = source.frame()
                break
            time.sleep(1)
        (view,) = views
        direct = MetricsSource([f"http://127.0.0.1:{p}/metrics" for p in ports], interval_s=3).frame()[0]
        for row in (view.total, direct.total):
            assert row.requests_per_second == pytest.approx(RATE, rel=0.3), row
            assert row.output_tokens_per_second == pytest.approx(8 * RATE, rel=0.3), row
            assert row.capacity_requests_per_second == 10 and row.load == pytest.approx(RATE / 10, rel=0.3)
    finally:
        stop.set()
        pid = info["pid"]
        assert prometheus.stop(tmp_path)
        for s in servers:
            s.shutdown()
    assert not alive(pid) and prometheus.running(tmp_path) is None
    assert not (tmp_path / "prometheus.json").exists()
