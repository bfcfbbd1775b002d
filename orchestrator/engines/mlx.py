"""mlx-lm's OpenAI server (``python -m mlx_lm server``) argv: Apple silicon, or MLX's CPU backend."""

from __future__ import annotations

from orchestrator.estimate.estimator import Estimate
from orchestrator.spec.hardware import EngineSupport

KV_BITS = {"int8": 8, "int4": 4}
KV_GROUP = 64  # mlx-lm's default --kv-group-size


def server_argv(support: EngineSupport, est: Estimate, *, path: str, name: str, host: str, port: int,
                python: str, context: int, concurrency: int) -> tuple[list[str], dict[str, str], list[str]]:
    notes = ["mlx-lm serves no /metrics: the moxin router measures its requests",
             f"mlx-lm's server has no --max-kv-size (only mlx_lm.generate has it): the context bound of "
             f"{context} tokens is kept by the router; --prompt-cache-bytes bounds the cache kept between requests",
             f"mlx-lm loads whatever model a request names: the router sends requests for '{name}' as "
             "'default_model', the checkpoint it was started with"]
    argv = [python, "-m", "mlx_lm", "server", "--model", path, "--host", host, "--port", str(port),
            "--decode-concurrency", str(concurrency), "--prompt-cache-bytes", str(max(est.kv_bytes, 1))]
    bits = KV_BITS.get(est.kv_cache_dtype)
    if bits:
        argv += ["--kv-bits", str(bits), "--kv-group-size", str(KV_GROUP)]
        notes.append("a quantized KV cache turns off mlx-lm's batching: requests are served one at a time")
    return argv, {}, notes
