"""The controller's reads for rollout gates (effects only, HTTP): Prometheus instant queries, the routers'
/metrics pages, and one greedy generation from one replica for the quality gate. The numbers come from
``rollout.measure`` and ``rollout.quality``; tests pass a stand-in with the same three methods.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from orchestrator.rollout.quality import Generation, generation_from_openai
from orchestrator.spec.rollout import Quality

HTTP_TIMEOUT_S = 10.0
GENERATE_TIMEOUT_S = 120.0


class HttpProbe:
    def __init__(self, engine_key: str | None = None) -> None:
        self.engine_key = engine_key

    def query(self, prometheus_url: str, promql: str) -> float | None:
        """The value of the query's single sample; None without one. OSError/ValueError when Prometheus fails."""
        url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise ValueError(f"Prometheus refused {promql!r}: {body.get('error', body)}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return float(result[1])
        return float(result[0]["value"][1]) if result else None

    def metrics_pages(self, urls: list[str]) -> list[tuple[str, str]]:
        pages = []
        for url in urls:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
                pages.append((urllib.parse.urlsplit(url).netloc, r.read().decode()))
        return pages

    def generate(self, url: str, request_model: str, prompt: str, quality: Quality,
                 logprobs: bool = True) -> Generation | None:
        """Greedy decoding (temperature 0) of ``prompt`` by the replica at ``url``, with top log-probabilities
        where the engine gives them (an engine that refuses them is asked again without); None when it fails."""
        body: dict[str, Any] = {"model": request_model, "messages": [{"role": "user", "content": prompt}],
                                "temperature": 0, "max_tokens": quality.max_tokens}
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": quality.top_logprobs}
        headers = {"Content-Type": "application/json"}
        if self.engine_key:
            headers["Authorization"] = f"Bearer {self.engine_key}"
        req = urllib.request.Request(f"{url.rstrip('/')}/v1/chat/completions", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=GENERATE_TIMEOUT_S) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if logprobs and exc.code == 400:
                return self.generate(url, request_model, prompt, quality, logprobs=False)
            return None
        except (OSError, ValueError):
            return None
        choices = answer.get("choices") or []
        return generation_from_openai(choices[0]) if choices else None
