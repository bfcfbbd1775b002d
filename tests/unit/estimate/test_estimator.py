"""The estimator against measured figures (facts/models.md), exact KV formulas, and roofline bounds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.estimate.calibration import MLX_APPLE_AFFINE_BW, lookup
from orchestrator.estimate.estimator import estimate
from orchestrator.estimate.memory import Parallelism, kv_bytes_per_token, stage_weight_bytes
from orchestrator.estimate.parameters import weight_bytes
from orchestrator.estimate.performance import decode_step_costs, expected_distinct_experts
from orchestrator.spec.engine import EngineSettings

# facts/models.md: (layers, kv heads, head dim) per catalog model, typed here independently of the catalog.
KV_SHAPES = {"glm-4.5-air": (46, 8, 128), "glm-4.5": (92, 8, 128), "glm-4.6": (92, 8, 128),
             "qwen3-30b-a3b": (48, 4, 128), "qwen3-235b-a22b": (94, 4, 128), "llama-3.1-8b": (32, 8, 128),
             "llama-3.1-70b": (80, 8, 128)}


def _est(catalog, model: str, variant: str, hardware: str, **kw):
    m = catalog.model(model)
    return estimate(m, m.spec.variant(variant), catalog.profile(hardware), **kw)


def test_seed_glm_air_3bit_on_m2_max(catalog) -> None:
    e = _est(catalog, "glm-4.5-air", "mlx-3bit", "apple-m2-max-64g", context=4207)
    assert e.fits and e.engine == "mlx-lm"
    assert e.weights_bytes / 1e9 == pytest.approx(46.8, rel=0.02)
    assert e.peak_bytes_per_device / 1e9 == pytest.approx(47.687, rel=0.03)
    assert e.decode_tokens_per_second == pytest.approx(25.564, rel=0.20)
    assert e.calibration["key"] == "mlx-lm/apple/mlx-affine" and e.calibration["measured"]


def test_calibration_constant_is_derived_from_the_measurement(catalog) -> None:
    m = catalog.model("glm-4.5-air")
    arch, v = m.spec.architecture, m.spec.variant("mlx-3bit")
    weights_read = decode_step_costs(arch, v, Parallelism(), 1, 0, "bf16", "mlx-lm")[0].bytes_read
    kv_read = 188416 * (14 + 4193 / 2)  # mean context of the measured run
    ideal = 400e9 / (weights_read + kv_read)
    assert MLX_APPLE_AFFINE_BW == pytest.approx(25.564 / ideal, abs=5e-4)


def test_mlx_calibration_is_general_not_per_model(catalog) -> None:
    # Same key for another MLX model on another Apple chip.
    e = _est(catalog, "qwen3-30b-a3b", "mlx-4bit", "apple-m4-max-128g", context=8192)
    assert e.calibration["key"] == "mlx-lm/apple/mlx-affine"
    assert lookup("mlx-lm", "apple-m3", "mlx-affine").bandwidth_efficiency == MLX_APPLE_AFFINE_BW


def test_bf16_air_does_not_fit_a_64gb_mac_and_says_by_how_much(catalog) -> None:
    e = _est(catalog, "glm-4.5-air", "bf16", "apple-m2-max-64g", context=4096)
    assert not e.fits
    short = (e.peak_bytes_per_device - e.usable_bytes_per_device) / 1e9
    assert any(f"short by {short:.1f} GB" in r for r in e.reasons), e.reasons
    assert any("use variant mlx-3bit" in r for r in e.reasons)


@pytest.mark.parametrize("name", sorted(KV_SHAPES))
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_kv_bytes_per_token_exact_with_tp_replication(catalog, name: str, tp: int) -> None:
    layers, kv_heads, head_dim = KV_SHAPES[name]
    arch = catalog.model(name).spec.architecture
    got = kv_bytes_per_token(arch, "bf16", Parallelism(tp=tp))
    per_device_heads = max(1, kv_heads // tp)  # heads replicated when TP exceeds them
    assert got.per_device == 2 * layers * per_device_heads * head_dim * 2
    assert got.replica == got.per_device * tp
    if tp <= kv_heads:
        assert got.replica == 2 * layers * kv_heads * head_dim * 2
    assert kv_bytes_per_token(arch, "fp8", Parallelism(tp=tp)).per_device * 2 == got.per_device


def test_kv_mla_latent_for_deepseek(catalog) -> None:
    arch = catalog.model("deepseek-v3").spec.architecture
    for tp in (1, 8):
        got = kv_bytes_per_token(arch, "bf16", Parallelism(tp=tp))
        assert got.per_device == 61 * (512 + 64) * 2  # one latent per layer, not split by TP


def test_pipeline_stages_split_layers_and_kv(catalog) -> None:
    m = catalog.model("llama-3.1-70b")
    arch, v = m.spec.architecture, m.spec.variant("bf16")
    stages = stage_weight_bytes(arch, v, Parallelism(pp=4))
    assert len(stages) == 4 and sum(stages) == weight_bytes(arch, v, include_mtp=False)
    assert kv_bytes_per_token(arch, "bf16", Parallelism(pp=4)).per_device == 2 * 20 * 8 * 128 * 2


def test_tensor_parallel_splits_weights(catalog) -> None:
    m = catalog.model("llama-3.1-70b")
    arch, v = m.spec.architecture, m.spec.variant("bf16")
    one = stage_weight_bytes(arch, v, Parallelism(tp=1))[0]
    eight = stage_weight_bytes(arch, v, Parallelism(tp=8))[0]
    norms = 2 * (2 * 80 * 8192 + 8192)  # replicated vectors
    assert eight == pytest.approx((one - norms) / 8 + norms, rel=1e-6)


def test_smallest_parallelism_that_fits_is_chosen(catalog) -> None:
    e = _est(catalog, "llama-3.1-70b", "bf16", "nvidia-h100-sxm", context=8192)
    assert e.fits and e.tensor_parallel == 4 and e.pipeline_parallel == 1  # 141 GB: 2 x 72 GB is too tight
    assert not _est(catalog, "llama-3.1-70b", "bf16", "nvidia-h100-sxm", context=8192, tp=2, pp=1).fits


def test_the_search_uses_only_tensor_parallel_sizes_that_divide_the_node(catalog) -> None:
    """The estimator and the planner share compat.tp_choices: on a 6-device node tp=4 (which would strand two
    devices per node) is never chosen, a deeper pipeline is."""
    h100 = catalog.profile("nvidia-h100-sxm")
    six = h100.model_copy(update={"spec": h100.spec.model_copy(update={"devices_per_node": 6})})
    m = catalog.model("llama-3.1-70b")
    e = estimate(m, m.spec.variant("bf16"), six)
    assert e.fits and (e.tensor_parallel, e.pipeline_parallel) == (2, 2)
    assert _est(catalog, "llama-3.1-70b", "bf16", "nvidia-h100-sxm").tensor_parallel == 4


def test_engine_settings_are_what_the_estimate_uses(catalog) -> None:
    assert _est(catalog, "llama-3.1-8b", "bf16", "nvidia-h100-sxm").context_tokens == 8192
    shorter = EngineSettings(default_context_tokens=1024)
    assert _est(catalog, "llama-3.1-8b", "bf16", "nvidia-h100-sxm", settings=shorter).context_tokens == 1024
    # At 512 tokens the KV pool holds far more than vLLM's max_num_seqs: the setting is the bound.
    assert _est(catalog, "llama-3.1-8b", "bf16", "nvidia-h100-sxm", context=512).max_concurrency == 256
    fewer = EngineSettings(max_num_seqs=7)
    assert _est(catalog, "llama-3.1-8b", "bf16", "nvidia-h100-sxm", context=512, settings=fewer).max_concurrency == 7


def test_expected_distinct_experts() -> None:
    assert expected_distinct_experts(128, 8, 1) == pytest.approx(8)
    assert expected_distinct_experts(128, 8, 64) == pytest.approx(128 * (1 - (120 / 128) ** 64))
    assert expected_distinct_experts(128, 8, 10_000) == pytest.approx(128)


def test_moe_decode_reads_fewer_bytes_than_k_times_batch(catalog) -> None:
    m = catalog.model("qwen3-30b-a3b")
    arch, v = m.spec.architecture, m.spec.variant("bf16")
    b1 = decode_step_costs(arch, v, Parallelism(), 1, 0, "bf16", "vllm")[0].bytes_read
    b32 = decode_step_costs(arch, v, Parallelism(), 32, 0, "bf16", "vllm")[0].bytes_read
    all_weights = weight_bytes(arch, v, include_mtp=False)
    assert b1 < b32 < all_weights  # 32 tokens touch most but not all of 128 experts per layer


def test_cpu_kv_space_bounds_capacity(catalog) -> None:
    settings = EngineSettings(cpu_kv_cache_gib=1)
    e = _est(catalog, "llama-3.1-8b", "bf16", "cpu-x86", context=2048, settings=settings)
    assert e.engine == "vllm" and e.platform == "cpu"
    assert e.max_context_tokens == (2**30 // 131072) // 128 * 128
    assert e.max_concurrency == 2**30 // 131072 // 2048


def test_unknown_numbers_leave_speed_null_with_a_reason(catalog) -> None:
    e = _est(catalog, "glm-4.5-air", "bf16", "cambricon-mlu590", context=4096)
    assert e.fits and e.decode_tokens_per_second is None
    assert any("no published memory bandwidth" in r for r in e.reasons)


def test_fp8_weights_unsupported_on_cpu_and_apple(catalog) -> None:
    for hw in ("cpu-x86", "apple-m2-max-64g"):
        e = _est(catalog, "llama-3.1-8b", "fp8", hw, context=2048)
        assert not e.fits and e.engine is None and e.support == "unsupported" and "fp8" in e.reasons[0].lower()


def test_cost_per_million_tokens(catalog) -> None:
    e = _est(catalog, "llama-3.1-8b", "bf16", "nvidia-h100-sxm", context=4096, batch=32, usd_per_device_hour=2.0)
    assert e.usd_per_hour == 2.0 * e.devices
    assert e.usd_per_million_output_tokens == pytest.approx(e.usd_per_hour / (e.aggregate_decode_tokens_per_second * 3600) * 1e6)


def test_cli_json_contract() -> None:
    out = CliRunner().invoke(cli, ["estimate", "--model", "glm-4.5-air", "--variant", "mlx-3bit", "--hardware",
                                   "apple-m2-max-64g", "--context", "4207", "-o", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    for key in ("fits", "tensorParallel", "pipelineParallel", "weightsBytes", "weightsBytesPerDevice",
                "kvBytesPerToken", "kvBytesPerTokenPerDevice", "kvBytes", "overheadBytesPerDevice", "peakBytes",
                "peakBytesPerDevice", "usableBytesPerDevice", "maxContextTokens", "maxConcurrency",
                "decodeTokensPerSecond", "aggregateDecodeTokensPerSecond", "prefillTokensPerSecond", "bound",
                "calibration", "reasons"):
        assert key in doc, key
    for key in ("weightsBytes", "kvBytes", "peakBytes", "peakBytesPerDevice", "kvBytesPerToken"):
        assert isinstance(doc[key], int), key


def test_cli_unknown_variant_exits_2() -> None:
    out = CliRunner().invoke(cli, ["estimate", "-m", "glm-4.5-air", "-v", "mlx-5bit", "-H", "nvidia-h200"])
    assert out.exit_code == 2 and "did you mean" in out.output


def test_matrix_svg_is_a_heat_map() -> None:
    out = CliRunner().invoke(cli, ["matrix", "-m", "qwen3-30b-a3b", "-o", "svg", "-H", "nvidia-h200", "-H",
                                   "apple-m2-max-64g", "-H", "cpu-x86"])
    assert out.exit_code == 0
    import xml.etree.ElementTree as ET

    root = ET.fromstring(out.output)
    rects = [r for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    assert len(rects) == 1 + 6 * 3  # background + variants x profiles
    assert "unsupported" in out.output and "tok/s" in out.output
