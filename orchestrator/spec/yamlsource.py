"""Safe YAML reading with source positions: the first step of loading (bytes -> plain data + lines).

Everything later reports errors as ``FILE:LINE: field.path``; this module is where lines come from.
It composes node trees with the (C)SafeLoader and builds plain Python values itself, so that it can
refuse what a document must never contain: Python or custom tags, duplicate keys, merge keys,
runaway alias expansion, deep nesting, and bytes that are not UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_NODES_PER_DOCUMENT = 100_000  # bounds alias expansion ("billion laughs")
MAX_DEPTH = 64

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_T + "null", _T + "bool", _T + "int", _T + "float", _T + "str", _T + "timestamp"}
_constructor = yaml.constructor.SafeConstructor()

Path_ = tuple[str | int, ...]


@dataclass
class RawDocument:
    """One YAML document as plain data, with the line of every field path in it."""

    data: Any
    file: str
    line: int
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """The line of the longest prefix of ``path`` that exists in the source."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return self.line


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.nodes = 0
        self.lines: dict[Path_, int] = {}

    def fail(self, node: yaml.Node, path: Path_, message: str, hint: str | None = None) -> SpecError:
        return SpecError([Problem(message, self.file, node.start_mark.line + 1, format_path(path), hint)])

    def build(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES_PER_DOCUMENT:
            raise self.fail(node, path, f"document expands to more than {MAX_NODES_PER_DOCUMENT} values",
                            "remove deeply nested aliases (&anchor/*alias); write the values out")
        if depth > MAX_DEPTH:
            raise self.fail(node, path, f"nesting deeper than {MAX_DEPTH} levels (or a recursive alias)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _T + "seq":
                raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _T + "map":
                raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}", "remove the tag")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _T + "merge":
                    raise self.fail(key_node, path, "merge keys ('<<') are not supported",
                                    "write the fields out in full")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, path, "a mapping key must be a plain string")
                key = key_node.value
                if key in out:
                    first = self.lines.get(path + (key,))
                    raise self.fail(key_node, path + (key,), f"duplicate key {key!r} (first defined on line {first})",
                                    "keep one of the two")
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        raise self.fail(node, path, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}",
                            "moxin documents hold plain strings, numbers, booleans, lists and mappings")
        if node.tag == _T + "timestamp":
            return node.value  # dates stay strings: nothing in moxin is a YAML timestamp
        try:
            return _constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # e.g. float('1e999') is fine; odd ints not
            raise self.fail(node, path, f"invalid scalar {node.value!r}: {exc}") from None


def decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                                 file, line, hint="save the file as UTF-8")]) from None


def read_yaml_documents(text: str, file: str) -> list[RawDocument]:
    """Parse every document of a YAML stream (``---`` separated); empty documents are skipped."""
    docs: list[RawDocument] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None:
                continue
            builder = _Builder(file)
            data = builder.build(node, ())
            if data is None:  # an empty document between separators
                continue
            docs.append(RawDocument(data, file, node.start_mark.line + 1, builder.lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise SpecError([Problem(f"invalid YAML: {msg}", file, line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(f"invalid YAML: {exc}", file)]) from None
    except RecursionError:
        raise SpecError([Problem("YAML nested too deeply", file)]) from None
    return docs


def read_yaml_file(path: Path, display: str | None = None) -> list[RawDocument]:
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError([Problem(f"file is {size} bytes; the limit is {MAX_FILE_BYTES}", name)])
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem(f"cannot read: {exc.strerror or exc}", name)]) from None
    return read_yaml_documents(decode(raw, name), name)
