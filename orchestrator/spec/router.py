"""The router's limits towards its replicas and its clients: timeouts, the connection cap per replica, the drain on
shutdown, retries with backoff, the circuit breaker per replica, active health checks (outside Ray), the
concurrency limit with its queue, and the rate limit per API key.

One model, read by every place that configures a router: ``runtime/router.py`` enforces it, the controller passes
it to its router actors (option ``routerLimits``), ``moxin up`` and ``moxin router`` generate their flags from its
fields, and the Helm chart's ``router.limits`` values are this model (``render/values.py``). Plain data: no I/O.

The defaults are chosen for LLM serving, where a healthy answer can be slow: an engine under load queues a request
before its prefill, and a non-streamed answer has no byte to send before its last token. They are there to end
what is dead (a replica whose node vanished without closing its connections), not what is slow.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from orchestrator.spec.base import MAX_SECONDS, FiniteFloat


class RouterLimits(BaseModel):
    """How long the router waits on a replica, how many connections it opens to one, how long it drains."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True,
                              use_attribute_docstrings=True, validate_default=True)

    connect_timeout_seconds: FiniteFloat = Field(5.0, gt=0, le=MAX_SECONDS)
    """Longest wait for a TCP connection to a replica. A replica on the cluster's network answers in
    milliseconds; past this it is taken as gone and the request goes to another replica."""
    first_byte_timeout_seconds: FiniteFloat = Field(300.0, gt=0, le=MAX_SECONDS)
    """Longest wait from sending a request to the first byte of the replica's answer body (headers alone do not
    count: engines send them before the prefill). It covers queueing in a loaded engine and the prefill of a long
    prompt, and for a non-streamed request the whole generation. Past it, nothing has reached the client yet:
    the request goes to another replica, or is a 504 when none is left."""
    idle_timeout_seconds: FiniteFloat = Field(60.0, gt=0, le=MAX_SECONDS)
    """Longest silence between two pieces of a stream once it has begun (a healthy engine sends a token every
    few tens of milliseconds, and stalls for seconds at most when it preempts). Past it the client's stream ends
    with an error event (code ``upstream_idle_timeout``) and no [DONE]."""
    max_connections_per_replica: int = Field(256, ge=1, le=100_000)
    """Concurrent connections the router opens to one replica; further requests wait for one (their wait counts
    towards the first-byte timeout). 256 is vLLM's default batch (max_num_seqs): an engine holds the rest in its
    own queue anyway, where they cost it memory."""
    drain_seconds: FiniteFloat = Field(25.0, ge=0, le=MAX_SECONDS)
    """On SIGTERM (or the router actor's ``drain``) the router closes its listening socket first, so that new
    connections go to the other routers, then lets the requests in flight finish for up to this long; a stream
    still going then ends with an error event (code ``router_draining``) and no [DONE]. Below Kubernetes' default
    grace period (30 s), so that the kubelet does not kill a draining router."""
    client_timeout_seconds: FiniteFloat = Field(60.0, gt=0, le=MAX_SECONDS)
    """Longest a client may take to send one request, head and body, once it began it (past it: a 408 and the
    connection closed: a slow or stalled client cannot hold the router's connections), and longest a keep-alive
    connection may sit idle between requests before the router closes it."""
    retry_attempts: int = Field(3, ge=1, le=16)
    """Replicas one request may try, the first included. A try that fails before any byte reached the client (no
    connection, no first byte in time, an answer of 429 or 5xx) goes to another replica of the deployment while
    attempts are left; once they are spent the client gets the last replica's answer (its 429 or 5xx as it
    was), or a 503/504 from the router when no replica answered at all. 1: no retry."""
    retry_backoff_seconds: FiniteFloat = Field(0.005, ge=0, le=MAX_SECONDS)
    """Wait before the first retry; each next retry waits twice as long, up to ``retry_backoff_max_seconds``,
    and each wait is jittered (between half and all of it) so that retries of many requests do not arrive
    together. 0: retry at once."""
    retry_backoff_max_seconds: FiniteFloat = Field(0.5, ge=0, le=MAX_SECONDS)
    """Longest wait between two tries of one request."""
    circuit_failure_threshold: int = Field(5, ge=0, le=1_000_000)
    """Consecutive failures of a replica (no connection, no first byte in time, a 5xx) that open its circuit: the
    router then sends it nothing for ``circuit_cooldown_seconds``, after which one request probes it (half-open):
    a success closes the circuit, a failure opens it again. A 429 is the replica being busy, not broken, and does
    not count. 0: no circuit breaker."""
    circuit_cooldown_seconds: FiniteFloat = Field(10.0, gt=0, le=MAX_SECONDS)
    """How long an open circuit keeps a replica out before the half-open probe."""
    health_check_interval_seconds: FiniteFloat = Field(5.0, ge=0, le=MAX_SECONDS)
    """Outside Ray (``moxin router``, Kubernetes) the router GETs each replica's /health this often: a replica that
    fails the check (no 200 within ``health_check_timeout_seconds``) is marked down and gets requests only when
    every replica of its deployment is down, until a check passes. Inside Ray the controller checks replicas and
    the router does not. 0: no active checks."""
    health_check_timeout_seconds: FiniteFloat = Field(2.0, gt=0, le=MAX_SECONDS)
    """Longest wait for a replica's /health answer."""
    max_concurrent_requests: int = Field(0, ge=0, le=10_000_000)
    """Completions requests this router forwards at once; the next ones wait in a queue of ``max_queued_requests``.
    0: no limit."""
    max_queued_requests: int = Field(0, ge=0, le=10_000_000)
    """Requests that may wait for a slot under ``max_concurrent_requests``; one more is refused at once with a 503,
    a ``Retry-After`` header and a JSON error (code ``router_overloaded``), and so is one that waited
    ``queue_timeout_seconds``."""
    queue_timeout_seconds: FiniteFloat = Field(30.0, gt=0, le=MAX_SECONDS)
    """Longest wait in the queue of ``max_queued_requests``."""
    key_requests_per_second: FiniteFloat = Field(0.0, ge=0, le=1e9)
    """With API keys: requests per second each key may send (a token bucket of ``key_burst`` tokens refilled at
    this rate); a request past it is a 429 with a ``Retry-After`` header and a JSON error (code
    ``rate_limit_exceeded``). 0: no rate limit."""
    key_burst: int = Field(0, ge=0, le=10_000_000)
    """Requests a key may send at once after being idle (the token bucket's size); 0: one second's worth of
    ``key_requests_per_second`` (at least 1)."""

    @model_validator(mode="after")
    def _backoff_in_order(self) -> Self:
        if self.retry_backoff_seconds > self.retry_backoff_max_seconds:
            raise ValueError(f"retryBackoffSeconds ({self.retry_backoff_seconds:g}) is above retryBackoffMaxSeconds "
                             f"({self.retry_backoff_max_seconds:g}): raise the maximum or lower the first wait")
        return self

    @property
    def key_bucket_size(self) -> float:
        """The rate limit's bucket: ``key_burst``, or one second's worth of requests (at least 1)."""
        return float(self.key_burst or max(1.0, self.key_requests_per_second))
