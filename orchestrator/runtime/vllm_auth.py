"""A vLLM middleware that asks for the engine key on every path but health and metrics.

vLLM 0.32 checks ``VLLM_API_KEY`` only on paths under /v1, /v2, /inference and /cohere
(vllm/entrypoints/serve/middleware/authenticate.py); SageMaker's /invocations, /tokenize and the rest stay open,
and /invocations runs completions. The replica passes ``--middleware orchestrator.runtime.vllm_auth.require_key``
(vllm/entrypoints/serve/middleware/register.py loads it into the engine's FastAPI app) whenever it gives the
engine a key. Runs inside the engine process: it imports nothing from moxin.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

OPEN_PATHS = frozenset({"/health", "/metrics", "/ping"})
"""Paths the replica's probes and Prometheus reach without the key."""
MIDDLEWARE = f"{__name__}.require_key"


async def require_key(request: Any, call_next: Any) -> Any:
    key = os.environ.get("VLLM_API_KEY", "")
    if not key or request.url.path in OPEN_PATHS or request.method == "OPTIONS":
        return await call_next(request)
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        return await call_next(request)
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": "this engine answers only its replica and the router",
                                   "type": "authentication_error", "code": 401}}, status_code=401)
