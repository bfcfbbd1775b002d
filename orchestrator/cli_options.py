"""Click options generated from the fields of a pydantic model, as vLLM generates its CLI from its config classes.

One source of truth: a flag that mirrors a field (``EngineSettings.gpu_memory_utilization``,
``PlanOptions.churn_weight``) takes the field's type, bounds (``ge``/``gt``/``le``/``lt`` -> ``IntRange`` /
``FloatRange``), choices (``Literal`` -> ``Choice``), default and description, so none of them is written a second
time in ``cli.py``. Imports click and pydantic only; ``cli.py`` is its one reader.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

F = TypeVar("F", bound=Callable[..., Any])


def choice(literal: Any) -> click.Choice:
    """A click Choice of a ``Literal`` type's values (nested Literals flattened)."""
    return click.Choice([str(v) for v in typing.get_args(literal)])


def _bounds(info: FieldInfo) -> dict[str, Any]:
    """click range arguments from the field's constraints (pydantic keeps them as Ge/Gt/Le/Lt metadata)."""
    out: dict[str, Any] = {}
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            out["min"] = m.ge
        if getattr(m, "gt", None) is not None:
            out.update(min=m.gt, min_open=True)
        if getattr(m, "le", None) is not None:
            out["max"] = m.le
        if getattr(m, "lt", None) is not None:
            out.update(max=m.lt, max_open=True)
    return out


def _click_type(info: FieldInfo) -> click.ParamType:
    annotation = info.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return choice(annotation)
    bounds = _bounds(info)
    if annotation is int:
        return click.IntRange(**bounds) if bounds else click.INT
    if annotation is float:
        return click.FloatRange(**bounds) if bounds else click.FLOAT
    if annotation is str:
        return click.STRING
    raise TypeError(f"no click type for a field of type {annotation!r}")


def _help(info: FieldInfo) -> str:
    return " ".join((info.description or "").split())


def option_from(model: type[BaseModel], field: str, flag: str | None = None, **extra: Any
                ) -> Callable[[F], F]:
    """One ``click.option`` for ``model.field``: ``--field-name`` (or ``flag``), the command's parameter named as
    the field, its type, default and help from the field. ``extra`` goes to click.option as it is."""
    info = model.model_fields[field]
    default = None if info.default is PydanticUndefined else info.default
    return click.option(flag or "--" + field.replace("_", "-"), field, type=_click_type(info), default=default,
                        show_default=default is not None, help=_help(info), **extra)


def options_from(model: type[BaseModel], fields: list[str], flags: Mapping[str, str] | None = None
                 ) -> Callable[[F], F]:
    """``option_from`` for each field, in the order given; ``flags`` renames some (field -> '--flag')."""
    flags = flags or {}

    def decorate(command: F) -> F:
        for field in reversed(fields):
            command = option_from(model, field, flags.get(field))(command)
        return command

    return decorate

