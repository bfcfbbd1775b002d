"""Integration fixtures: tiny checkpoints generated once per session (real engines load them)."""

from __future__ import annotations

from pathlib import Path

import pytest

# ~10M to ~500M parameters across three architectures (the estimator issue asks for this range).
TINY = {
    "llama": dict(arch="llama", layers=4, hidden=512, heads=8, kv_heads=2, head_dim=64, intermediate=1024,
                  vocab=8192),
    "glm4-moe": dict(arch="glm4-moe", layers=4, hidden=512, heads=8, kv_heads=2, head_dim=64, intermediate=1024,
                     moe_intermediate=256, experts=16, experts_per_token=2, vocab=4096),
    "qwen3-moe": dict(arch="qwen3-moe", layers=6, hidden=1024, heads=16, kv_heads=4, head_dim=64,
                      intermediate=2048, moe_intermediate=512, experts=32, experts_per_token=4, vocab=32000),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from orchestrator.devtools.tiny_model import generate

    root = tmp_path_factory.mktemp("tiny")
    return {name: generate(out=root / name, **kw) for name, kw in TINY.items()}


# vLLM's online FP8 of the bf16 checkpoint (what the compatibility matrix refuses on CPU).
FP8_ONLINE = ("    - {name: fp8-online, formats: {default: fp8-e4m3, embedding: bf16, lmHead: bf16}, "
              "quantizationMethod: fp8, quantizeOnLoad: true}")


def model_document(path: Path, name: str, mlx_bits: tuple[int, ...] = (), extra: tuple[str, ...] = ()) -> str:
    """A Model document over a generated checkpoint (architecture read from its config.json)."""
    variants = ["    - {name: bf16, formats: {default: bf16}}", *extra]
    variants += [f"    - {{name: mlx-{b}bit, formats: {{default: mlx-{b}bit-g64}}, quantizationMethod: mlx, "
                 "dropsMtp: true}" for b in mlx_bits]
    return (f"apiVersion: moxin.dev/v1alpha1\nkind: Model\nmetadata: {{name: {name}}}\nspec:\n"
            f"  configFile: {path / 'config.json'}\n  variants:\n" + "\n".join(variants) + "\n")


def load_tiny(path: Path, name: str, tmp_path: Path, mlx_bits: tuple[int, ...] = (), extra: tuple[str, ...] = ()):
    from orchestrator.spec import load_catalog

    doc = tmp_path / f"{name}.yaml"
    doc.write_text(model_document(path, name, mlx_bits, extra))
    return load_catalog([doc]).model(name)
