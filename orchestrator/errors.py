"""The error taxonomy, organised by what the caller does next.

- ``SpecError``: the input is wrong; fix the YAML (file, line, field path, hint). Exit code 2.
- ``InfeasibleError``: the input is valid but asks for something that cannot be placed; relax something.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we know."""

    message: str
    file: str | None = None
    line: int | None = None
    path: str = ""
    hint: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field_path = f"{self.path}: " if self.path else ""
        text = f"{where}{field_path}{self.message}"
        if self.hint:
            text += f"\n  To fix: {self.hint}"
        return text


class MoxinError(Exception):
    """Base of every error moxin raises on purpose."""

    exit_code = 1


@dataclass
class SpecError(MoxinError):
    """The user's documents are invalid. Holds every problem found, not only the first."""

    problems: list[Problem] = field(default_factory=list)
    exit_code = 2

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class InfeasibleError(MoxinError):
    """Valid input that asks for something impossible; ``reasons`` say what to relax."""

    exit_code = 2

    def __init__(self, message: str, reasons: list[str] | None = None):
        super().__init__(message)
        self.reasons = reasons or []
