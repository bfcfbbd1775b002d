from __future__ import annotations

import pytest

from orchestrator.spec.formats import FORMATS


@pytest.mark.parametrize("name,bits", [
    ("bf16", 16), ("mlx-3bit-g64", 3.5), ("mlx-4bit-g64", 4.5), ("mlx-8bit-g64", 8.5),
    ("int4-g128", 4.125), ("int4-g128-asym", 4 + 20 / 128), ("fp8-e4m3-block128", 8 + 32 / 128**2),
])
def test_effective_bits_per_weight(name: str, bits: float) -> None:
    assert FORMATS[name].bits_per_weight == pytest.approx(bits)


def test_exact_matrix_bytes() -> None:
    # 256 x 200 int4 with 128-groups: 2 groups per row (200 -> ceil), 16-bit scales.
    assert FORMATS["int4-g128"].matrix_bytes(256, 200) == 256 * 200 / 2 + 256 * 2 * 2
    # FP8 blocks: ceil(300/128)=3 x ceil(130/128)=2 blocks, fp32 scales.
    assert FORMATS["fp8-e4m3-block128"].matrix_bytes(300, 130) == 300 * 130 + 6 * 4
    assert FORMATS["fp8-e4m3-channel"].matrix_bytes(10, 20) == 200 + 10 * 4
    assert FORMATS["bf16"].matrix_bytes(3, 5) == 30


def test_mlx_needs_divisible_input() -> None:
    assert FORMATS["mlx-3bit-g64"].applies_to(128)
    assert not FORMATS["mlx-3bit-g64"].applies_to(100)
    assert FORMATS["int4-g128"].applies_to(100)
