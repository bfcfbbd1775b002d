"""What the router does to an engine's SSE stream on its way to the client, a block of whole lines at a time
(``runtime/router.py`` reads the blocks and writes each in one write): the model field names the deployment, the
usage chunk the router asked for (and the client did not) is dropped but measured, content chunks are counted and
the first one timed, and [DONE] is noticed.

Byte searches, not a JSON parse of every chunk: within a JSON document a quote inside a string is escaped, so
``"model":`` or ``"content":"`` can only be a key and its value, never text a model generated. A line is parsed
only when it must change in a way a byte replace cannot (a model name the engine spelled otherwise) or when it
carries the usage, once per stream.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CONTENT = re.compile(rb'content": ?"[^"]')
_TEXT = re.compile(rb'"text": ?"[^"]')
"""A chunk with something generated: a non-empty content or reasoning_content (``_CONTENT``: one regex with a
literal prefix, faster than an alternation), or completion text (``_TEXT``)."""
_USAGE = (b'"usage":{', b'"usage": {')
_USAGE_KEY = b'"usage":'
_MODEL = b'"model":'
_NO_CHOICES = (b'"choices":[]', b'"choices": []')
_DECODER = json.JSONDecoder()
_DONE = b"[DONE]"


def _model_fields(model: str) -> tuple[bytes, bytes]:
    value = json.dumps(model).encode()
    return b'"model":' + value, b'"model": ' + value


def is_count(value: Any) -> bool:
    """A token count as engines report it: a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _find_usage(block: bytes) -> int:
    """Where the block's last usage object's key is, or -1: a scan for ``"usage":`` from the end (the usage chunk
    is a stream's last before [DONE]; with vLLM's continuous usage stats, the last is the latest), then its value
    must be an object."""
    at = block.rfind(_USAGE_KEY)
    while at >= 0:
        after = at + len(_USAGE_KEY)
        if block.startswith(b"{", after) or block.startswith(b" {", after):
            return at
        at = block.rfind(_USAGE_KEY, 0, at)
    return -1


class Relay:
    """One stream's pass through the router. ``feed`` takes a block of whole lines (each ending in b"\\n") and
    returns what to send on; ``first_content`` (the monotonic time of the first generated token: set by the
    caller), ``chunks``, ``usage`` and ``done`` are what it saw."""

    def __init__(self, name: str, request_model: str, wants_usage: bool) -> None:
        self.name = name
        self.wants_usage = wants_usage
        self.want = _model_fields(name)
        self.engine = _model_fields(request_model) if request_model != name else None
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, block: bytes) -> tuple[bytes, int]:
        """The block as the client gets it, and how many content chunks it held (once the usage is known, only
        whether it held any: the count is a stand-in for ``completion_tokens``, not needed when that came)."""
        if self.engine is not None:
            block = block.replace(self.engine[0], self.want[0]).replace(self.engine[1], self.want[1])
        models = block.count(_MODEL)
        if models and not self._models_right(block, models):
            block = self._lines(block, rewrite=True)  # a model spelled otherwise: rewrite line by line
        elif (at := _find_usage(block)) >= 0:  # only the line holding it is parsed
            start = block.rfind(b"\n", 0, at) + 1
            end = block.find(b"\n", at) + 1 or len(block)
            kept, rest = self._usage_line(block[start:end], at - start), block[end:]
            if not kept:  # the usage chunk was dropped: so is the blank line that ended its event
                rest = rest[1:] if rest.startswith(b"\n") else rest[2:] if rest.startswith(b"\r\n") else rest
            block = block[:start] + kept + rest
        if not self.done and (at := block.rfind(_DONE)) >= 0:
            start = block.rfind(b"\n", 0, at) + 1
            line = block[start:block.find(b"\n", at) + 1 or len(block)]
            self.done = line.startswith(b"data:") and line[5:].strip() == _DONE
        if self.usage is not None and is_count(self.usage.get("completion_tokens")):
            found = 1 if _CONTENT.search(block) or _TEXT.search(block) else 0
        else:
            found = len(_CONTENT.findall(block)) + len(_TEXT.findall(block))
            self.chunks += found
        return block, found

    def _models_right(self, block: bytes, models: int) -> bool:
        """Every model field of the block names the deployment: the engine's spelling (with or without a space
        after the colon) is tried first, and learnt."""
        first = block.count(self.want[0])
        if first == models:
            return True
        if first + block.count(self.want[1]) == models:
            if not first:
                self.want = (self.want[1], self.want[0])
            return True
        return False

    def _usage_line(self, line: bytes, at: int) -> bytes:
        """The line holding the usage (at ``at``), its model fields right already: only the usage object is
        parsed; the line is dropped (b"") when it is the usage-only chunk the client did not ask for."""
        if not line.startswith(b"data:"):
            return line
        text = line.decode("utf-8", "replace")
        try:
            usage, _ = _DECODER.raw_decode(text, text.index("{", at))
        except (ValueError, RecursionError):
            return self._lines(line, rewrite=False)
        if not isinstance(usage, dict):
            return line
        self.usage = usage
        if not self.wants_usage and (_NO_CHOICES[0] in line or _NO_CHOICES[1] in line or b'"choices"' not in line):
            return b""
        return line

    def _lines(self, block: bytes, rewrite: bool) -> bytes:
        out: list[bytes] = []
        drop_blank = False
        for line in block.splitlines(keepends=True):
            if drop_blank and line in (b"\n", b"\r\n"):
                drop_blank = False
                continue  # the blank line that ended the dropped usage event
            drop_blank = False
            if line.startswith(b"data:") and (rewrite and _MODEL in line or _USAGE[0] in line or _USAGE[1] in line):
                changed = self._chunk(line)
                if changed is None:
                    drop_blank = True
                    continue
                line = changed
            out.append(line)
        return b"".join(out)

    def _chunk(self, line: bytes) -> bytes | None:
        """One data line parsed: its usage kept; None to drop it (the usage-only chunk the client did not ask
        for); else the line, with the model field set to the deployment's name."""
        try:
            chunk = json.loads(line[5:])
        except (ValueError, RecursionError):
            return line  # not JSON: relayed as the replica wrote it
        if not isinstance(chunk, dict):
            return line
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            if not chunk.get("choices") and not self.wants_usage:
                return None
        if "model" in chunk and chunk["model"] != self.name:
            chunk["model"] = self.name
            try:
                return b"data: " + json.dumps(chunk).encode() + b"\n"
            except (ValueError, RecursionError):
                return line
        return line
