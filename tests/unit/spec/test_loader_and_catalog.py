from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import load_catalog, load_documents
from orchestrator.spec.suggest import suggest

GOOD = Path(__file__).resolve().parents[2] / "data" / "good"


def test_good_documents_load_and_resolve() -> None:
    catalog = load_catalog([GOOD])
    fleet = catalog.fleets["mixed"]
    assert [p.name for p in fleet.spec.pools] == ["h100-a", "macs", "cpu-emu"]
    assert fleet.spec.pools[2].emulate == "cpu"
    assert fleet.spec.pools[0].usd_per_device_hour == 2.4
    dep = catalog.deployments["chat"]
    assert dep.spec.traffic.prompt_tokens == 1500 and dep.spec.slo.tpot_seconds == 0.05
    rollout = catalog.rollouts["chat-to-fp8"]
    assert rollout.spec.from_.variant == "mlx-3bit" and rollout.spec.to.pool == "h100-a"


def test_directories_are_walked_and_positions_kept() -> None:
    loaded = load_documents([GOOD])
    fleet = next(d for d in loaded if d.kind == "Fleet")
    assert fleet.where("spec", "pools", 1, "addresses") == (str(GOOD / "fleet.yaml"), 17)


def test_config_file_architecture_is_read_relative_to_the_document() -> None:
    model = load_catalog([GOOD]).model("tiny-llama")
    arch = model.spec.architecture
    assert arch.family == "llama" and arch.layers == 2 and arch.kv_heads == 2 and arch.head_dim == 16


def test_user_document_replaces_builtin_of_same_name(write) -> None:
    builtin = load_catalog().profile("nvidia-h100-sxm")
    text = (Path(__file__).resolve().parents[3] / "hardware_profiles" / "nvidia-h100-sxm.yaml").read_text()
    path = write("h100.yaml", text.replace("memoryGB: 80", "memoryGB: 94"))
    assert builtin.spec.memory_gb == 80
    assert load_catalog([path]).profile("nvidia-h100-sxm").spec.memory_gb == 94


def test_same_name_twice_in_user_documents_is_an_error(write) -> None:
    doc = ("apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\n"
           "spec: {pools: [{name: a, hardware: nvidia-h100-sxm, nodes: 1}]}\n")
    a, b = write("a.yaml", doc), write("b.yaml", doc)
    with pytest.raises(SpecError, match=r"defined twice \(first at .*a.yaml:3\)"):
        load_catalog([a, b])


def test_all_problems_of_a_load_are_reported_together(write) -> None:
    a = write("a.yaml", "apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: BAD}\nspec: {pools: []}\n")
    b = write("b.yaml", "kind: Nope\n")
    with pytest.raises(SpecError) as info:
        load_catalog([a, b])
    files = {p.file for p in info.value.problems}
    assert files == {str(a), str(b)}
    assert len(info.value.problems) >= 3  # bad name, empty pools, unknown kind


def test_unknown_field_hint_suggests_the_real_field(write) -> None:
    path = write("f.yaml", "apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec:\n  pools:\n"
                 "    - {name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerGpuHour: 2}\n")
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    [problem] = info.value.problems
    assert problem.line == 6 and problem.path == "spec.pools[0].usdPerGpuHour"
    assert "usdPerDeviceHour" in (problem.hint or "")


def test_model_names_may_hold_dots_but_other_kinds_may_not(write) -> None:
    bad = write("f.yaml", "apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: prod.eu}\n"
                "spec: {pools: [{name: a, hardware: nvidia-h100-sxm, nodes: 1}]}\n")
    with pytest.raises(SpecError, match="metadata.name"):
        load_catalog([bad])
    assert "glm-4.5-air" in load_catalog().models


def test_name_longer_than_63_characters_is_refused(write) -> None:
    path = write("f.yaml", f"apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: {'a' * 64}}}\n"
                 "spec: {pools: [{name: a, hardware: nvidia-h100-sxm, nodes: 1}]}\n")
    with pytest.raises(SpecError, match="at most 63"):
        load_catalog([path])


def test_missing_path_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_catalog([Path("/nonexistent/fleet.yaml")])


@pytest.mark.parametrize("word,choices,expected", [
    ("mlu-590", ["cambricon-mlu590", "cambricon-mlu370-x8", "nvidia-h100-sxm"], "cambricon-mlu590"),
    ("h100", ["nvidia-h100-sxm", "nvidia-h200"], "nvidia-h100-sxm"),
    ("glm-4.5-ari", ["glm-4.5-air", "llama-3.1-8b"], "glm-4.5-air"),
])
def test_did_you_mean(word: str, choices: list[str], expected: str) -> None:
    assert suggest(word, choices)[0] == expected


def test_unrelated_word_gets_no_suggestion() -> None:
    assert suggest("zzzz", ["nvidia-h100-sxm", "apple-m2-max-64g"]) == []
