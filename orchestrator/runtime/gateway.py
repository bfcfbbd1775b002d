"""The router's gateway pieces, each small and clocked from outside (``now`` is passed in, so tests need no sleep):
the circuit breaker per replica, the token bucket per API key, the retry backoff, the concurrency limit with its
bounded queue, and the request id. ``runtime/router.py`` holds them and ``spec.router.RouterLimits`` configures
them.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
"""A request id a client may choose: up to 128 characters that need no quoting in a header or a log line."""


def request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is a plain token (so it can be logged and forwarded as is), else a new one."""
    return given if given is not None and _REQUEST_ID.match(given) else uuid.uuid4().hex


def backoff_seconds(retry: int, first_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before retry number ``retry`` (1-based): ``first_s`` doubled per retry, capped at ``max_s``, then
    jittered to between half and all of it."""
    full = min(max_s, first_s * 2 ** (retry - 1))
    return full * (0.5 + 0.5 * rng.random())


@dataclass
class Circuit:
    """One replica's circuit: closed (``open_until`` 0), open (requests skip it until ``open_until``), or half-open
    (past ``open_until``: one request, the probe, is let through; its outcome closes or reopens the circuit)."""

    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def is_open(self) -> bool:
        return self.open_until > 0


class Breakers:
    """The circuits of every replica, by replica name. ``threshold`` 0 turns them off."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.circuits: dict[str, Circuit] = {}

    def blocked(self, name: str, now: float) -> bool:
        """Whether a request may not go to ``name`` now: its circuit is open, or half-open with its probe out."""
        c = self.circuits.get(name)
        if c is None or not c.is_open():
            return False
        return now < c.open_until or c.probing

    def begin(self, name: str, now: float) -> None:
        """A request is sent to ``name``: past the cooldown it is the half-open probe."""
        c = self.circuits.get(name)
        if c is not None and c.is_open() and now >= c.open_until:
            c.probing = True

    def success(self, name: str) -> bool:
        """True when this closed an open circuit."""
        c = self.circuits.pop(name, None)
        return c is not None and c.is_open()

    def failure(self, name: str, now: float) -> bool:
        """True when this opened the circuit (a threshold reached, or a failed probe)."""
        if self.threshold <= 0:
            return False
        c = self.circuits.setdefault(name, Circuit())
        c.failures += 1
        if c.is_open() or c.failures >= self.threshold:
            was_closed = not c.is_open()
            c.open_until, c.probing = now + self.cooldown_s, False
            return was_closed
        return False

    def release(self, name: str) -> None:
        """The request to ``name`` ended neither way (the client went away): a probe may go again."""
        c = self.circuits.get(name)
        if c is not None:
            c.probing = False

    def forget(self, keep: set[str]) -> None:
        for name in set(self.circuits) - keep:
            del self.circuits[name]


class TokenBuckets:
    """One token bucket per key name: ``size`` tokens, refilled at ``rate_per_s``; a request takes one."""

    def __init__(self, rate_per_s: float, size: float) -> None:
        self.rate, self.size = rate_per_s, size
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float) -> float:
        """0 when the request may go (a token taken), else the seconds until a token is there."""
        tokens, then = self.buckets.get(key, (self.size, now))
        tokens = min(self.size, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class Overloaded(Exception):
    """No slot and no room in the queue (or the wait in it ran out): a 503 with Retry-After."""


class Admission:
    """At most ``limit`` requests at once, ``queue`` more waiting (first come, first served) for up to
    ``timeout_s``. ``limit`` 0: no limit."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self.limit, self.queue, self.timeout_s = limit, queue, timeout_s
        self.active = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def try_enter(self) -> bool:
        """Take a slot without waiting: True when one was free and nobody is queued before this request."""
        if self.limit <= 0:
            return True
        if self.active < self.limit and not self.waiting:
            self.active += 1
            return True
        return False

    def full(self) -> bool:
        """No slot and no room in the queue: a request now is ``Overloaded`` at once."""
        return self.limit > 0 and self.active >= self.limit and len(self.waiting) >= self.queue

    async def enter(self) -> None:
        if self.try_enter():
            return
        if len(self.waiting) >= self.queue:
            raise Overloaded
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():  # the slot came just as the wait ended: hand it on
                self.leave()
            else:
                turn.cancel()
                self.waiting.remove(turn)
            if isinstance(exc, TimeoutError):
                raise Overloaded from None
            raise

    def leave(self) -> None:
        if self.limit <= 0:
            return
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes to the next in line: active stays the same
                return
        self.active -= 1

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.timeout_s / 10))
