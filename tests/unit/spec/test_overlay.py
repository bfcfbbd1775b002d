"""Overlays of hardware profiles (spec.extends): what they inherit, what they change, what is refused and where."""

from __future__ import annotations

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import load_catalog
from orchestrator.spec.overlay import merge

HEAD = "apiVersion: moxin.dev/v1alpha1\nkind: HardwareProfile\n"
MIX = "{default: fp8-e4m3-block128, routedExperts: int4-g128, embedding: bf16, lmHead: bf16, router: bf16}"
MY_MLU590 = HEAD + f"""metadata: {{name: my-mlu590}}
spec:
  extends: cambricon-mlu590
  memoryGB: 96
  engines:
    - engine: vllm
      declaredSupport:
        - formats: {MIX}
          contextTokens: 200000
          source: declared by the operator
  sources:
    - fields: [memoryGB]
      ref: our M9 nodes, cnmon
"""


def test_overlay_inherits_every_field_and_overrides_what_it_names(write) -> None:
    catalog = load_catalog([write("my.yaml", MY_MLU590)])
    base, mine = catalog.profile("cambricon-mlu590").spec, catalog.profile("my-mlu590").spec
    assert mine.extends == "cambricon-mlu590" and mine.memory_gb == 96 and base.memory_gb == 80
    # everything it does not name is the base's, the engine entry included (merged by its engine name)
    assert mine.model_dump(exclude={"extends", "memory_gb", "engines", "sources"}) == base.model_dump(
        exclude={"extends", "memory_gb", "engines", "sources"})
    assert len(mine.engines) == 1
    vllm, base_vllm = mine.engines[0], base.engines[0]
    assert vllm.model_dump(exclude={"declared_support"}) == base_vllm.model_dump(exclude={"declared_support"})
    assert vllm.declared_support[0].context_tokens == 200000 and not base_vllm.declared_support
    # its sources follow the base's, and its own wins for the figure it sets (not uncertain, unlike the base's)
    assert mine.sources[: len(base.sources)] == base.sources
    assert mine.source_of("memoryGB").ref == "our M9 nodes, cnmon" and not mine.source_of("memoryGB").uncertain
    assert base.source_of("memoryGB").uncertain


def test_a_chain_of_overlays_resolves_whatever_the_file_order(write) -> None:
    child = HEAD + """metadata: {name: my-mlu590-big}
spec:
  extends: my-mlu590
  devicesPerNode: 4
  notes: half nodes
"""
    catalog = load_catalog([write("a-child.yaml", child), write("b-my.yaml", MY_MLU590)])
    spec = catalog.profile("my-mlu590-big").spec
    assert spec.extends == "my-mlu590" and spec.devices_per_node == 4 and spec.memory_gb == 96
    assert spec.engines[0].declared_support and spec.engines[0].plugin.package == "vllm_mlu"


def test_an_overlay_may_patch_the_builtin_of_its_own_name(write) -> None:
    patch = HEAD + "metadata: {name: cambricon-mlu590}\nspec: {extends: cambricon-mlu590, notes: patched}\n"
    spec = load_catalog([write("patch.yaml", patch)]).profile("cambricon-mlu590").spec
    assert spec.notes == "patched" and spec.memory_gb == 80 and spec.engines[0].platform == "mlu"


def test_a_cycle_is_refused_at_the_extends_line_of_each_member(write) -> None:
    text = (HEAD + "metadata: {name: x1}\nspec:\n  extends: x2\n---\n"
            + HEAD + "metadata: {name: x2}\nspec:\n  extends: x1\n")
    path = write("cycle.yaml", text)
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    rendered = [str(p) for p in info.value.problems]
    assert f"{path}:5: spec.extends: HardwareProfile 'x1' extends itself through x1 -> x2 -> x1" in rendered[0]
    assert f"{path}:11: spec.extends: HardwareProfile 'x2' extends itself through x1 -> x2 -> x1" in rendered[1]


def test_an_unknown_base_is_refused_at_its_line_with_a_suggestion(write) -> None:
    path = write("typo.yaml", HEAD + "metadata: {name: mine}\nspec:\n  notes: x\n  extends: cambricon-mlu59\n")
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:6: spec.extends: unknown hardware profile 'cambricon-mlu59' to extend")
    assert "did you mean 'cambricon-mlu590'" in str(problem)


def test_the_merged_profile_is_checked_at_the_overlays_lines(write) -> None:
    path = write("bad.yaml", HEAD + "metadata: {name: mine}\nspec:\n  extends: cambricon-mlu590\n  memoryGB: 96\n"
                 "  sources:\n    - {fields: [memoryGB], ref: cnmon}\n  bogus: 1\n")
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:9: spec.bogus: unknown field 'bogus'")


def test_a_figure_the_overlay_sets_needs_a_source_of_its_own(write) -> None:
    # the base has a source for memoryGB, but it is about the base's 80 GB, not this 96
    path = write("unsourced.yaml", HEAD + "metadata: {name: mine}\nspec:\n  extends: cambricon-mlu590\n"
                 "  memoryGB: 96\n")
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:6: spec.memoryGB: memoryGB is set here without a source of its own")


def test_merge_rules() -> None:
    base = {"a": {"b": 1, "c": 2}, "engines": [{"engine": "vllm", "x": 1}], "sources": [1], "nativeFormats": ["a"],
            "memoryGB": 80}
    over = {"a": {"c": 3}, "engines": [{"engine": "vllm", "y": 2}, {"engine": "mlx-lm"}], "sources": [2],
            "nativeFormats": ["b"], "memoryGB": None}
    assert merge(base, over) == {
        "a": {"b": 1, "c": 3}, "engines": [{"engine": "vllm", "x": 1, "y": 2}, {"engine": "mlx-lm"}],
        "sources": [1, 2], "nativeFormats": ["b"], "memoryGB": None}
    assert base["a"] == {"b": 1, "c": 2} and base["engines"] == [{"engine": "vllm", "x": 1}]  # inputs untouched
