"""The registry of numeric formats a weight can be stored in, with exact storage cost.

A format says how many bits each weight takes and how its scales and zero points are laid out; the
bytes of a weight matrix follow exactly (``matrix_bytes``). Sources: facts/models.md (MLX affine group
quantization, FP8 block scales, Int4 group-128 with 16-bit scales, AWQ 4-bit zero points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Granularity = Literal["none", "tensor", "channel", "group", "block"]
# What the matrix multiply computes in: weight-only formats are dequantized to 16-bit first.
Compute = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]


@dataclass(frozen=True)
class Format:
    name: str
    bits: int
    """Bits of one stored weight."""
    family: Literal["float", "fp8", "int", "mlx-affine"]
    compute: Compute
    """The arithmetic the matmul runs in (weight-only formats compute in 16-bit)."""
    granularity: Granularity = "none"
    group_size: int | None = None
    """Weights per scale along the input dimension (group), or the block edge (block)."""
    scale_bits: int = 0
    zero_bits: int = 0
    requires_divisible_input: bool = False
    """MLX leaves a matrix unquantized (16-bit) when its input dimension is not a multiple of the group."""
    description: str = ""

    def matrix_bytes(self, rows: int, cols: int) -> float:
        """Exact bytes of a ``rows x cols`` weight (rows = output features, cols = input features)."""
        payload = rows * cols * self.bits / 8
        meta_bits = self.scale_bits + self.zero_bits
        if self.granularity == "tensor":
            return payload + meta_bits / 8
        if self.granularity == "channel":
            return payload + rows * meta_bits / 8
        if self.granularity == "group":
            assert self.group_size
            return payload + rows * math.ceil(cols / self.group_size) * meta_bits / 8
        if self.granularity == "block":
            assert self.group_size
            b = self.group_size
            return payload + math.ceil(rows / b) * math.ceil(cols / b) * meta_bits / 8
        return payload

    def applies_to(self, cols: int) -> bool:
        return not (self.requires_divisible_input and self.group_size and cols % self.group_size)

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight for a large matrix (scales and zero points included)."""
        if self.granularity == "group" and self.group_size:
            return self.bits + (self.scale_bits + self.zero_bits) / self.group_size
        if self.granularity == "block" and self.group_size:
            return self.bits + (self.scale_bits + self.zero_bits) / self.group_size**2
        return float(self.bits)


def _mlx(bits: int, group: int = 64) -> Format:
    return Format(f"mlx-{bits}bit-g{group}", bits, "mlx-affine", "bf16", "group", group, 16, 16, True,
                  f"MLX affine {bits}-bit, group {group}: a bf16 scale and bias per group")


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("fp32", 32, "float", "fp32", description="IEEE float32"),
    Format("bf16", 16, "float", "bf16", description="bfloat16"),
    Format("fp16", 16, "float", "fp16", description="IEEE float16"),
    Format("fp8-e4m3", 8, "fp8", "fp8", "tensor", None, 32,
           description="FP8 E4M3 with one fp32 scale per tensor (vLLM online FP8)"),
    Format("fp8-e4m3-channel", 8, "fp8", "fp8", "channel", None, 32,
           description="FP8 E4M3 with an fp32 scale per output channel"),
    Format("fp8-e4m3-block128", 8, "fp8", "fp8", "block", 128, 32,
           description="FP8 E4M3 with an fp32 scale per 128x128 block (DeepSeek-V3, GLM-4.5 FP8 checkpoints)"),
    Format("int8-channel", 8, "int", "int8", "channel", None, 32,
           description="INT8 W8A8 with an fp32 scale per output channel (compressed-tensors, SmoothQuant)"),
    Format("int4-g128", 4, "int", "bf16", "group", 128, 16,
           description="Int4 weight-only, group 128, symmetric: a 16-bit scale per group (GPTQ, W4A16)"),
    Format("int4-g128-asym", 4, "int", "bf16", "group", 128, 16, 4,
           description="Int4 weight-only, group 128, asymmetric: 16-bit scale and 4-bit zero point (AWQ)"),
    _mlx(2), _mlx(3), _mlx(4), _mlx(6), _mlx(8),
]}

MODULE_CLASSES = ("embedding", "attention", "denseMlp", "routedExperts", "sharedExperts", "router",
                  "norms", "lmHead", "mtp")
