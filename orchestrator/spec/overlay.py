"""Overlays of hardware profiles: a HardwareProfile with ``spec.extends`` resolved onto its base. Pure.

Flow: the loader holds an overlay as a ``HardwareProfileOverlay`` (its own fields unchecked); the catalog calls
``resolve_overlays`` before it checks references; each overlay's spec is merged onto its base's (a built-in or
another user document, itself resolved first when it is an overlay) by the rules ``HardwareProfileSpec.extends``
documents, and the result is validated as a ``HardwareProfile`` at the overlay's own lines. Refused, each at the
line of its ``spec.extends``: an unknown base, and a chain that leads back to itself.
"""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.hardware import HardwareProfile, HardwareProfileOverlay
from orchestrator.spec.loader import Loaded, validate_document
from orchestrator.spec.suggest import did_you_mean
from orchestrator.spec.yamlsource import RawDocument

KIND = "HardwareProfile"
APPENDED = ("sources", "declaredSupport")
"""Lists an overlay adds to rather than replaces."""
MERGED_BY = {"engines": "engine"}
"""Lists whose entries merge with the base's entry of the same key."""

Key = tuple[str, str]


def merge(base: Any, over: Any, field: str | None = None) -> Any:
    """``over`` merged onto ``base`` (plain YAML data; neither is changed)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = {k: merge(v, over[k], k) if k in over else copy.deepcopy(v) for k, v in base.items()}
        out.update({k: copy.deepcopy(v) for k, v in over.items() if k not in base})
        return out
    if isinstance(base, list) and isinstance(over, list):
        if field in APPENDED:
            return copy.deepcopy([*base, *over])
        if field in MERGED_BY:
            return _merge_by_key(base, over, MERGED_BY[field])
    return copy.deepcopy(over)


def _merge_by_key(base: list[Any], over: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(base)
    for item in over:
        at = next((i for i, b in enumerate(out) if isinstance(item, dict) and isinstance(b, dict)
                   and key in item and b.get(key) == item[key]), None)
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = merge(out[at], item)
    return out


def _is_overlay(entry: Loaded) -> bool:
    return isinstance(entry.doc, HardwareProfileOverlay)


def _base(entry: Loaded, entries: dict[Key, Loaded], builtin: dict[Key, Loaded]) -> Loaded | None:
    name = entry.doc.spec.extends
    if name == entry.name:  # an overlay of the built-in profile it replaces
        return builtin.get((KIND, name))
    return entries.get((KIND, name))


def resolve_overlays(entries: dict[Key, Loaded], builtin: dict[Key, Loaded]) -> list[Problem]:
    """Replace every overlay in ``entries`` (in place) with its resolved profile; return the problems found.

    ``builtin``: the built-in documents, where an overlay of the same name as its base finds that base."""
    problems: list[Problem] = []
    done: dict[str, Loaded | None] = {}  # overlay name -> its resolved entry, or None when it failed
    overlays = sorted(name for (kind, name), e in entries.items() if kind == KIND and _is_overlay(e))
    for start in overlays:
        chain: list[str] = []
        name = start
        while name not in done:  # follow the chain down to a complete profile (or an overlay already resolved)
            if name in chain:
                problems += _cycle(chain[chain.index(name):], entries, done)
                break
            chain.append(name)
            entry = entries[(KIND, name)]
            base = _base(entry, entries, builtin)
            if base is None:
                problems.append(_unknown_base(entry, entries))
                done[name] = None
                break
            if not _is_overlay(base):
                break
            name = base.name
        for member in reversed(chain):  # then resolve it upwards, base first
            if member in done:
                continue
            entry = entries[(KIND, member)]
            base = _base(entry, entries, builtin)
            assert base is not None
            ready = done.get(base.name) if _is_overlay(base) else base
            if ready is None:
                done[member] = None  # its base failed, and said why
                continue
            try:
                done[member] = _resolved(entry, ready)
            except SpecError as exc:
                problems += exc.problems
                done[member] = None
    for name, resolved in done.items():
        if resolved is not None:
            entries[(KIND, name)] = resolved
    return problems


def _cycle(loop: list[str], entries: dict[Key, Loaded], done: dict[str, Loaded | None]) -> list[Problem]:
    path = " -> ".join([*loop, loop[0]])
    out = []
    for name in loop:
        done[name] = None
        entry = entries[(KIND, name)]
        out.append(entry.problem(("spec", "extends"), f"{KIND} {name!r} extends itself through {path}",
                                 "one profile of the chain must extend a complete profile (a built-in one, or a "
                                 "document without 'extends')"))
    return out


def _unknown_base(entry: Loaded, entries: dict[Key, Loaded]) -> Problem:
    name = entry.doc.spec.extends
    profiles = [n for k, n in entries if k == KIND and n != entry.name]
    return entry.problem(("spec", "extends"), f"unknown hardware profile {name!r} to extend",
                         did_you_mean(name, profiles) or "name a built-in profile (moxin profiles) or one of yours")


def _resolved(entry: Loaded, base: Loaded) -> Loaded:
    """The overlay merged onto its (complete) base, validated as a HardwareProfile at the overlay's lines."""
    own = entry.raw.data["spec"]
    data = {**copy.deepcopy(entry.raw.data), "spec": merge(base.raw.data["spec"], own)}
    raw = RawDocument(data, entry.raw.file, entry.raw.line, entry.raw.lines)
    loaded = validate_document(raw, cls=HardwareProfile)
    _own_numbers_have_own_sources(loaded, own, base)
    return loaded


def _own_numbers_have_own_sources(loaded: Loaded, own: dict[str, Any], base: Loaded) -> None:
    """A figure the overlay sets must not borrow the base's source, which is about the base's figure."""
    spec = loaded.doc.spec
    inherited = len(base.doc.spec.sources)
    mine = spec.sources[inherited:]
    problems = []
    for path in spec.numbers():
        keys = path.split(".")
        if _get(own, keys) is None:
            continue
        if not any(path == f or path.startswith(f + ".") for s in mine for f in s.fields):
            problems.append(loaded.problem(("spec", *keys), f"{path} is set here without a source of its own",
                                           f"add {path!r} to a sources[].fields list of this document (the "
                                           f"source {base.name} gives is for its own figure)"))
    if problems:
        raise SpecError(problems)


def _get(data: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data
