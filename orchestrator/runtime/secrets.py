"""The engine key: the shared secret between the router and the engines it sends requests to. Engines accept
only requests that carry it (vLLM's ``--api-key``, the proxy in front of mlx-lm); the router sends it as
``Authorization: Bearer <key>`` on every upstream request, in place of whatever the client sent, so client keys
never reach an engine.

Where it comes from, first found wins:
1. ``MOXIN_ENGINE_KEY`` in the environment (Kubernetes: from a Secret; or set by hand);
2. inside Ray, the cluster's GCS key-value store: created once (random), then read by every router and replica,
   on whatever node, restarts included;
3. nowhere: None, and engines run without a key (a router outside Ray with no key set).
"""

from __future__ import annotations

import os
import secrets

from orchestrator.runtime.names import KV_ENGINE_KEY, NAMESPACE

ENGINE_KEY_ENV = "MOXIN_ENGINE_KEY"


def engine_key() -> str | None:
    """The engine key from the environment, else Ray's KV (get or create), else None. Never log it."""
    if key := os.environ.get(ENGINE_KEY_ENV):
        return key
    try:
        import ray
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    # Create only if absent (overwrite=False), then read back: concurrent first callers all get the winner's key.
    _internal_kv_put(KV_ENGINE_KEY, secrets.token_urlsafe(32).encode(), overwrite=False, namespace=NAMESPACE)
    stored = _internal_kv_get(KV_ENGINE_KEY, namespace=NAMESPACE)
    return stored.decode() if stored else None
