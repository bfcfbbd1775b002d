"""Safe file and YAML reading with source positions: the first step of loading (bytes -> plain data + lines).

Everything later reports errors as ``FILE:LINE: field.path``; this module is where lines come from.
Files are read by ``read_capped``: regular files only (a FIFO would block, a device never ends), never
more than the per-file limit nor what is left of the load's ``ReadBudget``, whatever ``st_size`` says.
YAML is composed node by node from libyaml's events with a count, and plain Python values are built
here, so that it can refuse what a document must never contain: Python or custom tags, duplicate keys,
merge keys, runaway alias expansion, deep nesting, more values than a load may hold, and bytes that
are not UTF-8.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.resolver import Resolver

from orchestrator.errors import Problem, SpecError

MAX_FILE_BYTES = 8 * 1024 * 1024
"""Largest file a load reads (a document, or a model's configFile)."""
MAX_LOAD_BYTES = 64 * 1024 * 1024
"""Most bytes one load reads, all its files together."""
MAX_FILES_PER_LOAD = 10_000
"""Most files one load reads (directories are expanded into their YAML files)."""
MAX_NODES_PER_DOCUMENT = 100_000
"""Most YAML nodes in one document, and most values it expands to (bounds aliases: "billion laughs")."""
MAX_VALUES_PER_LOAD = 250_000
"""Most values one load builds, all documents together (each keeps its line, so this bounds memory)."""
MAX_DOCUMENTS_PER_LOAD = 10_000
"""Most documents one load holds."""
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


class ReadBudget:
    """What one load may still read: bytes, values and documents, shared by all its files."""

    def __init__(self, total_bytes: int | None = None, values: int | None = None,
                 documents: int | None = None) -> None:
        self.bytes_left = MAX_LOAD_BYTES if total_bytes is None else total_bytes
        self.values_left = MAX_VALUES_PER_LOAD if values is None else values
        self.documents_left = MAX_DOCUMENTS_PER_LOAD if documents is None else documents
        self.spent = False
        """A per-load limit was reached: the load stops reading (its error says which limit)."""


class UnreadableFile(Exception):
    """A file the loader will not read; the message says why (no such file, symlink loop, a FIFO, too large)."""


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_unless_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
        raise UnreadableFile(f"not a regular file ({what})")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (or too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    return exc.strerror or str(exc)


def read_capped(path: Path, budget: ReadBudget | None = None) -> bytes:
    """The bytes of ``path``, a regular file after resolving symlinks, read with a hard cap.

    Raises ``UnreadableFile``. A FIFO or a device is refused before it is opened (``st_size`` is 0 there:
    a FIFO blocks, ``/dev/zero`` never ends), and at most the limit plus one byte is ever read, so a file
    that grows, or is swapped between the check and the read, cannot get past the limit either.
    """
    budget = budget or ReadBudget()
    try:
        _refuse_unless_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(_os_reason(exc)) from None
    with os.fdopen(fd, "rb") as f:
        _refuse_unless_regular(os.fstat(fd).st_mode)  # swapped for something else after the stat
        limit = min(MAX_FILE_BYTES, budget.bytes_left)
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            raise UnreadableFile(_os_reason(exc)) from None
    if len(raw) > limit:
        if limit == MAX_FILE_BYTES:
            raise UnreadableFile(f"file is larger than {MAX_FILE_BYTES} bytes, the limit per file (MAX_FILE_BYTES)")
        budget.spent = True
        raise UnreadableFile(f"the files of this load exceed {MAX_LOAD_BYTES} bytes together, the limit per load "
                             "(MAX_LOAD_BYTES)")
    budget.bytes_left -= len(raw)
    return raw


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    def __init__(self, file: str, budget: ReadBudget):
        self.file = file
        self.budget = budget
        self.nodes = 0
        self.lines: dict[Path_, int] = {}

    def fail(self, node: yaml.Node, path: Path_, message: str, hint: str | None = None) -> SpecError:
        return SpecError([Problem(message, self.file, node.start_mark.line + 1, format_path(path), hint)])

    def build(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.nodes += 1
        self.budget.values_left -= 1
        if self.nodes > MAX_NODES_PER_DOCUMENT:
            raise self.fail(node, path, f"document expands to more than {MAX_NODES_PER_DOCUMENT} values, the "
                            "limit per document (MAX_NODES_PER_DOCUMENT)",
                            "remove deeply nested aliases (&anchor/*alias); write the values out")
        if self.budget.values_left < 0:
            self.budget.spent = True
            raise self.fail(node, path, f"the documents of this load hold more than {MAX_VALUES_PER_LOAD} values, "
                            "the limit per load (MAX_VALUES_PER_LOAD)", "load fewer or smaller documents")
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


class _TooManyNodes(yaml.MarkedYAMLError):
    pass


try:
    from yaml.cyaml import CParser as _EventSource  # libyaml's events; the composing below stays in Python

    def _init_events(loader: Any, text: str) -> None:
        _EventSource.__init__(loader, text)
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _EventSource(Reader, Scanner, Parser):  # type: ignore[no-redef]
        pass

    def _init_events(loader: Any, text: str) -> None:
        Reader.__init__(loader, text)
        Scanner.__init__(loader)
        Parser.__init__(loader)


class _Resolver(Resolver):
    """YAML 1.1 scalars, plus the exponent forms YAML 1.2 and JSON read as floats ('1e6', '2E-3'), which
    YAML 1.1 leaves strings: numbers are strict, so a string would be refused where a number was meant."""


_Resolver.add_implicit_resolver(
    _T + "float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


class _CountingComposer(Composer, _EventSource, _Resolver):  # type: ignore[misc,valid-type]
    """PyYAML's safe composer over libyaml's events, refusing a document of more than MAX_NODES_PER_DOCUMENT
    nodes while it is composed (the stock composer builds the whole tree first: 8 MB of '1,' is 4 million
    nodes, 30 s and a gigabyte)."""

    def __init__(self, text: str, budget: ReadBudget) -> None:
        _init_events(self, text)
        Composer.__init__(self)
        _Resolver.__init__(self)
        self.budget = budget
        self.count = 0

    def compose_document(self) -> Any:
        self.count = 0
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.count += 1
        if self.count > MAX_NODES_PER_DOCUMENT:
            raise _TooManyNodes(problem=f"document has more than {MAX_NODES_PER_DOCUMENT} values, the limit per "
                                "document (MAX_NODES_PER_DOCUMENT)", problem_mark=self.peek_event().start_mark)
        if self.count > self.budget.values_left:
            self.budget.spent = True
            raise _TooManyNodes(problem=f"the documents of this load hold more than {MAX_VALUES_PER_LOAD} values, "
                                "the limit per load (MAX_VALUES_PER_LOAD)", problem_mark=self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _compose_all(text: str, budget: ReadBudget) -> Any:
    loader = _CountingComposer(text, budget)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def read_yaml_documents(text: str, file: str, budget: ReadBudget | None = None) -> list[RawDocument]:
    """Parse every document of a YAML stream (``---`` separated); empty documents are skipped."""
    budget = budget or ReadBudget()
    docs: list[RawDocument] = []
    try:
        for node in _compose_all(text, budget):
            if node is None:
                continue
            builder = _Builder(file, budget)
            data = builder.build(node, ())
            if data is None:  # an empty document between separators
                continue
            budget.documents_left -= 1
            if budget.documents_left < 0:
                budget.spent = True
                raise SpecError([Problem(f"more than {MAX_DOCUMENTS_PER_LOAD} documents, the limit per load "
                                         "(MAX_DOCUMENTS_PER_LOAD)", file, node.start_mark.line + 1)])
            docs.append(RawDocument(data, file, node.start_mark.line + 1, builder.lines))
    except _TooManyNodes as exc:
        raise SpecError([Problem(str(exc.problem), file, exc.problem_mark.line + 1 if exc.problem_mark else None,
                                 hint="split the document, or write fewer values")]) from None
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


def read_yaml_file(path: Path, display: str | None = None, budget: ReadBudget | None = None) -> list[RawDocument]:
    name = display or str(path)
    budget = budget or ReadBudget()
    try:
        raw = read_capped(path, budget)
    except UnreadableFile as exc:
        raise SpecError([Problem(f"cannot read: {exc}", name)]) from None
    return read_yaml_documents(decode(raw, name), name, budget)
