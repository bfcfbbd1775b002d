"""The built-in catalog: every profile and model the project promises, each number with a source."""

from __future__ import annotations

import pytest

from orchestrator.spec import builtin_dirs

PROFILES = """nvidia-h100-sxm nvidia-h200 nvidia-a100-80g nvidia-l40s nvidia-rtx4090 apple-m2-max-64g
apple-m3-max-128g apple-m3-ultra-512g apple-m4-max-128g cambricon-mlu370-x8 cambricon-mlu590 moorethreads-s4000
moorethreads-s5000 huawei-ascend-910b huawei-ascend-910c huawei-atlas-300i-duo hygon-k100-ai kunlunxin-p800
iluvatar-bi-v150 metax-c500 cpu-x86""".split()
MODELS = "glm-4.5-air glm-4.5 glm-4.6 qwen3-30b-a3b qwen3-235b-a22b llama-3.1-8b llama-3.1-70b deepseek-v3".split()
VARIANTS = {"bf16", "fp8", "fp8-int4", "w4a16", "w8a8", "mlx-3bit", "mlx-4bit", "mlx-8bit", "fp8-online"}


def test_every_promised_profile_is_present_one_file_each(catalog) -> None:
    assert set(PROFILES) <= set(catalog.profiles)
    profile_dir, _ = builtin_dirs()
    assert {p.stem for p in profile_dir.glob("*.yaml")} >= set(PROFILES)
    for name in PROFILES:
        file, _ = catalog.entry("HardwareProfile", name).where()
        assert file.endswith(f"{name}.yaml")


def test_every_promised_model_is_present(catalog) -> None:
    assert set(MODELS) <= set(catalog.models)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_carries_what_the_engines_and_renderers_need(catalog, name: str) -> None:
    spec = catalog.profile(name).spec
    assert spec.sources and all(s.ref for s in spec.sources)
    assert spec.engines and spec.ray.resource and spec.ray.accelerator_type
    if spec.device_type == "apple-soc":
        assert spec.usable_memory.rule == "unifiedWorkingSet" and spec.usable_memory.fraction < 1
        assert {e.engine for e in spec.engines} & {"mlx-lm", "vllm-metal"}
        assert spec.kubernetes.resource is None
    elif spec.device_type != "cpu":
        assert spec.kubernetes.resource and spec.kubernetes.visibility_env
    vllm = spec.engine("vllm")
    if vllm and vllm.platform not in ("cuda", "rocm", "cpu"):  # built into vLLM (vendor forks run as these)
        assert vllm.plugin is not None and vllm.plugin.entry_point, f"{name}: out-of-tree platform needs its plugin"


def test_fp8_compute_only_where_the_facts_say(catalog) -> None:
    for name in ("nvidia-a100-80g", "cambricon-mlu370-x8", "moorethreads-s4000", "huawei-ascend-910b",
                 "apple-m2-max-64g"):
        spec = catalog.profile(name).spec
        assert "fp8" not in spec.native_formats and spec.peak_tflops.fp8 is None, name
    for name in ("nvidia-h100-sxm", "nvidia-h200", "nvidia-l40s"):
        assert "fp8" in catalog.profile(name).spec.native_formats


def test_catalog_models_use_the_promised_variant_names(catalog) -> None:
    for name in MODELS:
        names = {v.name for v in catalog.model(name).spec.variants}
        assert names <= VARIANTS, f"{name}: {names - VARIANTS}"
        assert "bf16" in names
    assert {v.name for v in catalog.model("glm-4.6").spec.variants} >= {"fp8", "fp8-int4"}
    assert {v.name for v in catalog.model("glm-4.5-air").spec.variants} >= {"mlx-3bit", "mlx-4bit", "mlx-8bit"}
