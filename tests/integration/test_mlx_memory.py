"""moxin's MLX weight bytes and peak memory against real mlx-lm conversions and generation (CPU backend)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.devtools.tiny_model import checkpoint_size, convert_mlx
from orchestrator.estimate.estimator import estimate
from orchestrator.spec import load_catalog

from .conftest import load_tiny

pytestmark = pytest.mark.integration

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
GENERATE = 64  # quantized MLX decodes slowly on CPU (about 1 tok/s for 4-bit 187M)

# Runs in its own process so the peak counter sees only this load and generation.
PEAK = """
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tokenizer = load(sys.argv[1])
prompt = mx.array(tokenizer.encode(sys.argv[2]))
mx.reset_peak_memory()
n = 0
for token, _ in generate_step(prompt, model, max_tokens=int(sys.argv[3])):
    n += 1
weights = sum(v.nbytes for _, v in __import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(model.parameters()))
print(json.dumps({"peak": mx.get_peak_memory(), "prompt": int(prompt.size), "generated": n, "weights": weights}))
"""


@pytest.fixture(scope="module")
def mlx_models(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx")
    return {(arch, bits): convert_mlx(tiny_models[arch], root / f"{arch}-{bits}", bits)
            for arch in ("llama", "glm4-moe", "qwen3-moe") for bits in (3, 4)}


@pytest.mark.parametrize("arch", ["llama", "glm4-moe", "qwen3-moe"])
@pytest.mark.parametrize("bits", [3, 4])
def test_mlx_weight_bytes_match_converted_files(tiny_models, mlx_models, tmp_path, arch: str, bits: int) -> None:
    model = load_tiny(tiny_models[arch], f"tiny-{arch}", tmp_path, mlx_bits=(bits,))
    arch_spec = model.spec.architecture
    from orchestrator.estimate.parameters import weight_bytes

    predicted = weight_bytes(arch_spec, model.spec.variant(f"mlx-{bits}bit"))
    on_disk = checkpoint_size(mlx_models[(arch, bits)]).payload_bytes
    assert abs(predicted / on_disk - 1) < 0.03, (predicted, on_disk)


@pytest.mark.parametrize("arch", ["llama", "glm4-moe"])
def test_mlx_peak_memory_after_generation(tiny_models, mlx_models, tmp_path, arch: str) -> None:
    bits = 4
    out = subprocess.run([sys.executable, "-c", PEAK, str(mlx_models[(arch, bits)]), PROMPT, str(GENERATE)],
                         capture_output=True, text=True, timeout=600, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    model = load_tiny(tiny_models[arch], f"tiny-{arch}", tmp_path, mlx_bits=(bits,))
    mac = load_catalog().profile("apple-m2-max-64g")
    context = measured["prompt"] + measured["generated"]
    e = estimate(model, model.spec.variant(f"mlx-{bits}bit"), mac, context=context, prompt_tokens=measured["prompt"])
    assert e.engine == "mlx-lm"
    assert abs(e.weights_bytes / measured["weights"] - 1) < 0.03, (e.weights_bytes, measured)
    assert abs(e.peak_bytes_per_device / measured["peak"] - 1) < 0.03, (e.peak_bytes_per_device, measured)
