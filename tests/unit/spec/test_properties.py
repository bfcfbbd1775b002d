"""Property tests: whatever the input, the loader raises only SpecError and the CLI prints no traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import cli
from orchestrator.errors import SpecError
from orchestrator.spec.catalog import build_catalog, builtin_documents
from orchestrator.spec.loader import validate_document
from orchestrator.spec.yamlsource import read_yaml_documents

GOOD = Path(__file__).resolve().parents[2] / "data" / "good" / "fleet.yaml"
GOOD_DOCS = [d for d in yaml.safe_load_all(GOOD.read_text())]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(GOOD_DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(values)
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


def _load_text(text: str) -> None:
    docs = [validate_document(raw) for raw in read_yaml_documents(text, "mutated.yaml")]
    build_catalog(builtin_documents(), docs)


@SETTINGS
@given(mutated_documents())
def test_mutated_documents_raise_only_spec_error(doc: Any) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        _load_text(text)
    except SpecError as exc:
        for p in exc.problems:
            assert p.file == "mutated.yaml" and p.message
            assert p.line is None or p.line >= 1


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@`\n ,?0123456789.~\t")), max_size=120))
def test_random_yaml_text_raises_only_spec_error(text: str) -> None:
    try:
        _load_text(text)
    except SpecError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_through_the_cli_never_print_a_traceback(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "doc.yaml"
    path.write_bytes(data)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
