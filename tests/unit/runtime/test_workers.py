"""`moxin router --workers N` (runtime/workers.py) with real processes: both workers serve and are scraped through
the parent's /metrics; a worker SIGKILLed with connections queued loses none of them and is restarted; SIGTERM
drains every worker and the parent exits 0. And the pure parts: ``auto``, the merge of the workers' metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import orchestrator
from orchestrator.runtime.workers import MAX_WORKERS, auto_workers, merge_metrics, worker_count
from tests.unit.runtime.router_support import Background, Engine, metric, refused_url, row

REPO = Path(orchestrator.__file__).parents[1]
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "d", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.mark.parametrize(("cpus", "cpu_max", "expected"), [
    (4, None, 4), (4, "max 100000", 4), (8, "150000 100000", 2), (8, "50000 100000", 1), (2, "400000 100000", 2),
    (64, None, MAX_WORKERS), (1, "max 100000", 1)])
def test_auto_is_the_cpus_this_process_may_use_the_quota_rounded_up_at_most_16(cpus, cpu_max, expected):
    assert auto_workers(cpus, cpu_max) == expected


@pytest.mark.parametrize(("memory_max", "expected"), [("max", 16), (str(2**30), 7), (str(2**31), 15),
                                                      (str(100 * 2**20), 1)])
def test_auto_leaves_each_worker_128_mib_of_the_memory_limit(memory_max, expected):
    assert auto_workers(32, None, memory_max) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two", "", "1.5"])
def test_a_worker_count_that_is_not_a_whole_number_or_auto_is_refused(bad):
    with pytest.raises(ValueError, match="whole number >= 1 or auto"):
        worker_count(bad)


def test_auto_counts_this_process_cpus():
    assert 1 <= worker_count("auto") <= min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def test_the_merged_metrics_label_each_workers_series_with_its_slot():
    text = ('# HELP moxin_router_requests_total Requests.\n# TYPE moxin_router_requests_total counter\n'
            'moxin_router_requests_total{code="200"} %d\n')
    merged = merge_metrics({0: text % 3, 1: text % 4}).decode()
    assert metric(merged, "moxin_router_requests_total", worker="0", code="200") == 3
    assert metric(merged, "moxin_router_requests_total", worker="1", code="200") == 4
    assert merged.count("# TYPE moxin_router_requests_total counter") == 1


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def wait_for(check, timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def chat(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url + CHAT, BODY), timeout=10) as r:
        assert r.status == 200


def test_two_workers_serve_are_scraped_survive_a_sigkill_and_drain_on_sigterm(tmp_path):
    engine, slow = Engine("m"), Engine("m", headers_s=1.5)
    with Background() as bg:
        config = tmp_path / "router.json"
        config.write_text(json.dumps({"deployments": {"d": [row("a", bg.serve(engine.app()), "m")],
                                                      "slow": [row("b", bg.serve(slow.app()), "m")]}}))
        port = int(refused_url().rsplit(":", 1)[1])
        metrics_port = int(refused_url().rsplit(":", 1)[1])
        url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        parent = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "router", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port), "--drain-seconds", "5"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: len(children(parent.pid)) == 2 and answers(url + "/health") and answers(metrics_url),
                     what="two workers serving")
            first, second = sorted(children(parent.pid))
            # Each worker serves its share, made certain by stopping the other: both counts reach the parent.
            for stopped, count in ((second, 3), (first, 2)):
                os.kill(stopped, signal.SIGSTOP)
                for _ in range(count):
                    chat(url)
                os.kill(stopped, signal.SIGCONT)
            scraped = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            counts = sorted(metric(scraped, "moxin_router_requests_total", worker=w) for w in ("0", "1"))
            assert counts == [2, 3], scraped

            # Both stopped, a burst queued, one SIGKILLed, the other resumed: every request is answered.
            os.kill(first, signal.SIGSTOP)
            os.kill(second, signal.SIGSTOP)
            conns = []
            for _ in range(30):
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                conns.append(conn)
            os.kill(first, signal.SIGKILL)
            os.kill(second, signal.SIGCONT)
            statuses = []
            for conn in conns:
                with conn:
                    data = b""
                    while chunk := conn.recv(4096):  # a reset raises: the test fails
                        data += chunk
                    statuses.append(data.split(b" ", 2)[1])
            assert statuses == [b"200"] * 30
            wait_for(lambda: len(children(parent.pid) - {first, second}) == 1 and second in children(parent.pid),
                     what="the killed worker restarted")
            os.kill(second, signal.SIGSTOP)  # the restarted worker serves the same socket alone
            wait_for(lambda: answers(url + "/health"), what="the restarted worker serving")
            os.kill(second, signal.SIGCONT)

            # SIGTERM with a request in flight: it finishes, then every worker exits and the parent exits 0.
            in_flight = ThreadPoolExecutor(1).submit(
                lambda: urllib.request.urlopen(urllib.request.Request(url + CHAT, BODY.replace(b'"d"', b'"slow"')),
                                               timeout=30).status)
            wait_for(lambda: len(slow.seen) == 1, what="the slow request reached its engine")
            parent.send_signal(signal.SIGTERM)
            assert in_flight.result(30) == 200
            assert parent.wait(30) == 0, parent.stderr.read().decode()
            assert not answers(url + "/health")
        finally:
            if parent.poll() is None:
                for pid in children(parent.pid):
                    os.kill(pid, signal.SIGKILL)
                parent.kill()
                parent.wait(10)
            parent.stderr.close()
