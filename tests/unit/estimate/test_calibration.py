"""The calibration table against the published figures it is fitted to (calibration.MEASUREMENTS).

Each figure is re-derived through ``estimate()`` at the conditions it was measured under, with the entry
the table picks: a change to the byte or FLOP model, or to an entry, moves these and fails the test.
"""

from __future__ import annotations

import itertools
import math
from fnmatch import fnmatch
from pathlib import Path

import pytest

from orchestrator.estimate.calibration import MEASUREMENTS, TABLE, Measurement, lookup
from orchestrator.estimate.estimator import Estimate, estimate
from orchestrator.spec import load_catalog
from orchestrator.spec.engine import ENGINE_DEFAULTS
from orchestrator.spec.formats import FORMATS

OFF_CATALOG = Path(__file__).resolve().parents[2] / "data" / "calibration"
BY_ID = {m.id: m for m in MEASUREMENTS}
FITTED = [c for c in TABLE if c.fitted_to]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog([OFF_CATALOG])


def _at(catalog, m: Measurement) -> Estimate:
    model = catalog.model(m.model)
    variant, profile = model.spec.variant(m.variant), catalog.profile(m.hardware)
    if m.prefill_tokens_per_second is not None:
        settings = ENGINE_DEFAULTS.model_copy(update={"default_context_tokens": m.prompt_tokens})
        return estimate(model, variant, profile, tp=m.tensor_parallel, pp=1, context=m.prompt_tokens, batch=1,
                        settings=settings)
    return estimate(model, variant, profile, tp=m.tensor_parallel, pp=1, context=m.context_tokens, batch=m.batch)


def _entry_of(m: Measurement):
    (entry,) = [c for c in TABLE if m.id in c.fitted_to]
    return entry


def _tolerance(m: Measurement) -> float:
    """1% where the entry is fitted to this figure alone (rounding); 6% where it is the geometric mean of two
    single-stream H100 figures that need 0.623 and 0.693 (each sits about 5% from the mean)."""
    kind = "decode" if m.decode_step_seconds is not None else "prefill"
    same_kind = [i for i in _entry_of(m).fitted_to
                 if (BY_ID[i].decode_step_seconds is not None) == (kind == "decode")]
    return 0.01 if len(same_kind) == 1 else 0.06


@pytest.mark.parametrize("m", MEASUREMENTS, ids=lambda m: m.id)
def test_the_entry_gives_its_published_figure_back(catalog, m) -> None:
    e = _at(catalog, m)
    entry = _entry_of(m)
    assert e.calibration is not None and e.calibration["key"] == entry.key
    assert e.calibration["measured"]
    if m.decode_step_seconds is not None:
        assert e.decode_step_seconds == pytest.approx(m.decode_step_seconds, rel=_tolerance(m))
    else:
        assert e.prefill_tokens_per_second == pytest.approx(m.prefill_tokens_per_second, rel=_tolerance(m))


def test_the_two_figure_entry_sits_between_its_figures(catalog) -> None:
    # A geometric-mean fit: the estimator is slower than one figure and faster than the other.
    (entry,) = [c for c in FITTED if len(c.fitted_to) == 2 and all(BY_ID[i].decode_step_seconds for i in c.fitted_to)]
    errors = [_at(catalog, BY_ID[i]).decode_step_seconds / BY_ID[i].decode_step_seconds - 1 for i in entry.fitted_to]
    assert min(errors) < 0 < max(errors)
    assert abs(errors[0] + errors[1]) < 0.01


def test_an_assumed_context_barely_matters_for_a_short_chat_figure(catalog) -> None:
    # llama-3.1-8b/h100/c1 does not publish its context; 200 tokens is assumed. 1,000 would move it under 1%.
    m = BY_ID["llama-3.1-8b/h100/c1"]
    model = catalog.model(m.model)
    steps = [estimate(model, model.spec.variant(m.variant), catalog.profile(m.hardware), tp=1, pp=1, context=ctx,
                      batch=1).decode_step_seconds for ctx in (200, 1000)]
    assert steps[1] / steps[0] - 1 < 0.01


def test_every_entry_names_its_source_and_every_fitted_figure_exists() -> None:
    assert all(c.source.strip() for c in TABLE)
    assert all(m.source.strip() and m.figure.strip() for m in MEASUREMENTS)
    for c in FITTED:
        assert c.measured, c.key
        assert set(c.fitted_to) <= set(BY_ID), c.key
        for i in c.fitted_to:
            assert BY_ID[i].engine == c.engine
    # Every measurement fits exactly one entry, and every measured vLLM entry is fitted to something.
    assert sorted(i for c in FITTED for i in c.fitted_to) == sorted(BY_ID)
    assert all(c.fitted_to for c in TABLE if c.measured and c.engine == "vllm")


def test_fitted_efficiencies_are_fractions() -> None:
    for c in TABLE:
        assert 0 < c.bandwidth_efficiency <= 1 and 0 < c.compute_efficiency <= 1, c.key


@pytest.mark.parametrize(("case", "key"), [
    (("vllm", "nvidia-hopper", "float", "dense"), "vllm/nvidia-hopper/float/dense"),
    (("vllm", "nvidia-hopper", "float", "moe"), "vllm/nvidia-hopper/float/moe"),
    (("vllm", "nvidia-hopper", "fp8", "moe"), "vllm/nvidia-hopper/fp8/moe"),
    (("vllm", "nvidia-hopper", "fp8", "dense"), "vllm/nvidia-hopper/fp8/dense"),
    (("vllm", "nvidia-hopper", "int", "moe"), "vllm/*/*/moe"),
    (("vllm", "nvidia-hopper", "int", "dense"), "vllm/*/*"),
    (("vllm", "nvidia-ampere", "float", "dense"), "vllm/nvidia-ampere/float/dense"),
    (("vllm", "nvidia-ampere", "float", "moe"), "vllm/*/*/moe"),
    (("vllm", "huawei-ascend", "float", "dense"), "vllm/huawei-ascend/float/dense"),
    (("vllm", "huawei-ascend", "float", "moe"), "vllm/huawei-ascend/float/moe"),
    (("vllm", "huawei-ascend", "int", "dense"), "vllm/*/*"),
    (("vllm", "nvidia-ada", "float", "dense"), "vllm/*/*"),
    (("vllm", "cambricon-mlu5", "fp8", "moe"), "vllm/*/*/moe"),
    (("mlx-lm", "apple-m2", "mlx-affine", "moe"), "mlx-lm/apple/mlx-affine"),
    (("mlx-lm", "apple-m3", "float", "dense"), "mlx-lm/apple/*"),
    (("vllm-metal", "apple-m4", "mlx-affine", "dense"), "vllm-metal/apple/*"),
])
def test_lookup_picks_the_most_specific_entry(case, key) -> None:
    assert lookup(*case).key == key


def test_no_lookup_is_decided_by_table_order(catalog) -> None:
    # For every engine, hardware family, format class and architecture class, one entry is strictly the most
    # specific (max() would otherwise fall back to the order of TABLE).
    def specificity(c) -> int:
        parts = (c.engine, c.family, c.format_class, c.architecture)
        return sum(p != "*" for p in parts) + (c.family != "*" and "*" not in c.family)

    engines = {c.engine for c in TABLE if c.engine != "*"}
    families = {p.spec.family for p in catalog.profiles.values()}
    classes = {f.family for f in FORMATS.values()}
    for engine, family, fmt, arch in itertools.product(engines, families, classes, ("dense", "moe")):
        chosen = lookup(engine, family, fmt, arch)
        rivals = [c for c in TABLE if c is not chosen and fnmatch(engine, c.engine) and fnmatch(family, c.family)
                  and fnmatch(fmt, c.format_class) and fnmatch(arch, c.architecture)]
        assert all(specificity(c) < specificity(chosen) for c in rivals), (engine, family, fmt, arch)


def test_moe_and_dense_models_on_the_same_hardware_use_their_own_entries(catalog) -> None:
    h100 = catalog.profile("nvidia-h100-sxm")
    dense, moe = catalog.model("llama-3.1-8b"), catalog.model("glm-4.5-air")
    e_dense = estimate(dense, dense.spec.variant("bf16"), h100, context=4096)
    e_moe = estimate(moe, moe.spec.variant("bf16"), h100, context=4096)
    assert e_dense.calibration["key"] == "vllm/nvidia-hopper/float/dense"
    assert e_moe.calibration["key"] == "vllm/nvidia-hopper/float/moe"
    assert not any("speed uses calibration" in r for r in e_moe.reasons)


def test_an_unmeasured_moe_default_says_so(catalog) -> None:
    model = catalog.model("qwen3-30b-a3b")
    e = estimate(model, model.spec.variant("w4a16"), catalog.profile("nvidia-h100-sxm"), context=4096)
    assert e.calibration["key"] == "vllm/*/*/moe" and not e.calibration["measured"]
    assert any("vllm/*/*/moe" in r and "not measured" in r for r in e.reasons)
    assert math.isclose(e.calibration["bandwidthEfficiency"], lookup("vllm", "nvidia-hopper", "float", "moe")
                        .bandwidth_efficiency)
