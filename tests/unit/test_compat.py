"""Compatibility verdicts over the whole built-in catalog, and each format rule on its own."""

from __future__ import annotations

import pytest

from orchestrator import compat
from orchestrator.compat import check
from orchestrator.spec.formats import FORMATS, Format


def _cells(catalog):
    for model in catalog.models.values():
        for variant in model.spec.variants:
            for profile in catalog.profiles.values():
                yield model, variant, profile, check(variant, profile)


def test_every_supported_verdict_names_an_engine_of_the_profile_that_declares_the_method(catalog) -> None:
    seen = 0
    for _model, variant, profile, v in _cells(catalog):
        if not v.supported:
            assert v.reasons, (variant.name, profile.name)
            continue
        seen += 1
        assert v.engine in profile.spec.engines
        method = variant.quantization_method
        if method is not None:
            assert v.engine.method_aliases.get(method, method) in v.engine.quantization_methods
    assert seen > 100


def test_mlx_checkpoints_run_only_on_mlx_engines_and_mlx_engines_only_run_mlx_or_16_bit(catalog) -> None:
    for _model, variant, _profile, v in _cells(catalog):
        if not v.supported:
            continue
        families = {f.family for f in compat.variant_formats(variant)}
        if "mlx-affine" in families:
            assert v.engine.engine in compat.MLX_ENGINES
        if v.engine.engine in compat.MLX_ENGINES:
            assert families <= {"mlx-affine", "float"}


def test_fp8_weights_cpu_unsupported_h100_supported_a100_weight_only_ascend_unsupported(catalog) -> None:
    fp8 = catalog.model("llama-3.1-8b").spec.variant("fp8")
    assert check(fp8, catalog.profile("cpu-x86")).status == "unsupported"
    assert "CPU has no FP8" in check(fp8, catalog.profile("cpu-x86"), "vllm").reason
    for hw in ("nvidia-h100-sxm", "nvidia-a100-80g", "nvidia-l40s"):
        v = check(fp8, catalog.profile(hw))
        assert v.supported and v.quantization is None  # vLLM reads the method from the checkpoint
    assert check(fp8, catalog.profile("huawei-ascend-910b")).status == "unsupported"


def test_plugin_methods_come_from_the_profile_and_are_named_on_the_command_line(catalog) -> None:
    awq = catalog.model("glm-4.5-air").spec.variant("w4a16")
    v = check(awq, catalog.profile("cambricon-mlu590"))
    assert v.supported and v.quantization == "awq_mlu"
    fp8 = catalog.model("glm-4.5-air").spec.variant("fp8")
    assert check(fp8, catalog.profile("cambricon-mlu590")).quantization == "fp8"
    assert check(fp8, catalog.profile("cambricon-mlu370-x8")).status == "unsupported"  # no fp8 method there


def test_mixed_fp8_int4_on_mlu590_is_unknown_not_guessed(catalog) -> None:
    mixed = catalog.model("glm-4.6").spec.variant("fp8-int4")
    v = check(mixed, catalog.profile("cambricon-mlu590"))
    assert v.status == "unknown" and "fp8" in v.reason and "weightonly" in v.reason
    assert check(mixed, catalog.profile("nvidia-h200")).supported


def test_online_fp8_asks_for_quantization_on_cuda(catalog) -> None:
    online = catalog.model("llama-3.1-8b").spec.variant("fp8-online")
    assert check(online, catalog.profile("nvidia-h100-sxm")).quantization == "fp8"
    assert check(online, catalog.profile("cpu-x86")).status == "unsupported"


def test_asking_for_an_engine_the_profile_lacks_says_what_it_runs(catalog) -> None:
    bf16 = catalog.model("llama-3.1-8b").spec.variant("bf16")
    v = check(bf16, catalog.profile("nvidia-h100-sxm"), "mlx-lm")
    assert v.status == "unsupported" and "it runs vllm" in v.reason


@pytest.mark.parametrize(("fmt", "platform", "objects"), [
    (Format("mlx-5bit-g48", 5, "mlx-affine", "bf16", "group", 48, 16, 16, True), "metal", True),
    (FORMATS["mlx-3bit-g64"], "metal", False),
    (Format("int4-g256", 4, "int", "bf16", "group", 256, 16), "cuda", True),
    (FORMATS["int4-g128"], "cuda", False),
])
def test_group_size_rules(catalog, fmt: Format, platform: str, objects: bool) -> None:
    profile = catalog.profile("apple-m2-max-64g" if platform == "metal" else "nvidia-h100-sxm")
    engine = profile.spec.engines[0]
    found = [r(fmt, engine, profile) for r in compat.RULES]
    assert any(found) is objects, found


def test_int8_activations_need_int8_hardware(catalog) -> None:
    w8a8 = catalog.model("llama-3.1-8b").spec.variant("w8a8")
    assert check(w8a8, catalog.profile("nvidia-h100-sxm")).supported
    iluvatar = catalog.profile("iluvatar-bi-v150")  # fp32/fp16 only
    assert compat.int8_activations_need_int8(FORMATS["int8-channel"], iluvatar.spec.engines[0], iluvatar)
    h100 = catalog.profile("nvidia-h100-sxm")
    assert compat.int8_activations_need_int8(FORMATS["int8-channel"], h100.spec.engines[0], h100) is None


@pytest.mark.parametrize("per_node, heads, engine, expected", [
    (8, 64, "vllm", [1, 2, 4, 8]),
    (8, 28, "vllm", [1, 2, 4]),        # heads not divisible by 8: vLLM refuses tp=8
    (6, 64, "vllm", [1, 2]),           # 4 does not divide a 6-device node
    (64, 128, "vllm", [1, 2, 4, 8, 16, 32, 64]),
    (8, 64, "mlx-lm", [1]), (8, 64, "vllm-metal", [1]),
])
def test_tp_choices_divide_the_node_and_the_heads(per_node: int, heads: int, engine: str, expected: list[int]) -> None:
    assert compat.tp_choices(per_node, heads, engine) == expected


def test_only_vllm_has_pipeline_stages() -> None:
    assert compat.pp_choices("vllm") == list(range(1, compat.MAX_PIPELINE_STAGES + 1))
    assert compat.pp_choices("mlx-lm") == compat.pp_choices("vllm-metal") == [1]
