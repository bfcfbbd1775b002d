"""Rendering results for people (tables) and programs (JSON/YAML, kubectl-style), and writing them to files
atomically. No logic here."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def emit(data: Any, fmt: str) -> None:
    sys.stdout.write((to_json(data) + "\n") if fmt == "json" else to_yaml(data))


def as_list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "moxin.dev/v1alpha1", "kind": f"{kind}List", "items": items}


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for c in columns:
        numeric = bool(rows) and all(isinstance(r[columns.index(c)], (int, float)) or r[columns.index(c)] in ("-", None)
                                     for r in rows)
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*("-" if v is None else str(v) for v in r))
    Console(width=200 if not sys.stdout.isatty() else None).print(t)


def gb(n: float | int | None, digits: int = 1) -> str | None:
    return None if n is None else f"{n / 1e9:.{digits}f}"


def billions(n: float | int | None) -> str | None:
    return None if n is None else f"{n / 1e9:.2f}B"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file, and a failure
    leaves the old file in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
