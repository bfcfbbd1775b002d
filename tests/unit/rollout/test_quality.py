"""The quality gate's arithmetic, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from orchestrator.rollout.quality import (
    BUILTIN_PROMPTS,
    Generation,
    compare,
    compare_one,
    first_divergence,
    generation_from_openai,
    kl_divergence,
    parse_prompts,
    top_k_overlap,
)
from orchestrator.spec.rollout import Quality

LN = math.log


def test_first_divergence_over_tokens_prefixes_and_equal_lists() -> None:
    assert first_divergence(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert first_divergence(["a", "b"], ["a", "b", "c"]) == 2  # one output stops early
    assert first_divergence([], ["a"]) == 0
    assert first_divergence(["a", "b"], ["a", "b"]) is None


def test_top_k_overlap_is_the_share_of_stable_tokens_the_canary_also_lists() -> None:
    assert top_k_overlap({"a": -0.1, "b": -2, "c": -3}, {"a": -0.2, "c": -1, "d": -4}) == pytest.approx(2 / 3)
    assert top_k_overlap({"a": -1}, {"b": -1}) == 0.0


def test_kl_with_the_same_tokens_listed() -> None:
    # p = (0.6, 0.3), rest 0.1; q = (0.5, 0.4), rest 0.1:
    # 0.6 ln(0.6/0.5) + 0.3 ln(0.3/0.4) + 0.1 ln(1) = 0.109393 - 0.086305 = 0.023088
    kl = kl_divergence({"a": LN(0.6), "b": LN(0.3)}, {"a": LN(0.5), "b": LN(0.4)})
    assert kl == pytest.approx(0.023088, abs=1e-6)
    assert kl_divergence({"a": LN(0.6), "b": LN(0.3)}, {"b": LN(0.3), "a": LN(0.6)}) == pytest.approx(0.0)


def test_kl_when_the_canary_does_not_list_a_stable_token() -> None:
    # stable top: a 0.5, b 0.4 (rest 0.1). canary top: a 0.5, c 0.3 (unseen 0.2).
    # b is missing: it and the rest bucket share the unseen 0.2 -> q(b) = 0.1; q(rest) = 0.1 + c's 0.3 = 0.4.
    # KL = 0.5 ln(1) + 0.4 ln(0.4/0.1) + 0.1 ln(0.1/0.4) = 0.4 ln 4 - 0.1 ln 4 = 0.3 ln 4 = 0.415888
    kl = kl_divergence({"a": LN(0.5), "b": LN(0.4)}, {"a": LN(0.5), "c": LN(0.3)})
    assert kl == pytest.approx(0.3 * LN(4), abs=1e-9)


def _gen(tokens: list[str], tops: list[dict[str, float]] | None = None) -> Generation:
    return Generation("".join(tokens), tuple(tokens), None if tops is None else tuple(tops))


def test_compare_one_measures_positions_up_to_and_including_the_divergence() -> None:
    same = {"x": LN(0.9)}
    stable = _gen(["A", "B", "C", "D"], [same, {"B": LN(0.6), "Z": LN(0.3)}, same, same])
    canary = _gen(["A", "Z", "Q"], [same, {"Z": LN(0.5), "B": LN(0.4)}, same])
    row = compare_one("p", stable, canary)
    assert (row.identical, row.divergence, row.unit) == (False, 1, "tokens")
    assert len(row.kl) == 2 and row.kl[0] == pytest.approx(0.0)  # position 2 follows different prefixes: skipped
    # position 1: p = (B 0.6, Z 0.3, rest 0.1), q = (B 0.4, Z 0.5, rest 0.1)
    assert row.kl[1] == pytest.approx(0.6 * LN(0.6 / 0.4) + 0.3 * LN(0.3 / 0.5), abs=1e-9)
    assert row.overlap == (1.0, 1.0)


def test_compare_one_falls_back_to_words_without_logprobs() -> None:
    row = compare_one("p", Generation("Paris is the capital"), Generation("Paris is a capital"))
    assert (row.identical, row.divergence, row.unit, row.kl) == (False, 2, "words", ())


def test_compare_aggregates_and_judges_against_the_thresholds() -> None:
    prompts = ["p1", "p2", "p3", "p4"]
    stable = [_gen(["a", "b"]), _gen(["c", "d", "e"]), _gen(["f"]), _gen(["g"])]
    canary = [_gen(["a", "b"]), _gen(["c", "x", "e"]), _gen(["f"]), None]  # p4: the canary answered nothing
    report = compare(prompts, stable, canary, Quality(min_exact_match=0.6, min_first_divergence=2))
    assert (report.prompts, report.compared, report.exact) == (4, 3, 2)
    assert report.exact_match_rate == pytest.approx(2 / 3)
    assert (report.first_divergence_min, report.first_divergence_mean) == (1, 1.0)
    assert report.mean_kl is None and report.mean_top_k_overlap is None
    assert not report.passed and report.failures == ("an output diverges at position 1 < 2",)
    looser = compare(prompts, stable, canary, Quality(min_exact_match=0.6))
    assert looser.passed and looser.failures == ()
    stricter = compare(prompts, stable, canary, Quality(min_exact_match=0.7))
    assert stricter.failures == ("exact match 0.667 < 0.7 (1 of 3 prompts differ)",)


def test_compare_checks_kl_and_overlap_means_over_all_positions() -> None:
    s1 = _gen(["a"], [{"a": LN(0.6), "b": LN(0.3)}])
    c1 = _gen(["a"], [{"a": LN(0.5), "b": LN(0.4)}])  # KL 0.023088, overlap 1
    s2 = _gen(["a"], [{"a": LN(0.5), "b": LN(0.4)}])
    c2 = _gen(["a"], [{"a": LN(0.5), "c": LN(0.3)}])  # KL 0.3 ln 4, overlap 0.5
    report = compare(["p", "q"], [s1, s2], [c1, c2], Quality(max_kl=0.2, min_top_k_overlap=0.8))
    assert report.mean_kl == pytest.approx((0.023088 + 0.3 * LN(4)) / 2, abs=1e-6)
    assert report.mean_top_k_overlap == pytest.approx(0.75)
    assert report.exact_match_rate == 1.0
    assert report.failures == ("mean KL 0.2195 > 0.2", "mean top-k overlap 0.75 < 0.8")


def test_nothing_answered_does_not_pass() -> None:
    report = compare(["p"], [None], [_gen(["a"])], Quality())
    assert report.compared == 0 and not report.passed


def test_generation_from_an_openai_choice() -> None:
    choice = {"message": {"content": "Hi!"}, "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1},
                                                          {"token": "Hello", "logprob": -2.5}]},
        {"token": "!", "logprob": -0.3, "top_logprobs": [{"token": "!", "logprob": -0.3}]}]}}
    gen = generation_from_openai(choice)
    assert gen.text == "Hi!" and gen.tokens == ("Hi", "!")
    assert gen.top == ({"Hi": -0.1, "Hello": -2.5}, {"!": -0.3})
    assert generation_from_openai({"text": "plain", "logprobs": None}) == Generation("plain")


def test_prompt_files_and_the_builtin_set() -> None:
    assert parse_prompts('first\n\n{"prompt": "second"}\n  third  \n') == ["first", "second", "third"]
    with pytest.raises(ValueError, match="line 1: a JSON line needs"):
        parse_prompts('{"text": "x"}')
    with pytest.raises(ValueError, match="no prompt"):
        parse_prompts("\n\n")
    assert len(BUILTIN_PROMPTS) == 12 and len(set(BUILTIN_PROMPTS)) == 12


def test_two_token_ids_with_the_same_text_add_their_probabilities() -> None:
    """vLLM can list two ids that decode to the same text among the top logprobs: ln(0.25) and ln(0.25) -> ln(0.5)."""
    choice = {"message": {"content": "a"}, "logprobs": {"content": [{"token": "a", "top_logprobs": [
        {"token": "a", "logprob": math.log(0.25)}, {"token": "a", "logprob": math.log(0.25)},
        {"token": "b", "logprob": math.log(0.5)}]}]}}
    (top,) = generation_from_openai(choice).top
    assert top.keys() == {"a", "b"} and math.isclose(top["a"], math.log(0.5)) and math.isclose(top["b"], math.log(0.5))
