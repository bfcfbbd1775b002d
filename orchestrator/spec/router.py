"""The router's limits towards its replicas: timeouts, the connection cap per replica, the drain on shutdown.

One model, read by every place that configures a router: ``runtime/router.py`` enforces it, the controller passes
it to its router actors (option ``routerLimits``), ``moxin up`` and ``moxin router`` generate their flags from its
fields, and the Helm chart's ``router.limits`` values are this model (``render/values.py``). Plain data: no I/O.

The defaults are chosen for LLM serving, where a healthy answer can be slow: an engine under load queues a request
before its prefill, and a non-streamed answer has no byte to send before its last token. They are there to end
what is dead (a replica whose node vanished without closing its connections), not what is slow.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
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
