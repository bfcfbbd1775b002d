"""Calibration: how much of the datasheet bandwidth and compute an engine really gets.

Keyed by engine x hardware family (a glob) x format class x architecture class (dense or MoE), each entry
with the measurements it comes from. The most specific matching entry wins; the estimate says which one
it used. Entries marked ``measured=False`` are defaults nobody has measured yet, and the estimate says so.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from orchestrator.spec.formats import FORMATS
from orchestrator.spec.model import Architecture, Variant


@dataclass(frozen=True)
class Calibration:
    key: str
    engine: str
    family: str
    """fnmatch pattern over HardwareProfile.spec.family."""
    format_class: str
    """'float', 'fp8', 'int', 'mlx-affine' or '*'."""
    bandwidth_efficiency: float
    """Achieved / datasheet memory bandwidth during decode (bytes actually read per step / step time)."""
    compute_efficiency: float
    """Achieved / datasheet peak FLOPS during prefill."""
    measured: bool
    source: str
    architecture: str = "*"
    """'dense', 'moe' or '*': MoE decode at small batch reaches a far smaller share of the bandwidth."""
    fitted_to: tuple[str, ...] = ()
    """Ids of the MEASUREMENTS this entry is fitted to (empty for defaults)."""


# GLM-4.5-Air mlx-3bit on an M2 Max 64 GB (400 GB/s), mlx-lm: 4193 tokens at 25.564 tok/s after a
# 14-token prompt (facts/models.md, the seed's run). moxin's byte model for that run: 5,639,974,144 bytes
# of weights read per token (attention, dense layer, shared experts, router, lm_head, and the 8 of 128
# routed experts of each MoE layer that one token uses) plus the KV cache at the mean context of the run
# (14 + 4193/2 = 2110.5 tokens x 188,416 B = 397,651,968 B): 6,037,626,112 B per token, 15.09 ms at
# 400 GB/s, i.e. 66.25 tok/s at full bandwidth. Measured 25.564 -> 25.564 / 66.25 = 0.3859.
# It is keyed by engine x family x format class, so every MLX-quantized model on every Apple chip uses it.
# (tests/unit/estimate/test_estimator.py re-derives this figure from the byte model.)
MLX_APPLE_AFFINE_BW = 0.3859

TABLE: tuple[Calibration, ...] = (
    Calibration("mlx-lm/apple/mlx-affine", "mlx-lm", "apple-*", "mlx-affine", MLX_APPLE_AFFINE_BW, 0.5, True,
                "GLM-4.5-Air mlx-3bit decode on M2 Max 64GB, 25.564 tok/s over 4193 tokens (facts/models.md)"),
    Calibration("mlx-lm/apple/*", "mlx-lm", "apple-*", "*", MLX_APPLE_AFFINE_BW, 0.5, False,
                "assumed equal to the measured MLX affine figure; no unquantized MLX run measured"),
    Calibration("vllm-metal/apple/*", "vllm-metal", "apple-*", "*", MLX_APPLE_AFFINE_BW, 0.5, False,
                "assumed equal to mlx-lm (vllm-metal runs MLX kernels); not measured"),
    Calibration("vllm/*/*", "vllm", "*", "*", 0.6, 0.5, False,
                "uncalibrated default for vLLM on accelerators: no measurement on this hardware yet"),
    Calibration("*/*/*", "*", "*", "*", 0.5, 0.4, False, "uncalibrated default"),
)


def format_class(variant: Variant) -> str:
    """The format family of the weights a decode step mostly reads (routed experts, else the default)."""
    name = variant.formats.get("routedExperts", variant.formats["default"])
    return FORMATS[name].family


def architecture_class(arch: Architecture) -> str:
    """'moe' for a mixture-of-experts model, else 'dense'."""
    return "moe" if arch.moe else "dense"


def lookup(engine: str, family: str, fmt_class: str, arch_class: str = "dense") -> Calibration:
    def specificity(c: Calibration) -> int:
        parts = (c.engine, c.family, c.format_class, c.architecture)
        return sum(part != "*" for part in parts) + (c.family != "*" and "*" not in c.family)

    matches = [c for c in TABLE if fnmatch.fnmatch(engine, c.engine) and fnmatch.fnmatch(family, c.family)
               and fnmatch.fnmatch(fmt_class, c.format_class) and fnmatch.fnmatch(arch_class, c.architecture)]
    return max(matches, key=specificity)
