"""Where ``moxin top`` reads its numbers: Prometheus's query API (``rate`` over a window), or every router's and the
controller's /metrics read twice (each router counts only the requests it accepted; ``observe.top`` sums them).
Effects only (HTTP); the numbers come from ``observe.top``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.errors import MoxinError
from orchestrator.observe import top
from orchestrator.runtime.prometheus import instant_query

HTTP_TIMEOUT_S = 10.0


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return r.read()
    except (OSError, urllib.error.URLError) as exc:
        raise MoxinError(f"cannot read {url}: {exc}") from None


class PrometheusSource:
    """Each frame: one instant query per counter (its ``rate`` over ``window_s``) and one for every gauge."""

    def __init__(self, url: str, window_s: float) -> None:
        self.url, self.window_s = url.rstrip("/"), window_s

    def describe(self) -> dict[str, Any]:
        """What a frame is read from, for ``-o json``."""
        return {"source": "prometheus", "prometheus": self.url, "windowSeconds": self.window_s}

    def frame(self) -> list[top.DeploymentView]:
        counters, gauges = [], []
        for name, promql in top.prometheus_queries(self.window_s).items():
            try:
                data = instant_query(self.url, promql, HTTP_TIMEOUT_S)
            except (OSError, ValueError) as exc:
                raise MoxinError(f"cannot read {self.url}: {exc}") from None
            if data["resultType"] != "vector":
                raise MoxinError(f"Prometheus at {self.url} answered {promql!r} with a {data['resultType']}")
            (counters if name else gauges).extend(top.from_query(name, data["result"]))
        return top.top(gauges, counters)


class MetricsSource:
    """Reads every endpoint's /metrics; a frame's rates are taken against the previous reading (the first frame
    reads twice, ``interval_s`` apart)."""

    def __init__(self, urls: Sequence[str], interval_s: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.urls, self.interval_s, self.sleep, self.clock = list(urls), interval_s, sleep, clock
        self.previous: top.Snapshot | None = None

    def describe(self) -> dict[str, Any]:
        return {"source": "metrics", "endpoints": self.urls, "intervalSeconds": self.interval_s}

    def read(self) -> top.Snapshot:
        samples: list[top.Sample] = []
        for url in self.urls:
            samples += top.parse(_get(url).decode(), instance=urllib.parse.urlsplit(url).netloc)
        return top.Snapshot(self.clock(), tuple(samples))

    def frame(self) -> list[top.DeploymentView]:
        if self.previous is None:
            self.previous = self.read()
            self.sleep(self.interval_s)
        now = self.read()
        views = top.between(self.previous, now)
        self.previous = now
        return views

