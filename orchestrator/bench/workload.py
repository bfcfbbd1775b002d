"""What ``moxin bench`` sends and how: the target, the load levels and when each stops, the prompts
(synthetic, or read from a JSONL file) and the request bodies. Pure, except ``read_prompts``, which reads
the file named.

Synthetic prompts are deterministic: request i of a run with seed s always gets the same text, and no two
requests share a prefix longer than one word (an engine's prefix cache cannot turn the prefill into a
lookup). Words are short common English words, about one token each in the usual BPE vocabularies; the
warm-up request reads the server's own count back and rescales (``words_per_token``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.defaults import REPLICA_HEADER

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

WORDS = tuple("""
the of and to in is it you that he was for on are with as his they be at one have this from or had by word
but what some we can out other were all there when up use your how said an each she which do their time if
will way about many then them write would like so these her long make thing see him two has look more day
could go come did sound no most my over know water than call first who may down side been now find any new
work part take get place made live where after back little only round man year came show every good me give
our under name very through just form great think say help low line turn cause much mean before move right
boy old too same tell does set three want air well also play small end put home read hand port large spell
add even land here must big high such follow act why ask men change went light kind off need house picture
try us again animal point mother world near build self earth father head stand own page should country found
answer school grow study still learn plant cover food sun four thought let keep eye never last door between
city tree cross since hard start might story saw far sea draw left late run while press close night real
life few stop
""".split())


@dataclass(frozen=True)
class Prompt:
    """One request's input: a completion prompt or a chat conversation."""

    text: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None

    def as_messages(self) -> list[dict[str, Any]]:
        return list(self.messages) if self.messages is not None else [{"role": "user", "content": self.text}]

    def as_text(self) -> str:
        if self.text is not None:
            return self.text
        return "\n".join(str(m.get("content", "")) for m in self.messages or ())


@dataclass(frozen=True)
class Synthetic:
    """Generated prompts of about ``prompt_tokens`` tokens."""

    prompt_tokens: int
    seed: int = 0
    words_per_token: float = 1.0
    """Scale from the server's count: words sent / prompt tokens it reported for them."""

    @property
    def name(self) -> str:
        return "synthetic"

    def prompt(self, index: int) -> Prompt:
        words = max(1, round(self.prompt_tokens * self.words_per_token))
        rng = random.Random(self.seed * 1_000_003 + index)
        return Prompt(text=" ".join([str(index)] + rng.choices(WORDS, k=words - 1)))

    def rescaled(self, words_sent: int, tokens_counted: int) -> Synthetic:
        """The same prompts, resized so that the server counts about ``prompt_tokens`` tokens."""
        if tokens_counted <= 0 or words_sent <= 0:
            return self
        ratio = words_sent / tokens_counted
        return Synthetic(self.prompt_tokens, self.seed, ratio)


@dataclass(frozen=True)
class FromFile:
    """Prompts read from a JSONL file, used in turn (request i gets prompt i modulo their number)."""

    prompts: tuple[Prompt, ...]
    name: str

    def prompt(self, index: int) -> Prompt:
        return self.prompts[index % len(self.prompts)]


Workload = Synthetic | FromFile


def read_prompts(path: Path) -> FromFile:
    """Lines of ``{"prompt": "..."}`` or ``{"messages": [{"role": ..., "content": ...}, ...]}``; blank lines
    skipped. Every bad line is reported with its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(f"cannot read prompts: {exc}", str(path))]) from None
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    hint = 'one JSON object per line: {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"not JSON: {exc.msg}", str(path), number, hint=hint))
            continue
        if isinstance(item, dict) and isinstance(item.get("prompt"), str) and "messages" not in item:
            prompts.append(Prompt(text=item["prompt"]))
        elif isinstance(item, dict) and _is_messages(item.get("messages")) and "prompt" not in item:
            prompts.append(Prompt(messages=tuple(item["messages"])))
        else:
            problems.append(Problem("expected an object with a string 'prompt' or a list of 'messages' (each "
                                    "an object with a 'role' and a 'content')", str(path), number, hint=hint))
    if not prompts and not problems:
        problems.append(Problem("no prompts in the file", str(path), hint=hint))
    if problems:
        raise SpecError(problems)
    return FromFile(tuple(prompts), path.name)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)


def request_body(prompt: Prompt, *, model: str, endpoint: Endpoint, max_tokens: int,
                 ignore_eos: bool) -> dict[str, Any]:
    """A streamed request for exactly ``max_tokens`` tokens where the engine honours ``ignore_eos`` (vLLM
    does; mlx-lm ignores the field and may stop early)."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}, "temperature": 0}
    if endpoint == "chat":
        body["messages"] = prompt.as_messages()
    else:
        body["prompt"] = prompt.as_text()
    if ignore_eos:
        body["ignore_eos"] = True
    return body


@dataclass(frozen=True)
class Target:
    url: str
    """Base URL, e.g. http://127.0.0.1:8000 (the /v1/... path is added)."""
    model: str
    """The model name requests carry (the deployment name, through moxin's router)."""
    api_key: str | None = field(default=None, repr=False)
    endpoint: Endpoint = "chat"
    ignore_eos: bool = True
    timeout_s: float = 120.0
    replica: str | None = None
    """Through moxin's router: the one replica of the deployment to measure (its ``X-Moxin-Replica`` header)."""

    @property
    def request_url(self) -> str:
        return self.url.rstrip("/") + PATHS[self.endpoint]

    @property
    def public_url(self) -> str:
        """The base URL without any user:password part (what documents and tables show)."""
        parts = urlsplit(self.url)
        if parts.username is None and parts.password is None:
            return self.url
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def headers(self) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return auth | ({REPLICA_HEADER: self.replica} if self.replica else {})


@dataclass(frozen=True)
class Level:
    concurrency: int | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a level has a concurrency or a rate")


@dataclass(frozen=True)
class Stop:
    """When a level stops sending: after ``requests`` requests, after ``duration_s`` seconds, or at the
    first of the two."""

    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a level needs a number of requests or a duration")
