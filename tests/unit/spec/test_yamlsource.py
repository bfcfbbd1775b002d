from __future__ import annotations

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec.yamlsource import MAX_DEPTH, read_yaml_documents


def test_lines_are_recorded_for_keys_and_list_items() -> None:
    [doc] = read_yaml_documents("a: 1\nb:\n  - x\n  - y: 2\n    z: 3\n", "f.yaml")
    assert doc.data == {"a": 1, "b": ["x", {"y": 2, "z": 3}]}
    assert doc.lines[("a",)] == 1
    assert doc.lines[("b", 0)] == 3
    assert doc.lines[("b", 1, "z")] == 5
    assert doc.line_of(("b", 1, "missing", "deeper")) == 4  # falls back to the longest known prefix


def test_several_documents_and_empty_ones() -> None:
    docs = read_yaml_documents("---\na: 1\n---\n---\nb: 2\n", "f.yaml")
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}]
    assert [d.line for d in docs] == [2, 5]


def test_dates_stay_strings_and_keys_are_raw_text() -> None:
    [doc] = read_yaml_documents("when: 2024-01-02\nyes: no\n1: one\n", "f.yaml")
    assert doc.data == {"when": "2024-01-02", "yes": False, "1": "one"}


@pytest.mark.parametrize("text", [
    "a: !!python/name:os.system x\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\n",
    "a: !!omap [x: 1]\n",
    "a: !custom 3\n",
])
def test_tags_beyond_plain_data_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="unsupported YAML tag"):
        read_yaml_documents(text, "f.yaml")


def test_recursive_alias_is_refused_not_looping() -> None:
    with pytest.raises(SpecError, match="nesting deeper|expands to more"):
        read_yaml_documents("a: &x [*x]\n", "f.yaml")


def test_deep_nesting_is_refused() -> None:
    text = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    with pytest.raises(SpecError, match="nesting deeper"):
        read_yaml_documents(text, "f.yaml")


def test_small_aliases_are_fine() -> None:
    [doc] = read_yaml_documents("base: &b {x: 1}\nother: *b\n", "f.yaml")
    assert doc.data["other"] == {"x": 1}
