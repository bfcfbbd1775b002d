"""Load documents: files and directories -> typed, validated documents with their source positions.

Flow: ``yamlsource`` (bytes -> plain data + lines) -> here (kind dispatch, pydantic validation,
``configFile`` reading) -> ``catalog`` (references resolved). Every problem becomes a ``Problem`` with
file, line, field path and a hint; all problems of a load are reported together.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.base import API_VERSION, PATTERN_MEANINGS, Document, FieldError
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.deployment import ModelDeployment
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.hardware import HardwareProfile, HardwareProfileOverlay
from orchestrator.spec.hfconfig import ConfigError, architecture_from_hf_config
from orchestrator.spec.model import Model
from orchestrator.spec.plan import Plan
from orchestrator.spec.rollout import Rollout
from orchestrator.spec.suggest import did_you_mean
from orchestrator.spec.yamlsource import (
    MAX_FILES_PER_LOAD,
    RawDocument,
    ReadBudget,
    UnreadableFile,
    decode,
    format_path,
    read_capped,
    read_yaml_file,
)

KINDS: dict[str, type[Document[Any]]] = {
    "HardwareProfile": HardwareProfile,
    "Model": Model,
    "Fleet": Fleet,
    "ModelDeployment": ModelDeployment,
    "Rollout": Rollout,
    "Plan": Plan,
    "Benchmark": Benchmark,
}
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Loaded:
    """A validated document and where it came from."""

    doc: Document[Any]
    raw: RawDocument

    @property
    def kind(self) -> str:
        return self.doc.kind

    @property
    def name(self) -> str:
        return self.doc.metadata.name

    def where(self, *path: str | int) -> tuple[str, int]:
        return self.raw.file, self.raw.line_of(tuple(path))

    def problem(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> Problem:
        return Problem(message, self.raw.file, self.raw.line_of(path), format_path(path), hint)


def yaml_files(paths: list[Path]) -> list[Path]:
    """Expand directories (recursively, sorted) into their YAML files; anything else is passed on as given,
    for the reader to refuse with its reason (no such file, symlink loop, a FIFO, a device).

    Inside a directory, every ``*.yaml``/``*.yml`` that is not itself a directory counts, so a FIFO or a
    dangling link there is reported rather than skipped."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and not f.is_dir()))
        else:
            files.append(p)
        if len(files) > MAX_FILES_PER_LOAD:
            raise SpecError([Problem(f"more than {MAX_FILES_PER_LOAD} files, the limit per load "
                                     "(MAX_FILES_PER_LOAD)", str(p), hint="load fewer files or directories")])
    return files


def load_documents(paths: list[Path]) -> list[Loaded]:
    """Load every document under ``paths``; raise one SpecError listing every problem found.

    One ``ReadBudget`` bounds the whole load: bytes (documents and configFiles), values and documents."""
    budget = ReadBudget()
    loaded: list[Loaded] = []
    problems: list[Problem] = []
    for file in yaml_files(paths):
        if budget.spent:
            break  # one problem says which limit; the rest of the load is not read
        try:
            raws = read_yaml_file(file, budget=budget)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        for raw in raws:
            try:
                loaded.append(validate_document(raw, base_dir=file.parent, budget=budget))
            except SpecError as exc:
                problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return loaded


def load_plan(path: Path) -> Plan:
    """The one Plan document in ``path`` (a file written by ``moxin plan -o yaml``), validated like any document."""
    plans = [d.doc for d in load_documents([path]) if isinstance(d.doc, Plan)]
    if len(plans) != 1:
        raise SpecError([Problem(f"expected one Plan document, found {len(plans)}", str(path), 1,
                                 hint="pass a file written by `moxin plan -o yaml` (or -o json)")])
    return plans[0]


def validate_document(raw: RawDocument, base_dir: Path | None = None, budget: ReadBudget | None = None,
                      cls: type[Document[Any]] | None = None) -> Loaded:
    """One document, validated as ``cls`` (default: its kind's class; a HardwareProfile with 'spec.extends' as
    an overlay, which the catalog resolves)."""
    data = raw.data
    if not isinstance(data, dict):
        raise SpecError([Problem(f"a document must be a mapping, not {_type_name(data)}", raw.file, raw.line,
                                 hint="start with 'apiVersion: moxin.dev/v1alpha1' and 'kind: ...'")])
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        what = "missing 'kind'" if kind is None else f"unknown kind {kind!r}"
        raise SpecError([Problem(what, raw.file, raw.line_of(("kind",)), "kind", did_you_mean(str(kind), KINDS))])
    if data.get("apiVersion") != API_VERSION:
        raise SpecError([Problem(f"apiVersion must be {API_VERSION!r}, not {data.get('apiVersion')!r}",
                                 raw.file, raw.line_of(("apiVersion",)), "apiVersion")])
    if cls is None:
        cls = HardwareProfileOverlay if kind == "HardwareProfile" and _is_overlay(data) else KINDS[kind]
    try:
        # Strict: a number is a YAML number ("4" and yes are refused, as the JSON Schema says); an integer
        # still fills a float field.
        doc = cls.model_validate(data, strict=True)
    except ValidationError as exc:
        raise SpecError([_problem_from_pydantic(err, raw, cls) for err in exc.errors()]) from None
    if isinstance(doc, Model) and doc.spec.config_file is not None:
        doc = _with_config_architecture(doc, raw, base_dir, budget or ReadBudget())
    return Loaded(doc, raw)


def _is_overlay(data: dict[str, Any]) -> bool:
    spec = data.get("spec")
    return isinstance(spec, dict) and spec.get("extends") is not None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number moxin accepts")


def _with_config_architecture(doc: Model, raw: RawDocument, base_dir: Path | None, budget: ReadBudget) -> Model:
    """Read ``configFile`` (relative to the document; any path the user can read) through the same capped,
    regular-files-only reader as documents, counted against the same load budget."""
    rel = doc.spec.config_file
    assert rel is not None
    path = (base_dir or Path(".")) / rel

    def fail(message: str) -> SpecError:
        return SpecError([Problem(message, raw.file, raw.line_of(("spec", "configFile")), "spec.configFile",
                                  "point configFile at a Hugging Face config.json, relative to this file")])

    try:
        text = decode(read_capped(path, budget), str(path))
        cfg = json.loads(text, parse_constant=_no_constant)
    except UnreadableFile as exc:
        raise fail(f"cannot read {str(path)!r}: {exc}") from None
    except SpecError as exc:  # not UTF-8
        raise fail(f"{str(path)!r}: {exc.problems[0].message}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{str(path)!r} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, an integer of thousands of digits, deep nesting
        raise fail(f"{str(path)!r} is not JSON moxin reads: {exc or type(exc).__name__}") from None
    if not isinstance(cfg, dict):
        raise fail(f"{str(path)!r} must hold a JSON object")
    try:
        arch = architecture_from_hf_config(cfg)
    except (ConfigError, ValidationError, TypeError) as exc:
        raise fail(f"{str(path)!r}: {_short(exc)}") from None
    spec = doc.spec.model_copy(update={"architecture": arch})
    return doc.model_copy(update={"spec": spec})


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{format_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _problem_from_pydantic(err: Any, raw: RawDocument, cls: type[BaseModel]) -> Problem:
    loc = tuple(err["loc"])
    kind = err["type"]
    error = err.get("ctx", {}).get("error")
    if isinstance(error, FieldError):  # a model validator naming the field below it
        loc += error.path
    path = _data_path(loc, raw.data)
    hint = None
    got = f" (got {_shown(err['input'])})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
    if kind == "extra_forbidden":
        field = str(path[-1]) if path else "?"
        message = f"unknown field {field!r}"
        allowed = _fields_at(cls, path[:-1])
        if allowed:
            hint = did_you_mean(field, allowed)
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = str(error if error is not None else err["msg"])
    elif kind == "less_than_equal":
        message = f"at most {_number(err['ctx']['le'])}{got}"
    elif kind == "less_than":
        message = f"less than {_number(err['ctx']['lt'])}{got}"
    elif kind == "string_pattern_mismatch" and err["ctx"]["pattern"] in PATTERN_MEANINGS:
        message = f"must be {PATTERN_MEANINGS[err['ctx']['pattern']]}{got}"
    else:
        message = err["msg"] + got
        value = err.get("input")
        if kind in ("int_type", "float_type") and isinstance(value, bool):
            hint = "write a number (yes, no, on, off, true and false are booleans in YAML)"
        elif kind in ("int_type", "float_type") and isinstance(value, str):
            hint = "write a plain YAML number, without quotes"
        elif kind == "bool_type" and isinstance(value, str):
            hint = "write true or false, without quotes"
    return Problem(message, raw.file, raw.line_of(path), format_path(path), hint)


def _number(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else str(limit)


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[str | int, ...]:
    """Pydantic locations may hold union/validator tags; keep the parts that exist in the data."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and part == loc[-1]:
            path.append(part)  # a missing field: name it
    return tuple(path)


def _fields_at(cls: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The YAML field names the model accepts at ``path`` (for did-you-mean on unknown fields)."""
    tp: Any = cls
    for part in path:
        tp = _unwrap(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if args else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    if origin is typing.Annotated:
        return typing.get_args(tp)[0]
    return tp


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)
