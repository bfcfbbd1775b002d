"""The engine key: the shared secret with which the router (and each replica's own probes) reach the engines.

Engines answer only holders of this key (vLLM through ``VLLM_API_KEY``, mlx-lm through the replica's
authenticating proxy). Where it comes from, first found wins:
1. ``MOXIN_ENGINE_KEY`` in the environment (Kubernetes renders it from a Secret; an operator may set it);
2. inside Ray, the cluster's internal KV (namespace ``moxin``, key ``engine-key``): the first process to ask
   creates it, every other one reads the same value;
3. otherwise none: engines run without authentication, as before.
"""

from __future__ import annotations

import os
import secrets

ENGINE_KEY_ENV = "MOXIN_ENGINE_KEY"
KV_NAMESPACE = "moxin"
KV_KEY = b"engine-key"


def engine_key() -> str | None:
    """The engine key, or None where there is none (outside Ray without the environment variable)."""
    if key := os.environ.get(ENGINE_KEY_ENV):
        return key
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():  # asking the KV would start Ray
        return None
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

    value = _internal_kv_get(KV_KEY, namespace=KV_NAMESPACE)
    if value is None:
        # Several processes may race here: overwrite=False keeps the first value, and everyone re-reads it.
        _internal_kv_put(KV_KEY, secrets.token_urlsafe(32).encode(), overwrite=False, namespace=KV_NAMESPACE)
        value = _internal_kv_get(KV_KEY, namespace=KV_NAMESPACE)
    return value.decode() if value is not None else None
