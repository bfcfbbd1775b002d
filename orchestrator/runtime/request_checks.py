"""What the router accepts from a client, checked before it picks a replica: a UTF-8 JSON object whose fields the
router reads or the endpoint needs have the types the OpenAI API gives them. Pure: bytes or a body in, an
``Invalid`` (the 400 the client gets) or the parsed body out. Everything else in the body is the engine's to judge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Invalid:
    message: str
    param: str | None = None


REQUIRED = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}
"""The field each endpoint cannot do without."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(m, dict) for m in v)


def _prompt(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and bool(v))


FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "messages": (_messages, "a non-empty array of message objects"),
    "prompt": (_prompt, "a string or a non-empty array"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "max_tokens": (_positive_int, "an integer >= 1"),
    "max_completion_tokens": (_positive_int, "an integer >= 1"),
    "n": (_positive_int, "an integer >= 1"),
}
"""Fields checked when present and not null (null means 'the default', as in the OpenAI API)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} does not fit a float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
"""One decoder for every body: ``json.loads`` with options builds a new one per call."""


def parse_body(raw: bytes) -> dict[str, Any] | Invalid:
    """The body as a JSON object, or why not. NaN, Infinity and overflowing numbers are refused: re-encoded
    for the engine they would not be JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(f"the body is not UTF-8 (bad byte at offset {exc.start})")
    try:
        body = _DECODER.decode(text)
    except RecursionError:
        return Invalid("the body is nested too deeply")
    except ValueError as exc:
        return Invalid(f"the body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(body, dict):
        return Invalid(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def check_request(path: str, body: dict[str, Any]) -> Invalid | None:
    """The first problem with the fields of a completion request for ``path``, or None."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Invalid("`model` must be a non-empty string: the name of a deployment (GET /v1/models)", "model")
    required = REQUIRED.get(path)
    if required is not None and body.get(required) is None:
        return Invalid(f"`{required}` is required by {path}", required)
    for name, value in body.items():  # a request names a few of the FIELDS: its own keys are fewer to look at
        rule = FIELDS.get(name)
        if rule is not None and value is not None and not rule[0](value):
            return Invalid(f"`{name}` must be {rule[1]}, got {_kind(value)}", name)
    options = body.get("stream_options") or {}
    if options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
        return Invalid("`stream_options.include_usage` must be a boolean", "stream_options.include_usage")
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:60]
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)
