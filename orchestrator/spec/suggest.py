"""Did-you-mean suggestions for names and fields."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def suggest(word: str, choices: Iterable[str], limit: int = 3) -> list[str]:
    """Close matches: names containing the word (ignoring punctuation) first, then by similarity."""
    choices = sorted(set(choices))
    key = _norm(word)
    contained = [c for c in choices if key and (key in _norm(c) or _norm(c) in key)]
    similar = difflib.get_close_matches(word, choices, n=limit, cutoff=0.5)
    out: list[str] = []
    for c in contained + similar:
        if c not in out:
            out.append(c)
    return out[:limit]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = suggest(word, choices)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = sorted(choices)
    more = f" (and {len(shown) - 12} more)" if len(shown) > 12 else ""
    return "known: " + ", ".join(shown[:12]) + more if shown else "none are defined in the documents given"
