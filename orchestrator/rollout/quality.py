"""The quality gate's arithmetic: greedy outputs of the stable and the canary side, compared prompt by prompt.

Pure. The runtime sends each golden prompt to both sides with temperature 0 (and ``logprobs``/``top_logprobs``
where the engine returns them), turns each answer into a ``Generation`` (``generation_from_openai``), and hands the
pairs to ``compare``. What is measured (after vLLM's own model-comparison tests and Dutta et al., "Accuracy is Not
All You Need", NeurIPS 2024, where KL divergence tracks answer flips):

- exact match: the share of prompts whose two outputs are identical (1 - the flip rate);
- first divergence: the position of the first differing token (over the engine's tokens where it returned them,
  else over whitespace-separated words);
- top-k overlap and KL divergence, per position, from the top log-probabilities: only up to and including the
  first divergence, where both sides still continue the same prefix (after it the contexts differ).

KL(stable || canary) is computed over the stable side's top-k tokens plus one "rest" bucket, because an engine
returns only the top k: p(t) = exp(stable logprob); p(rest) = 1 - sum p. For the canary, q(t) = exp(its logprob)
where t is in its top k; its unseen mass 1 - sum(its top-k) is split evenly over the stable tokens it does not
list and the rest bucket, and the rest bucket also takes its top-k tokens the stable side does not list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.spec.rollout import Quality

_FLOOR = 1e-10  # a probability the engine rounded to 0 still gets a finite log

BUILTIN_PROMPTS: tuple[str, ...] = (
    "What is the capital of Australia? Answer in one word.",
    "Compute 17 * 23 and give only the number.",
    "Write a Python function that returns the factorial of n.",
    "Translate into French: 'The weather is nice today.'",
    "List the first five prime numbers, separated by commas.",
    "Summarise in one sentence: Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Is 2027 a leap year? Answer yes or no, then explain briefly.",
    "Name three noble gases.",
    "Complete the sequence: 2, 4, 8, 16,",
    "Write a haiku about a lighthouse.",
    'Return a JSON object with keys "name" and "age" for a 30-year-old called Ada.',
    "Explain in two sentences why the sky is blue.",
)
"""Golden prompts used when a Rollout says ``prompts: builtin``: short, and spread over facts, arithmetic, code,
translation, lists, summaries, reasoning, poetry and structured output, so that a quantization that breaks one
kind of answer shows."""


def parse_prompts(text: str) -> list[str]:
    """A prompts file: one prompt per line, or JSON Lines whose objects carry 'prompt'. Blank lines are skipped."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
                raise ValueError(f"line {number}: a JSON line needs a non-empty string 'prompt'")
            out.append(obj["prompt"])
        else:
            out.append(line)
    if not out:
        raise ValueError("the prompts file holds no prompt")
    return out


@dataclass(frozen=True)
class Generation:
    """One side's greedy answer to one prompt. ``tokens`` and ``top`` come from the engine's logprobs (None where
    it returned none); ``top[i]`` maps each of the top tokens at position i to its log-probability."""

    text: str
    tokens: tuple[str, ...] | None = None
    top: tuple[Mapping[str, float], ...] | None = None


def generation_from_openai(choice: Mapping[str, Any]) -> Generation:
    """A Generation from one OpenAI chat/completions choice (``message.content`` or ``text``, and
    ``logprobs.content[i].{token, top_logprobs[j].{token, logprob}}``)."""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, Mapping) else choice.get("text")
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not content:
        return Generation(text or "")
    tokens = tuple(str(c["token"]) for c in content)
    top = tuple(_by_text(c.get("top_logprobs") or ()) for c in content)
    return Generation(text or "", tokens, top if all(top) else None)


def _by_text(entries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Top logprobs keyed by token text. Two token ids can decode to the same text (vLLM lists both): their
    probabilities add up (log-sum-exp), so both sides compare distributions over the same strings."""
    out: dict[str, float] = {}
    for t in entries:
        key, lp = str(t["token"]), float(t["logprob"])
        out[key] = lp if key not in out else max(out[key], lp) + math.log1p(math.exp(-abs(out[key] - lp)))
    return out


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (the shorter length when one is a prefix of the
    other); None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def top_k_overlap(stable: Mapping[str, float], canary: Mapping[str, float]) -> float:
    """Share of the stable side's top tokens that are also among the canary's."""
    if not stable:
        return 1.0
    return len(set(stable) & set(canary)) / len(stable)


def kl_divergence(stable: Mapping[str, float], canary: Mapping[str, float]) -> float:
    """KL(stable || canary) in nats over the stable side's top tokens and a rest bucket (module docstring)."""
    p = {t: math.exp(lp) for t, lp in stable.items()}
    q_known = {t: math.exp(lp) for t, lp in canary.items()}
    missing = [t for t in p if t not in q_known]
    unseen = max(0.0, 1.0 - sum(q_known.values())) / (len(missing) + 1)
    q = {t: q_known.get(t, unseen) for t in p}
    p_rest = max(0.0, 1.0 - sum(p.values()))
    q_rest = unseen + sum(v for t, v in q_known.items() if t not in p)
    kl = sum(pv * math.log(pv / max(q[t], _FLOOR)) for t, pv in p.items() if pv > 0)
    if p_rest > 0:
        kl += p_rest * math.log(p_rest / max(q_rest, _FLOOR))
    return max(0.0, kl)


@dataclass(frozen=True)
class PromptComparison:
    prompt: str
    identical: bool
    divergence: int | None
    """First differing position (tokens, or words where the engine returned no tokens); None when identical."""
    unit: str
    """'tokens' or 'words'."""
    kl: tuple[float, ...] = ()
    """KL per compared position (up to and including the divergence); empty without logprobs."""
    overlap: tuple[float, ...] = ()
    """Top-k overlap per compared position."""


def compare_one(prompt: str, stable: Generation, canary: Generation) -> PromptComparison:
    if stable.tokens is not None and canary.tokens is not None:
        a, b, unit = stable.tokens, canary.tokens, "tokens"
    else:
        a, b, unit = tuple(stable.text.split()), tuple(canary.text.split()), "words"
    identical = stable.text == canary.text and (unit == "words" or a == b)
    divergence = None if identical else first_divergence(a, b)
    if divergence is None and not identical:
        divergence = min(len(a), len(b))  # same tokens or words, different text (whitespace)
    kl: tuple[float, ...] = ()
    overlap: tuple[float, ...] = ()
    if unit == "tokens" and stable.top is not None and canary.top is not None:
        last = min(len(stable.top), len(canary.top))
        if divergence is not None:
            last = min(last, divergence + 1)
        kl = tuple(kl_divergence(stable.top[i], canary.top[i]) for i in range(last))
        overlap = tuple(top_k_overlap(stable.top[i], canary.top[i]) for i in range(last))
    return PromptComparison(prompt, identical, divergence, unit, kl, overlap)


@dataclass(frozen=True)
class QualityReport:
    """The golden prompts compared, aggregated, and judged against the Rollout's thresholds."""

    prompts: int
    compared: int
    """Prompts both sides answered."""
    exact: int
    exact_match_rate: float | None
    first_divergence_min: int | None
    """Smallest first-divergence position among the differing prompts; None when none differ."""
    first_divergence_mean: float | None
    mean_kl: float | None
    """Mean KL over every compared position of every prompt; None without logprobs."""
    mean_top_k_overlap: float | None
    min_exact_match: float
    passed: bool
    failures: tuple[str, ...] = ()
    per_prompt: tuple[PromptComparison, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_prompt")
        out["failures"] = list(self.failures)
        return out


def compare(prompts: Sequence[str], stable: Sequence[Generation | None], canary: Sequence[Generation | None],
            thresholds: Quality) -> QualityReport:
    """Compare the sides prompt by prompt (None: that side gave no answer) and judge against ``thresholds``."""
    if not len(prompts) == len(stable) == len(canary):
        raise ValueError("one answer per prompt and side (None for a missing one)")
    rows = [compare_one(p, s, c) for p, s, c in zip(prompts, stable, canary, strict=True)
            if s is not None and c is not None]
    n = len(rows)
    exact = sum(r.identical for r in rows)
    divergences = [r.divergence for r in rows if r.divergence is not None]
    kls = [x for r in rows for x in r.kl]
    overlaps = [x for r in rows for x in r.overlap]
    rate = exact / n if n else None
    fd = min(divergences) if divergences else None
    kl = sum(kls) / len(kls) if kls else None
    ov = sum(overlaps) / len(overlaps) if overlaps else None
    failures = []
    if rate is not None and rate < thresholds.min_exact_match:
        failures.append(f"exact match {rate:.3g} < {thresholds.min_exact_match:g} ({n - exact} of {n} prompts differ)")
    if thresholds.min_first_divergence is not None and fd is not None and fd < thresholds.min_first_divergence:
        failures.append(f"an output diverges at position {fd} < {thresholds.min_first_divergence}")
    if thresholds.max_kl is not None and kl is not None and kl > thresholds.max_kl:
        failures.append(f"mean KL {kl:.4g} > {thresholds.max_kl:g}")
    if thresholds.min_top_k_overlap is not None and ov is not None and ov < thresholds.min_top_k_overlap:
        failures.append(f"mean top-k overlap {ov:.3g} < {thresholds.min_top_k_overlap:g}")
    return QualityReport(
        prompts=len(prompts), compared=n, exact=exact, exact_match_rate=rate, first_divergence_min=fd,
        first_divergence_mean=sum(divergences) / len(divergences) if divergences else None, mean_kl=kl,
        mean_top_k_overlap=ov, min_exact_match=thresholds.min_exact_match, passed=n > 0 and not failures,
        failures=tuple(failures), per_prompt=tuple(rows))
