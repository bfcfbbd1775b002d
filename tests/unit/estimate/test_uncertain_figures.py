"""Uncertain datasheet figures: used, and named by every estimate, matrix cell and CLI view that rests on them."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.estimate.datasheet import speed_inputs_certain
from orchestrator.estimate.estimator import estimate
from orchestrator.estimate.matrix import matrix

# The six domestic profiles that gave no Qwen3-30B-A3B speed before uncertain figures were used, and what
# each has published (facts/accelerators.md).
PLANNABLE = ("huawei-ascend-910c", "huawei-atlas-300i-duo", "hygon-k100-ai")
NO_SPEED = ("cambricon-mlu590", "iluvatar-bi-v150", "kunlunxin-p800")  # bandwidth and TFLOPS unpublished ("?")


def _est(catalog, model: str, variant: str, hardware: str, **kw):
    m = catalog.model(model)
    return estimate(m, m.spec.variant(variant), catalog.profile(hardware), **kw)


def test_an_estimate_names_each_uncertain_figure_it_used_with_its_source(catalog) -> None:
    e = _est(catalog, "qwen3-30b-a3b", "bf16", "huawei-ascend-910b")
    assert [u.field for u in e.uncertain_inputs] == ["memoryBandwidthGBps", "peakTflops.bf16"]  # memoryGB is sure
    assert str(e.uncertain_inputs[0]) == ("uncertain datasheet figure: memoryBandwidthGBps (Public 910B datasheets "
                                          "(as collected in facts/accelerators.md))")
    assert e.to_json()["uncertainInputs"][0].startswith("uncertain datasheet figure: memoryBandwidthGBps (")
    assert _est(catalog, "qwen3-30b-a3b", "bf16", "nvidia-h100-sxm").uncertain_inputs == []


def test_only_the_figures_a_result_rests_on_are_named(catalog) -> None:
    # fp16 peak stands in for a missing bf16 one on the Atlas 300I Duo (fp16 only), and that is what is named
    atlas = _est(catalog, "qwen3-30b-a3b", "bf16", "huawei-atlas-300i-duo")
    assert [u.field for u in atlas.uncertain_inputs] == ["memoryGB", "memoryBandwidthGBps", "peakTflops.fp16"]
    # INT8 is uncertain on the L40S, but a BF16 model never uses it
    assert _est(catalog, "qwen3-30b-a3b", "bf16", "nvidia-l40s").uncertain_inputs == []
    # nothing is estimated where compat refuses the variant, so nothing rests on the figures
    refused = _est(catalog, "qwen3-30b-a3b", "fp8", "huawei-ascend-910c")
    assert refused.support == "unsupported" and refused.uncertain_inputs == []
    # no speed figure at all: only the (uncertain) memory the fit rests on
    mlu = _est(catalog, "qwen3-30b-a3b", "bf16", "cambricon-mlu590")
    assert mlu.decode_tokens_per_second is None and [u.field for u in mlu.uncertain_inputs] == ["memoryGB"]


def test_the_speed_hook_says_whether_a_profile_speed_rests_on_certain_figures(catalog) -> None:
    assert speed_inputs_certain(catalog.profile("nvidia-h100-sxm"))
    # profile-wide: the L40S's INT8 peak (what W8A8 variants run at) is uncertain; each estimate says whether
    # it rests on it (a BF16 one does not, above)
    assert not speed_inputs_certain(catalog.profile("nvidia-l40s"))
    assert not speed_inputs_certain(catalog.profile("huawei-ascend-910c"))
    assert not speed_inputs_certain(catalog.profile("apple-m3-ultra-512g"))  # TFLOPS (u)
    assert not speed_inputs_certain(catalog.profile("cambricon-mlu590"))  # no speed at all is not certain speed


def test_uncertain_figures_make_the_domestic_profiles_estimable_where_something_is_published(catalog) -> None:
    for name in PLANNABLE:
        e = _est(catalog, "qwen3-30b-a3b", "bf16", name)
        assert e.fits and e.decode_tokens_per_second and e.uncertain_inputs, name
        # two dies/chips: tensor parallelism would need the unpublished link bandwidth, a pipeline does not
        assert (e.tensor_parallel, e.pipeline_parallel) == (1, 2), name
        assert any("fits too, but its speed is unknown without an interconnect bandwidth" in r for r in e.reasons)
    for name in NO_SPEED:
        for variant in ("bf16", "fp8", "w4a16"):
            assert _est(catalog, "qwen3-30b-a3b", variant, name).decode_tokens_per_second is None, (name, variant)


def test_a_fixed_parallelism_is_not_replaced(catalog) -> None:
    e = _est(catalog, "qwen3-30b-a3b", "bf16", "huawei-ascend-910c", tp=2)
    assert e.tensor_parallel == 2 and e.decode_tokens_per_second is None


def test_matrix_cells_carry_the_uncertain_figures_and_the_cli_shows_them(catalog) -> None:
    model = catalog.model("qwen3-30b-a3b")
    cells = {(c.variant, c.hardware): c for c in matrix(model, [catalog.profile("hygon-k100-ai")])}
    cell = cells[("bf16", "hygon-k100-ai")]
    assert cell.status == "fits" and [u.field for u in cell.uncertain_inputs] == [
        "memoryGB", "memoryBandwidthGBps", "peakTflops.bf16"]
    assert cell.to_json()["uncertainInputs"][1].startswith("uncertain datasheet figure: memoryBandwidthGBps (Public")
    table = CliRunner().invoke(cli, ["matrix", "-m", "qwen3-30b-a3b", "-H", "hygon-k100-ai"]).output
    assert "UNCERTAIN" in table and "memoryGB, memoryBandwidthGBps, peakTflops.bf16" in table
    assert "- hygon-k100-ai: uncertain datasheet figure: memoryBandwidthGBps (Public benchmarks" in table
    shown = CliRunner().invoke(cli, ["estimate", "-m", "qwen3-30b-a3b", "-v", "bf16", "-H", "hygon-k100-ai"]).output
    assert "- uncertain datasheet figure: peakTflops.bf16 (Public benchmarks" in shown
    as_json = json.loads(CliRunner().invoke(cli, ["estimate", "-m", "qwen3-30b-a3b", "-v", "bf16", "-H",
                                                  "hygon-k100-ai", "-o", "json"]).output)
    assert len(as_json["uncertainInputs"]) == 3
