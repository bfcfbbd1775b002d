"""Send the quality gate's golden prompts to one side of a rollout and collect its answers (effects at the edge).

Where it sits: the controller (Ray) or the Kubernetes driver (``k8s_rollout.py``) measures a due 'quality' gate by
calling ``probe`` once per side, then hands both lists to ``rollout.quality.compare`` (pure). Each prompt goes out
as an OpenAI chat completion with greedy decoding (temperature 0, a fixed seed, ``max_tokens``) and asks for
``logprobs``/``top_logprobs`` so the comparison can compute KL divergence and top-k overlap.

Engines differ in what they accept (checked against the installed versions):
- vLLM 0.32 returns ``logprobs.content[i].top_logprobs`` up to its ``--max-logprobs`` (20 by default) and refuses
  more with a 400;
- mlx-lm 0.32's server returns the same shape but refuses ``top_logprobs`` above 11 with a 400.
A 400 to a request that asked for logprobs is therefore retried once without them: that side's answers then carry
text only, and ``compare`` falls back to word-level divergence and skips KL/overlap. Other failures are errors:
a prompt a side did not answer would otherwise count as a difference.

``headers`` carries an API key and, behind the router, ``REPLICA_HEADER`` to pin one replica (one side).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.errors import MoxinError
from orchestrator.rollout.quality import BUILTIN_PROMPTS, Generation, generation_from_openai, parse_prompts
from orchestrator.spec.defaults import REPLICA_HEADER
from orchestrator.spec.rollout import Quality

DEFAULT_SEED = 0
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT_S = 120.0
_ERROR_BODY_CHARS = 300


class ProbeError(MoxinError):
    """A side could not answer the golden prompts (unreachable, refused, malformed answer): the gate's measurement
    is an error, not a quality failure. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class ProbeResult:
    generations: tuple[Generation, ...]
    logprobs: bool
    """Whether the side returned log-probabilities (False after the fallback)."""
    note: str = ""
    """Why logprobs were dropped, when they were."""


def load_prompts(quality: Quality, base_dir: Path | None = None) -> list[str]:
    """The Rollout's golden prompts: the built-in set, or its file (relative to ``base_dir``, the document's
    directory)."""
    if quality.prompts == "builtin":
        return list(BUILTIN_PROMPTS)
    path = Path(quality.prompts)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProbeError(f"cannot read the golden prompts {path}: {exc.strerror or exc}\n"
                         "  To fix: set spec.quality.prompts to 'builtin' or to a file next to the Rollout") from None
    try:
        return parse_prompts(text)
    except ValueError as exc:
        raise ProbeError(f"{path}: {exc}") from None


def request_body(prompt: str, model: str, quality: Quality, seed: int, logprobs: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "temperature": 0, "seed": seed, "max_tokens": quality.max_tokens, "stream": False}
    if logprobs:
        body.update(logprobs=True, top_logprobs=quality.top_logprobs)
    return body


def probe_headers(api_key: str | None = None, replica: str | None = None,
                  extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers of every probe request: a bearer key, the router's pinning header, anything else given."""
    out = dict(extra or {})
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    if replica:
        out[REPLICA_HEADER] = replica
    return out


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.status, self.body = status, body


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                headers: Mapping[str, str]) -> dict[str, Any]:
    async with session.post(url, json=body, headers=dict(headers)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise _Refused(resp.status, text[:_ERROR_BODY_CHARS])
    try:
        data = json.loads(text)
        choice = data["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProbeError(f"{url}: not an OpenAI chat completion: {text[:_ERROR_BODY_CHARS]!r}") from None
    if not isinstance(choice, dict):
        raise ProbeError(f"{url}: choices[0] is not an object")
    return choice


async def probe(base_url: str, prompts: Sequence[str], quality: Quality, *, model: str,
                headers: Mapping[str, str] | None = None, seed: int = DEFAULT_SEED,
                concurrency: int = DEFAULT_CONCURRENCY, timeout_s: float = DEFAULT_TIMEOUT_S,
                session: aiohttp.ClientSession | None = None) -> ProbeResult:
    """Every prompt's greedy answer from the OpenAI server at ``base_url`` (…/v1/chat/completions), at most
    ``concurrency`` at a time, in prompt order."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = dict(headers or {})
    state = {"logprobs": True, "note": ""}
    gate = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()

    async def one(s: aiohttp.ClientSession, prompt: str) -> Generation:
        async with gate:
            while True:
                asked = state["logprobs"]
                try:
                    choice = await _post(s, url, request_body(prompt, model, quality, seed, bool(asked)), headers)
                except _Refused as exc:
                    if exc.status == 400 and asked:
                        async with lock:  # the first refusal switches every later request
                            if state["logprobs"]:
                                state.update(logprobs=False, note=f"logprobs refused ({exc.body.strip()[:120]})")
                        continue
                    hint = "  To fix: check the API key" if exc.status in (401, 403) else \
                        "  To fix: check the model name and that the side is serving"
                    raise ProbeError(f"{url} answered {exc.status}: {exc.body.strip()}\n{hint}") from None
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise ProbeError(f"{url}: {type(exc).__name__}: {exc}\n"
                                     "  To fix: check that the side is up and reachable") from None
                return generation_from_openai(choice)

    async def run(s: aiohttp.ClientSession) -> list[Generation]:
        return list(await asyncio.gather(*(one(s, p) for p in prompts)))

    if session is not None:
        generations = await run(session)
    else:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as own:
            generations = await run(own)
    if not state["logprobs"]:  # answers taken before the switch keep logprobs the others lack: drop them all
        generations = [Generation(g.text) for g in generations]
    return ProbeResult(tuple(generations), bool(state["logprobs"]), str(state["note"]))
