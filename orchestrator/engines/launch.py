"""``EngineLaunch``: everything needed to start one engine replica, as a value.

Pure: (model, variant, profile, parallelism, context, concurrency) -> EngineLaunch. The runtime (Ray),
the Kubernetes renderer and ``moxin engine-args`` all start engines from this one value: an argv list
(never a shell string), environment, port, health and metrics paths, a readiness budget, the image and
the device-visibility variable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.engines import mlx, vllm
from orchestrator.compat import check
from orchestrator.errors import MoxinError
from orchestrator.estimate.estimator import EngineSettings, estimate
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.model import Model, Variant

# Startup budget: engine start-up plus loading the weights of one device. vLLM on CPU took 66-110 s to
# become healthy on this project's 2-core machines with a tiny model (tests/integration/ENGINE_NOTES.md);
# on GPUs torch.compile and CUDA-graph capture take minutes. mlx-lm answers /health within seconds.
BASE_READINESS_S = {"vllm": 300, "vllm-metal": 300, "mlx-lm": 60}
# Concurrent sequences when none is asked for: vLLM's own default (max_num_seqs) on devices whose KV
# pool is a fraction of memory; on a CPU host the KV pool is sized for them (VLLM_CPU_KVCACHE_SPACE),
# so a small number; mlx-lm at most its own default --decode-concurrency (32), and no more than fit.
DEFAULT_CONCURRENCY = {"cpu": 8, "mlx-lm": 32}
# Weights are read from shared storage at no less than this rate (a conservative network-volume figure).
LOAD_BYTES_PER_S = 250e6


class UnsupportedError(MoxinError):
    """The engine cannot run this variant here (exit code 2, with the compatibility reasons)."""

    exit_code = 2


@dataclass(frozen=True)
class EngineLaunch:
    engine: str
    platform: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    metrics_path: str | None
    readiness_timeout_s: int
    image: str | None
    visibility_env: str | None
    served_model_name: str
    model_path: str
    notes: list[str] = field(default_factory=list)

    @property
    def request_model(self) -> str:
        """The model name a request must carry to reach this engine: the served name on vLLM; mlx-lm loads
        whatever a request names, and 'default_model' is the checkpoint it was started with."""
        return "default_model" if self.engine == "mlx-lm" else self.served_model_name

    def with_port(self, port: int) -> EngineLaunch:
        """The same launch listening on another port (the runtime picks free ports per replica)."""
        argv = list(self.argv)
        argv[argv.index("--port") + 1] = str(port)
        return replace(self, argv=argv, port=port)

    def env_for(self, devices: list[int]) -> dict[str, str]:
        """The environment of a replica that owns these device indices."""
        if self.visibility_env is None:
            return dict(self.env)
        return {**self.env, self.visibility_env: ",".join(str(d) for d in devices)}

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "platform": self.platform, "argv": self.argv, "env": self.env,
                "port": self.port, "healthPath": self.health_path, "metricsPath": self.metrics_path,
                "readinessTimeoutSeconds": self.readiness_timeout_s, "image": self.image,
                "visibilityEnv": self.visibility_env, "servedModelName": self.served_model_name,
                "requestModel": self.request_model,
                "modelPath": self.model_path, "notes": self.notes}


def readiness_timeout(engine: str, weights_bytes_per_device: int) -> int:
    return int(BASE_READINESS_S[engine] + math.ceil(weights_bytes_per_device / LOAD_BYTES_PER_S))


def default_concurrency(model: Model, variant: Variant, profile: HardwareProfile, engine: str, platform: str,
                        tp: int, pp: int, ep: bool, ctx: int, kv_dtype: str, settings: EngineSettings) -> int:
    if engine == "mlx-lm":
        one = estimate(model, variant, profile, tp=tp, pp=pp, ep=ep, context=ctx, kv_dtype=kv_dtype, engine=engine,
                       settings=settings)
        return max(1, min(DEFAULT_CONCURRENCY["mlx-lm"], one.max_concurrency or 1))
    return DEFAULT_CONCURRENCY.get(platform, settings.max_num_seqs)


def engine_launch(model: Model, variant: Variant, profile: HardwareProfile, *, tp: int = 1, pp: int = 1,
                  ep: bool = False, context: int | None = None, concurrency: int | None = None,
                  kv_dtype: str = "auto", engine: str | None = None, port: int = 8000, host: str = "0.0.0.0",
                  model_path: str | None = None, served_name: str | None = None, python: str = "python3",
                  settings: EngineSettings = EngineSettings(), multi_node: bool = False,
                  force: bool = False) -> EngineLaunch:
    """Build the launch of one replica. Refuses (UnsupportedError) what compat says will not run, unless
    ``force`` (tests use it to show the engine refusing too)."""
    verdict = check(variant, profile, engine)
    if not verdict.supported and not (force and verdict.engine is not None):
        raise UnsupportedError(f"{model.name}/{variant.name} on {profile.name}: {verdict.status}: {verdict.reason}")
    support = verdict.engine
    assert support is not None
    arch = model.spec.architecture
    assert arch is not None
    ctx = context or min(arch.max_position_embeddings, 8192)
    seqs = concurrency or default_concurrency(model, variant, profile, support.engine, support.platform, tp, pp,
                                              ep, ctx, kv_dtype, settings)
    # The KV the replica is sized for: all its sequences where moxin sizes the pool (CPU, mlx-lm).
    est = estimate(model, variant, profile, tp=tp, pp=pp, ep=ep, context=ctx, batch=seqs, kv_dtype=kv_dtype,
                   engine=support.engine, settings=settings)
    path = model_path or variant.checkpoint or f"/models/{model.name}/{variant.name}"
    name = served_name or model.name
    common = dict(path=path, name=name, host=host, port=port, python=python, context=ctx, concurrency=seqs)
    if support.engine == "mlx-lm":
        argv, env, notes = mlx.server_argv(support, est, **common)
        metrics = None
    else:
        argv, env, notes = vllm.server_argv(support, profile, variant, est, tp=tp, pp=pp, ep=ep,
                                            settings=settings, multi_node=multi_node, **common)
        metrics = "/metrics"
    if not verdict.supported:
        notes = [f"forced: compatibility says {verdict.status}: {verdict.reason}", *notes]
    return EngineLaunch(
        engine=support.engine, platform=support.platform, argv=argv, env=env, port=port, health_path="/health",
        metrics_path=metrics, readiness_timeout_s=readiness_timeout(support.engine, est.weights_bytes_per_device),
        image=support.image, visibility_env=profile.spec.kubernetes.visibility_env, served_model_name=name,
        model_path=path, notes=notes)

