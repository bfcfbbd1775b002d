"""``estimate()``: does variant V of model M fit on hardware H, at what context and concurrency, how fast.

Pure: (model, variant, profile, settings) -> ``Estimate``. Chooses the smallest parallelism that fits
when none is given. Every number it cannot know is None, with a reason the user can act on; every uncertain
datasheet figure it used is listed (``uncertain_inputs``), and a verdict that rests on the operator's own
declaration says so (``declared_by``).

Measurements: given Benchmark documents, a Benchmark of exactly this replica (estimate/benchmarks.py) is read at
the estimate's batch (``measured``, estimate/measured.py), beside the roofline; given calibration entries fitted
to Benchmarks (estimate/fit.py), the roofline uses the one for this hardware instead of the table's.
``speed_source`` says which: 'measured', 'calibrated' (a roofline with a fitted efficiency) or 'roofline'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.compat import MAX_PIPELINE_STAGES, Verdict, check, pp_choices, tp_choices
from orchestrator.estimate.benchmarks import ExactMatch, Replica, emulated_only, exact_match
from orchestrator.estimate.calibration import Calibration, architecture_class, format_class, lookup
from orchestrator.estimate.datasheet import UncertainFigure, uncertain_figures
from orchestrator.estimate.measured import Reading, read_at, usable_points
from orchestrator.estimate.memory import (
    GiB,
    Parallelism,
    activation_peak_bytes,
    kv_bytes_per_token,
    stage_weight_bytes,
)
from orchestrator.estimate.parameters import weight_bytes
from orchestrator.estimate.performance import ALLREDUCE_LATENCY_S, active_flops_per_token, decode_step_costs
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.engine import ENGINE_DEFAULTS, EngineSettings, KvDtype
from orchestrator.spec.formats import FORMATS
from orchestrator.spec.hardware import EngineSupport, HardwareProfile
from orchestrator.spec.model import Model, Variant

# Fixed per-device memory a vLLM worker holds outside its budgeted pools: CUDA context, NCCL and
# cuBLAS workspaces ("non-torch memory") and captured CUDA graphs. Not measured here (no GPU engine
# could run on this project's machines): typical figures from vLLM worker logs, flagged in `reasons`.
VLLM_NON_TORCH_BYTES = int(0.5 * GiB)
VLLM_CUDA_GRAPH_BYTES = int(0.5 * GiB)
# mlx-lm allocates its KV cache in steps of this many tokens (mlx_lm/models/cache.py, KVCache.step).
MLX_KV_STEP = 256
# mlx-lm prefills the prompt in chunks of this many tokens (prefill_step_size in mlx_lm.generate).
MLX_PREFILL_STEP = 2048
VLLM_BLOCK_TOKENS = {"cpu": 128}  # vLLM's KV block size by platform; 16 elsewhere
VLLM_DEFAULT_BLOCK = 16


@dataclass(frozen=True)
class MeasuredSpeed:
    """A Benchmark of exactly this replica, read at the estimate's batch (estimate/measured.py)."""

    benchmark: str
    reading: Reading | None
    """The curve at the batch; None above the highest usable level (nothing is read beyond it)."""
    measured_range: tuple[int, int] | None
    """Lowest and highest usable concurrency of the curve."""
    notes: tuple[str, ...]
    """How the measurement differs from the replica, and the levels left out."""

    def to_json(self) -> dict[str, Any]:
        r = self.reading
        return {"benchmark": self.benchmark, "concurrency": r.concurrency if r else None, "read": r.how if r else None,
                "ttftSeconds": {"p50": r.ttft_p50_s, "p95": r.ttft_p95_s} if r else None,
                "tpotSeconds": {"p50": r.tpot_p50_s, "p95": r.tpot_p95_s} if r else None,
                "decodeTokensPerSecond": r.decode_tokens_per_second if r else None,
                "outputTokensPerSecond": r.output_tokens_per_second if r else None,
                "requestsPerSecond": r.requests_per_second if r else None,
                "measuredConcurrency": list(self.measured_range) if self.measured_range else None,
                "notes": list(self.notes)}


@dataclass(frozen=True)
class Estimate:
    model: str
    variant: str
    hardware: str
    engine: str | None
    platform: str | None
    support: str
    """'supported', 'unsupported' or 'unknown' (orchestrator.compat); an unknown combination is estimated
    as if it ran, and says so in reasons."""
    fits: bool
    tensor_parallel: int
    pipeline_parallel: int
    expert_parallel: bool
    devices: int
    context_tokens: int
    batch: int
    kv_cache_dtype: str
    weights_bytes: int
    weights_bytes_per_device: int
    kv_bytes_per_token: int
    kv_bytes_per_token_per_device: int
    kv_bytes: int
    overhead_bytes_per_device: int
    peak_bytes: int
    peak_bytes_per_device: int
    usable_bytes_per_device: int | None
    max_context_tokens: int | None
    max_concurrency: int | None
    decode_tokens_per_second: float | None
    aggregate_decode_tokens_per_second: float | None
    prefill_tokens_per_second: float | None
    decode_step_seconds: float | None
    bound: str | None
    calibration: dict[str, Any] | None
    usd_per_hour: float | None
    usd_per_million_output_tokens: float | None
    reasons: list[str] = field(default_factory=list)
    uncertain_inputs: list[UncertainFigure] = field(default_factory=list)
    """Each uncertain datasheet figure this estimate used (shown as 'uncertain datasheet figure: <field> (<source>)')."""
    declared_by: str | None = None
    """The profile whose declaredSupport makes this combination 'supported' (not moxin's own rules)."""
    declared_source: str | None = None
    """That declaration's source, as the operator wrote it."""
    measured: MeasuredSpeed | None = None
    """A Benchmark of exactly this replica, read at ``batch``; the roofline fields stay the roofline's."""
    speed_source: str | None = None
    """'measured' (``measured`` holds figures at this batch), 'calibrated' (the roofline, with an efficiency fitted
    to a Benchmark: ``calibration['benchmark']``), 'roofline' (the datasheet roofline and the calibration table), or
    None when no speed is known."""

    @property
    def speed_label(self) -> str:
        """Where the speed figures come from, as people read it."""
        if self.speed_source == "measured" and self.measured:
            return f"measured (Benchmark {self.measured.benchmark})"
        if self.speed_source == "calibrated" and self.calibration:
            return f"datasheet roofline, calibrated from Benchmark {self.calibration['benchmark']}"
        return "datasheet roofline" if self.speed_source == "roofline" else "unknown"

    @property
    def support_label(self) -> str:
        """The support status as people read it: 'supported (declared by my-mlu590)' for a declared one."""
        return f"{self.support} (declared by {self.declared_by})" if self.declared_by else self.support

    def to_json(self) -> dict[str, Any]:
        def camel(name: str) -> str:
            head, *rest = name.split("_")
            return head + "".join(p.title() for p in rest)

        out = {camel(k): v for k, v in self.__dict__.items()}
        out["uncertainInputs"] = [str(u) for u in self.uncertain_inputs]
        out["measured"] = self.measured.to_json() if self.measured else None
        return out


def resolve_kv_dtype(kv: str, variant: Variant) -> KvDtype:
    if kv != "auto":
        return kv  # type: ignore[return-value]
    return "fp16" if variant.format_of("attention") == "fp16" else "bf16"


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _kv_step(engine: str, platform: str | None) -> int:
    if engine == "mlx-lm":
        return MLX_KV_STEP
    return VLLM_BLOCK_TOKENS.get(platform or "", VLLM_DEFAULT_BLOCK)


def estimate(model: Model, variant: Variant, profile: HardwareProfile, *, tp: int | None = None,
             pp: int | None = None, ep: bool = False, context: int | None = None, batch: int = 1,
             kv_dtype: str = "auto", engine: str | None = None, settings: EngineSettings = ENGINE_DEFAULTS,
             usd_per_device_hour: float | None = None, max_pp: int = MAX_PIPELINE_STAGES,
             prompt_tokens: int | None = None, calibration: Calibration | None = None,
             calibrations: Sequence[Calibration] = (), benchmarks: Sequence[Benchmark] = (),
             emulated: bool = False) -> Estimate:
    """Estimate one (model, variant, hardware). With tp/pp unset, the smallest parallelism that fits.

    ``prompt_tokens`` (default: the whole context) sizes the prefill chunk whose activations are the
    temporary peak of an mlx-lm replica. ``calibration`` replaces the calibration table's entry (to fit
    an entry to a published figure, or to ask "what if"; benchmarks/calibration.py); ``calibrations`` are
    entries fitted to Benchmarks (estimate/fit.py), used where they match before the table's.
    ``benchmarks``: a Benchmark of exactly the replica chosen is read at ``batch`` (``Estimate.measured``);
    ``emulated``: the replica runs on an emulated pool, where a Benchmark measured on CPU also answers.
    """
    arch = model.spec.architecture
    assert arch is not None
    ctx = settings.context(arch.max_position_embeddings, context)
    verdict = check(variant, profile, engine, context_tokens=ctx)
    support = verdict.engine if verdict.status != "unsupported" else None
    engine_name = verdict.engine.engine if verdict.engine else (engine or "vllm")
    tps = [tp] if tp else tp_choices(profile.spec.devices_per_node, arch.attention_heads, engine_name)
    pps = [pp] if pp else pp_choices(engine_name, max_pp)
    replica = Replica(model.name, variant.name, profile.name, engine_name, 0, 0, ep, ctx,
                      resolve_kv_dtype(kv_dtype, variant), emulated)

    def measured(t: int, p: int) -> ExactMatch | None:
        return exact_match(benchmarks, replace(replica, tp=t, pp=p), variant) if support is not None else None

    def at(par: Parallelism) -> Estimate:
        return _estimate_at(model, variant, profile, verdict, support, engine_name, par, ctx, batch, kv_dtype,
                            settings, usd_per_device_hour, prompt_tokens or ctx, calibration, calibrations)

    tried: list[Estimate] = []
    for p in pps:
        for t in tps:
            result = at(Parallelism(t, p, ep))
            if (result.fits and not (tp or pp) and t * p in pps and _speed_needs_a_link(result, profile)
                    and measured(t, p) is None):
                staged = at(Parallelism(1, t * p, ep))
                if staged.fits and staged.decode_step_seconds is not None:
                    why = (f"tp={t} pp={p} fits too, but its speed is unknown without an interconnect bandwidth; "
                           f"shown as {t * p} pipeline stages, which need none")
                    return _with_measurement(replace(staged, reasons=[*staged.reasons, why]), measured(1, t * p),
                                             benchmarks, replica)
            if result.fits or (tp and pp) or support is None:
                return _with_measurement(result, measured(t, p), benchmarks, replica)
            tried.append(result)
    # Nothing fits: report the largest configuration tried, with what would make it fit.
    best = tried[-1]
    hints = [f"nothing up to tp={best.tensor_parallel} pp={best.pipeline_parallel} fits"]
    if not pp and engine_name != "vllm":
        hints.append(f"{engine_name} runs a replica on one device (no tensor or pipeline parallelism)")
    return _with_measurement(replace(best, reasons=best.reasons + hints),
                             measured(best.tensor_parallel, best.pipeline_parallel), benchmarks, replica)


def _with_measurement(result: Estimate, match: ExactMatch | None, benchmarks: Sequence[Benchmark],
                      replica: Replica) -> Estimate:
    """The estimate with the Benchmark of exactly its replica read at its batch, and said in its reasons."""
    here = replace(replica, tp=result.tensor_parallel, pp=result.pipeline_parallel)
    skipped = emulated_only(benchmarks, here)
    reasons = list(result.reasons) + [
        f"Benchmark {name} measured this replica on an emulated pool (on CPU): its figures describe the CPU, not "
        f"{result.hardware}, and are not used" for name in skipped]
    if match is None:
        return replace(result, reasons=reasons)
    usable = usable_points(match.benchmark.spec.curve)
    reading = read_at(usable, result.batch)
    span = (usable.lowest, usable.highest) if usable.points else None
    notes = [*match.notes, *usable.reasons]
    if reading is None and span:
        notes.append(f"batch {result.batch} is beyond the measured range (max concurrency {span[1]}) of "
                     f"Benchmark {match.name}: no measured figure is read there")
    elif reading is not None and reading.how == "interpolated":
        notes.append(f"read between measured concurrencies, linearly in concurrency (Benchmark {match.name})")
    elif reading is not None and reading.how == "below-range":
        notes.append(f"batch {result.batch} is below the lowest measured concurrency ({span[0] if span else '?'}): "
                     "latencies taken as measured there, throughput scaled down in proportion")
    speed = MeasuredSpeed(match.name, reading, span, tuple(notes))  # type: ignore[arg-type]
    source = "measured" if reading is not None else result.speed_source
    said = (f"speed measured by Benchmark {match.name} at concurrency {reading.concurrency} ({reading.how})"
            if reading is not None else f"Benchmark {match.name} measured this replica, but not at batch "
            f"{result.batch}")
    return replace(result, measured=speed, speed_source=source, reasons=[*reasons, said, *notes])


def _speed_needs_a_link(result: Estimate, profile: HardwareProfile) -> bool:
    """Speed is unknown only because tensor parallelism needs the interconnect bandwidth, which is unpublished."""
    return (result.decode_step_seconds is None and result.tensor_parallel > 1
            and profile.spec.interconnect.bandwidth_gbps is None
            and profile.spec.memory_bandwidth_gbps is not None)


def _usable_per_device(profile: HardwareProfile, engine: str, settings: EngineSettings) -> tuple[int | None, str]:
    spec = profile.spec
    if spec.memory_gb is None:
        return None, f"{profile.name} has no published memory size"
    total = spec.memory_gb * 1e9 * spec.usable_memory.fraction
    if engine == "vllm" and spec.usable_memory.rule == "device":
        return int(total * settings.gpu_memory_utilization), (
            f"gpu_memory_utilization {settings.gpu_memory_utilization} of {spec.memory_gb:g} GB")
    if spec.usable_memory.rule == "unifiedWorkingSet":
        return int(total), f"{spec.usable_memory.fraction:g} of {spec.memory_gb:g} GB unified memory (GPU working set)"
    return int(total), f"{spec.memory_gb:g} GB"


def _estimate_at(model: Model, variant: Variant, profile: HardwareProfile, verdict: Verdict,
                 support: EngineSupport | None, engine: str, par: Parallelism, ctx: int, batch: int, kv_choice: str, settings: EngineSettings,
                 price: float | None, prompt: int, calibration: Calibration | None = None,
                 calibrations: Sequence[Calibration] = ()) -> Estimate:
    arch = model.spec.architecture
    assert arch is not None
    reasons: list[str] = []
    platform = verdict.engine.platform if verdict.engine else None
    kv = resolve_kv_dtype(kv_choice, variant)
    support_status = verdict.status
    if verdict.status != "supported":
        reasons.append(f"{verdict.status} on {profile.name}: {verdict.reason}")
    elif verdict.declared_by:
        reasons.append(f"supported as declared, not by moxin's rules: {verdict.reason}")
    if support is not None and kv not in support.kv_cache_dtypes and kv_choice != "auto":
        reasons.append(f"{engine} on {profile.name} has no {kv} KV cache (it has {', '.join(support.kv_cache_dtypes)})")
        support = None
        support_status = "unsupported"
    if ctx > arch.max_position_embeddings:
        reasons.append(f"context {ctx} exceeds {model.name}'s maximum of {arch.max_position_embeddings} tokens")

    stages = stage_weight_bytes(arch, variant, par)
    weights_dev = max(stages)
    weights_total = weight_bytes(arch, variant, include_mtp=False)
    kvpt = kv_bytes_per_token(arch, kv, par, engine)
    step = _kv_step(engine, platform)
    cached_tokens = _round_up(ctx, step) * batch
    kv_dev = kvpt.per_device * cached_tokens

    if engine == "mlx-lm" or engine == "vllm-metal":
        # mlx-lm runs the prompt through the model in chunks and the model returns logits (in its bf16
        # dtype) for every token of a chunk, so the chunk's logits count, not only the last token's.
        chunk = min(prompt, ctx, MLX_PREFILL_STEP)
        overhead = activation_peak_bytes(arch, chunk, par.tp, max_seqs=chunk, logit_bytes=2)
    elif platform == "cpu":
        overhead = activation_peak_bytes(arch, min(settings.max_num_batched_tokens, ctx), par.tp, settings.max_num_seqs)
    else:
        overhead = (activation_peak_bytes(arch, settings.max_num_batched_tokens, par.tp, settings.max_num_seqs)
                    + VLLM_NON_TORCH_BYTES + VLLM_CUDA_GRAPH_BYTES)

    usable, usable_note = _usable_per_device(profile, engine, settings)
    # The figures this result rests on (none when compat refuses it: nothing is estimated then).
    used = _memory_figures(profile) if support is not None and usable is not None and not (
        platform == "cpu" and settings.cpu_kv_cache_gib is not None) else []
    if platform == "cpu" and settings.cpu_kv_cache_gib is not None:
        # vLLM CPU: the KV pool is exactly VLLM_CPU_KVCACHE_SPACE, whatever the host has.
        free_for_kv = int(settings.cpu_kv_cache_gib * GiB)
    else:
        free_for_kv = None if usable is None else usable - weights_dev - overhead
    peak_dev = weights_dev + overhead + kv_dev
    fits = support is not None and ctx <= arch.max_position_embeddings
    if free_for_kv is None:
        reasons.append(f"cannot check fit: {usable_note}")
        fits = False
        max_ctx = max_conc = None
    else:
        capacity_tokens = max(0, free_for_kv) // kvpt.per_device if kvpt.per_device else 0
        max_ctx = min(arch.max_position_embeddings, capacity_tokens // step * step)
        max_conc = capacity_tokens // _round_up(ctx, step)
        if engine == "vllm":
            max_conc = min(max_conc, settings.max_num_seqs)
        if kv_dev > free_for_kv:
            fits = False
            short = kv_dev - free_for_kv
            where = "the KV pool (VLLM_CPU_KVCACHE_SPACE)" if platform == "cpu" and settings.cpu_kv_cache_gib else (
                f"{profile.name} ({usable_note}: {usable / 1e9:.1f} GB usable per device)")
            reasons.append(
                f"needs {peak_dev / 1e9:.1f} GB per device (weights {weights_dev / 1e9:.1f} + KV "
                f"{kv_dev / 1e9:.2f} for {batch} x {ctx} tokens + overhead {overhead / 1e9:.2f}) at tp={par.tp} "
                f"pp={par.pp}; {where} leaves it short by {short / 1e9:.1f} GB"
                + _what_would_fit(model, variant, kv_dev + overhead, usable, par, engine))
    speed = _speed(model, variant, profile, engine, par, ctx, batch, kv, settings, reasons, calibration, calibrations)
    used += speed["figures"] if support is not None else []
    devices = par.devices
    usd_hour = None if price is None else price * devices
    per_m = None
    if usd_hour is not None and speed["aggregate"]:
        per_m = usd_hour / (speed["aggregate"] * 3600) * 1e6
    if engine == "vllm" and platform not in ("cpu",) and support is not None:
        reasons.append("vLLM non-torch and CUDA-graph memory (1 GiB per device) are typical figures, not measured")
    return Estimate(
        model=model.name, variant=variant.name, hardware=profile.name, engine=support.engine if support else None,
        platform=platform, support=support_status, fits=fits, tensor_parallel=par.tp, pipeline_parallel=par.pp, expert_parallel=par.ep,
        devices=devices, context_tokens=ctx, batch=batch, kv_cache_dtype=kv,
        weights_bytes=weights_total, weights_bytes_per_device=weights_dev, kv_bytes_per_token=kvpt.replica,
        kv_bytes_per_token_per_device=kvpt.per_device, kv_bytes=kvpt.replica * cached_tokens,
        overhead_bytes_per_device=overhead, peak_bytes=sum(stages) * par.tp + (overhead + kv_dev) * devices,
        peak_bytes_per_device=peak_dev, usable_bytes_per_device=usable, max_context_tokens=max_ctx,
        max_concurrency=max_conc, decode_tokens_per_second=speed["decode"],
        aggregate_decode_tokens_per_second=speed["aggregate"], prefill_tokens_per_second=speed["prefill"],
        decode_step_seconds=speed["step"], bound=speed["bound"], calibration=speed["calibration"],
        usd_per_hour=usd_hour, usd_per_million_output_tokens=per_m, reasons=reasons,
        uncertain_inputs=uncertain_figures(profile, used), declared_by=verdict.declared_by,
        declared_source=verdict.declared.source if verdict.declared else None,
        speed_source=speed["source"] if support is not None else None)


def _memory_figures(profile: HardwareProfile) -> list[str]:
    """The figures the usable memory per device comes from."""
    return ["memoryGB"] + (["usableMemory.fraction"] if profile.spec.usable_memory.fraction != 1.0 else [])


def _what_would_fit(model: Model, variant: Variant, kv_and_overhead: int, usable: int | None, par: Parallelism,
                    engine: str) -> str:
    """A sentence naming the variants that would fit as they are, and whether more devices would help."""
    if usable is None:
        return ""
    arch = model.spec.architecture
    others = [(max(stage_weight_bytes(arch, v, par)), v.name) for v in model.spec.variants if v.name != variant.name]
    fitting = sorted((w, name) for w, name in others if w + kv_and_overhead <= usable)
    options = []
    if fitting:
        w, name = fitting[-1]  # the largest (least compressed) variant that fits
        options.append(f"use variant {name} ({w / 1e9:.1f} GB of weights per device)")
    if engine == "vllm":
        options.append("spread it over more devices (tensor or pipeline parallelism)")
    else:
        options.append("use hardware with more memory")
    return ". To fit: " + ", or ".join(options)


def _speed(model: Model, variant: Variant, profile: HardwareProfile, engine: str, par: Parallelism, ctx: int,
           batch: int, kv: KvDtype, settings: EngineSettings, reasons: list[str],
           calibration: Calibration | None = None, calibrations: Sequence[Calibration] = ()) -> dict[str, Any]:
    arch = model.spec.architecture
    spec = profile.spec
    cal: Calibration = calibration or lookup(engine, spec.family, format_class(variant), architecture_class(arch),
                                             hardware=profile.name, extra=calibrations)
    out: dict[str, Any] = {"decode": None, "aggregate": None, "prefill": None, "step": None, "bound": None,
                           "figures": [], "source": None,
                           "calibration": {"key": cal.key, "bandwidthEfficiency": cal.bandwidth_efficiency,
                                           "computeEfficiency": cal.compute_efficiency, "measured": cal.measured,
                                           "source": cal.source, "benchmark": cal.benchmark}}
    if not cal.measured:
        reasons.append(f"speed uses calibration '{cal.key}', which is not measured ({cal.source})")
    compute_fmt = FORMATS[variant.formats.get("routedExperts", variant.formats["default"])].compute
    if compute_fmt not in spec.native_formats:
        compute_fmt = "bf16" if "bf16" in spec.native_formats else "fp16"
    peak_field = compute_fmt if getattr(spec.peak_tflops, compute_fmt, None) else (
        "fp16" if compute_fmt == "bf16" and spec.peak_tflops.fp16 else None)
    peak = getattr(spec.peak_tflops, peak_field) if peak_field else None
    bw = spec.memory_bandwidth_gbps
    link = spec.interconnect.bandwidth_gbps
    if bw is None:
        reasons.append(f"decode speed unknown: {profile.name} has no published memory bandwidth")
    if peak is None:
        reasons.append(f"compute-bound speeds unknown: {profile.name} has no published {compute_fmt} peak")
    if par.tp > 1 and link is None:
        reasons.append(f"tensor-parallel speed unknown: {profile.name} has no published interconnect bandwidth")
    if bw is None or peak is None or (par.tp > 1 and link is None):
        return out
    out["figures"] = ["memoryBandwidthGBps", f"peakTflops.{peak_field}"] + (
        ["interconnect.bandwidthGBps"] if par.tp > 1 else [])
    eff_bw = bw * 1e9 * cal.bandwidth_efficiency
    eff_flops = peak * 1e12 * cal.compute_efficiency
    step = 0.0
    worst = {"memory": 0.0, "compute": 0.0, "interconnect": 0.0}
    for cost in decode_step_costs(arch, variant, par, batch, ctx, kv, engine):
        t_mem, t_cmp = cost.bytes_read / eff_bw, cost.flops / eff_flops
        t_comm = 0.0
        if cost.allreduces:
            t_comm = cost.allreduces * (ALLREDUCE_LATENCY_S
                                        + 2 * (par.tp - 1) / par.tp * cost.allreduce_bytes / (link * 1e9))
        step += max(t_mem, t_cmp) + t_comm
        worst["memory"] += t_mem
        worst["compute"] += t_cmp
        worst["interconnect"] += t_comm
    out["source"] = "calibrated" if cal.benchmark else "roofline"
    out["step"] = step
    out["decode"] = 1 / step
    out["aggregate"] = batch / step
    out["bound"] = max(worst, key=lambda k: worst[k])
    flops_token = active_flops_per_token(arch, variant, par)
    prompt = min(ctx, settings.default_context_tokens)  # prefill is quoted for a prompt of the default context
    attn = 2 * 2 * prompt / 2 * arch.attention_heads / par.tp * arch.head_dim * arch.layers  # mean causal span
    out["prefill"] = eff_flops / (flops_token / par.pp + attn / par.pp) / par.pp if flops_token else None
    return out
