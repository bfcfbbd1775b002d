"""The controller's reads for rollout gates (effects only, HTTP): Prometheus instant queries, the routers'
/metrics pages, and the golden prompts' greedy answers from one replica for the quality gate (sent by
``quality_probe``). The numbers come from ``rollout.measure`` and ``rollout.quality``; tests pass a stand-in with
the same three methods.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request

from orchestrator.rollout.quality import Generation
from orchestrator.runtime.prometheus import instant_query
from orchestrator.spec.rollout import Quality

HTTP_TIMEOUT_S = 10.0


class HttpProbe:
    def __init__(self, engine_key: str | None = None) -> None:
        self.engine_key = engine_key

    def query(self, prometheus_url: str, promql: str) -> float | None:
        """The value of the query's single sample; None without one. OSError/ValueError when Prometheus fails."""
        data = instant_query(prometheus_url, promql, HTTP_TIMEOUT_S)
        result = data["result"]
        if data["resultType"] == "scalar":
            return float(result[1])
        return float(result[0]["value"][1]) if result else None

    def metrics_pages(self, urls: list[str]) -> list[tuple[str, str]]:
        pages = []
        for url in urls:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
                pages.append((urllib.parse.urlsplit(url).netloc, r.read().decode()))
        return pages

    def answer_prompts(self, url: str, request_model: str, prompts: list[str], quality: Quality) -> list[Generation]:
        """The golden prompts' greedy answers from the replica at ``url`` (``quality_probe.probe``: logprobs where
        the engine gives them). ProbeError when the replica does not answer them all."""
        from orchestrator.runtime.quality_probe import probe, probe_headers

        result = asyncio.run(probe(url, prompts, quality, model=request_model,
                                   headers=probe_headers(api_key=self.engine_key)))
        return list(result.generations)
