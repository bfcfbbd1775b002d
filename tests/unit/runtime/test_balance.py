"""Weighted least-load replica choice and the routing-table checks (pure)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from orchestrator.runtime.balance import FAILED_COOLDOWN_S, Balancer, parse_document, parse_table


def table(weights: dict[str, float]) -> dict:
    return {"d": [{"name": n, "url": f"http://{n}:1/", "requestModel": "d", "weight": w} for n, w in weights.items()]}


def fill(b: Balancer, n: int) -> Counter:
    """Send n requests that all stay in flight; count where they went."""
    got: Counter = Counter()
    for _ in range(n):
        ep = b.pick("d", set(), now=0.0)
        ep.in_flight += 1
        got[ep.name] += 1
    return got


def test_concurrent_requests_split_in_proportion_to_predicted_capacity():
    b = Balancer(random.Random(0))
    b.update(table({"h100": 30.0, "mac": 10.0}))
    assert fill(b, 40) == {"h100": 30, "mac": 10}


def test_a_busy_replica_yields_to_an_idle_one_of_lower_capacity():
    b = Balancer(random.Random(0))
    b.update(table({"big": 4.0, "small": 1.0}))
    big = next(e for e in b.table["d"] if e.name == "big")
    big.in_flight = 4
    assert b.pick("d", set(), 0.0).name == "small"


def test_excluded_and_recently_failed_replicas_are_skipped_unless_nothing_else_is_left():
    b = Balancer(random.Random(0))
    b.update(table({"a": 10.0, "b": 1.0}))
    assert b.pick("d", {"a"}, 0.0).name == "b"
    assert b.pick("d", {"a", "b"}, 0.0) is None
    b.table["d"][0].failed_until = 5.0
    assert b.pick("d", set(), 1.0).name == "b"
    assert b.pick("d", {"b"}, 1.0).name == "a"      # the failed one is better than none
    assert b.pick("d", set(), 5.0 + FAILED_COOLDOWN_S).name == "a"
    assert b.pick("other", set(), 0.0) is None


def test_a_table_update_keeps_the_counters_of_replicas_that_stay():
    b = Balancer(random.Random(0))
    b.update(table({"a": 1.0, "b": 1.0}))
    b.table["d"][0].in_flight = 3
    b.update(table({"a": 1.0, "c": 1.0}))
    counts = {e.name: e.in_flight for e in b.table["d"]}
    assert counts == {"a": 3, "c": 0}


def test_rows_without_labels_get_the_full_label_set():
    """Metrics need every label; a hand-written routing table may give none."""
    b = Balancer()
    b.update(table({"a": 1.0}))
    labels = b.table["d"][0].labels
    assert labels["deployment"] == "d" and labels["pool"] == "" and len(labels) == 7


def good_row(**over) -> dict:
    return {"name": "a", "url": "http://10.0.0.1:8000", "requestModel": "m", "weight": 1.5,
            "labels": {"engine": "vllm"}, **over}


@pytest.mark.parametrize("rows, where", [
    ([good_row(weight=math.nan)], r"deployments.d\[0\].weight: expected a finite number > 0, got nan"),
    ([good_row(weight=math.inf)], r"deployments.d\[0\].weight: .* got inf"),
    ([good_row(weight=True)], r"deployments.d\[0\].weight: .* got True"),
    ([good_row(weight=-2)], r"deployments.d\[0\].weight: .* got -2"),
    ([good_row(weight=0)], r"deployments.d\[0\].weight: .* got 0"),
    ([good_row(weight="3")], r"deployments.d\[0\].weight: .* got '3'"),
    ([good_row(), ["b", "http://x", "m", 1]], r"deployments.d\[1\]: expected an object .* got list"),
    ([good_row(url="ftp://x/")], r"deployments.d\[0\].url: expected an http:// or https:// URL"),
    ([good_row(url="http://user:pw@x/")], r"deployments.d\[0\].url"),
    ([good_row(url="http:///path")], r"deployments.d\[0\].url"),
    ([good_row(url=7)], r"deployments.d\[0\].url"),
    ([good_row(name="")], r"deployments.d\[0\].name: expected a non-empty string"),
    ([good_row(requestModel=None)], r"deployments.d\[0\].requestModel"),
    ([good_row(labels={"engine": 1})], r"deployments.d\[0\].labels: expected an object of strings"),
    ([{"name": "a", "url": "http://x"}], r"deployments.d\[0\]: missing requestModel, weight"),
    ([good_row(), good_row()], r"deployments.d\[1\].name: replica 'a' is already in deployments.d\[0\]"),
    ({"a": good_row()}, r"deployments.d: expected a list of replicas"),
])
def test_a_routing_table_is_checked_row_by_row_with_the_place_of_the_problem(rows, where):
    with pytest.raises(ValueError, match=where):
        parse_table({"deployments": {"d": rows}})


def test_a_routing_table_document_needs_deployments_and_a_good_one_passes():
    for doc in ([], {"routes": {}}, {"deployments": []}, None):
        with pytest.raises(ValueError, match='"deployments"'):
            parse_table(doc)
    table = {"deployments": {"d": [good_row(), good_row(name="b", url="https://h.ns.svc:443/base", weight=40)],
                             "empty": []}}
    assert parse_table(table) == table["deployments"]


# -- rollout splits --------------------------------------------------------------------------------------------

def split_table(stable: dict[str, float], canary: dict[str, float]) -> dict:
    rows = [{"name": n, "url": f"http://{n}:1/", "requestModel": "d", "weight": w} for n, w in stable.items()]
    rows += [{"name": n, "url": f"http://{n}:1/", "requestModel": "d", "weight": w, "side": "canary"}
             for n, w in canary.items()]
    return {"d": rows}


def sides(b: Balancer, n: int) -> Counter:
    """n requests, each finished before the next: where each side's share goes."""
    got: Counter = Counter()
    for _ in range(n):
        ep = b.pick("d", set(), 0.0, b.side("d"))
        got[ep.side] += 1
    return got


@pytest.mark.parametrize("percent", [0, 1, 10, 33, 50, 90, 99, 100, 12.5])
def test_a_split_sends_exactly_its_canary_percent_of_every_hundred_requests(percent):
    b = Balancer(random.Random(0))
    b.update(split_table({"s0": 30.0, "s1": 30.0}, {"c0": 1.0}), {"d": {"canaryPercent": percent}})
    for _ in range(3):  # every window of 100, not only the first
        got = sides(b, 100)
        assert got["canary"] == math.floor(percent) or got["canary"] == math.ceil(percent)
        assert got["canary"] + got["stable"] == 100
    assert sides(b, 800)["canary"] == 8 * percent


@pytest.mark.parametrize("percent", [0, 0.5, 10, 50, 99.5, 100])
def test_a_new_split_sends_its_first_request_to_the_canary_unless_its_percent_is_zero(percent):
    """Each router splits only its own requests: two routers taking 5 requests each at 10% send the canary 2 (from
    nginx's zero weights, none: each would first pick it at its sixth). Every 100 stay exact."""
    def router() -> Balancer:
        b = Balancer(random.Random(0))
        b.update(split_table({"s": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": percent}})
        return b

    assert router().side("d") == ("canary" if percent else "stable")
    if percent == 10:
        assert [sides(router(), 5)["canary"] for _ in range(2)] == [1, 1]
    b = router()
    for _ in range(3):
        assert sides(b, 100)["canary"] in (math.floor(percent), math.ceil(percent))


def test_a_split_of_ten_percent_is_spread_not_bunched():
    """Smooth round-robin: one canary request in each run of ten, never two in a row."""
    b = Balancer(random.Random(0))
    b.update(split_table({"s": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 10}})
    order = [b.side("d") for _ in range(30)]
    assert [order[i:i + 10].count("canary") for i in range(0, 30, 10)] == [1, 1, 1]


def test_within_a_side_the_choice_is_weighted_least_load():
    b = Balancer(random.Random(0))
    b.update(split_table({"big": 3.0, "small": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 20}})
    got: Counter = Counter()
    for _ in range(100):  # all stay in flight
        ep = b.pick("d", set(), 0.0, b.side("d"))
        ep.in_flight += 1
        got[ep.name] += 1
    assert got == {"c": 20, "big": 60, "small": 20}


def test_a_side_without_replicas_left_gives_its_requests_to_the_other():
    b = Balancer(random.Random(0))
    b.update(split_table({"s": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 50}})
    assert b.pick("d", {"c"}, 0.0, "canary").name == "s"    # retry after the canary failed: crosses
    assert b.pick("d", set(), 0.0, "canary").name == "c"
    assert b.pick("d", {"s", "c"}, 0.0, "canary") is None
    b.update(split_table({"s": 1.0}, {}), {"d": {"canaryPercent": 50}})
    assert {b.side("d") for _ in range(10)} == {None}         # one side only: no split in force
    assert sides(b, 10) == {"stable": 10}


def test_without_a_split_rows_of_both_sides_share_by_least_load():
    b = Balancer(random.Random(0))
    b.update(split_table({"s": 1.0}, {"c": 1.0}))
    assert b.side("d") is None
    assert fill(b, 10) == {"s": 5, "c": 5}


def test_the_round_robin_survives_a_table_update_with_the_same_split_and_restarts_on_a_new_one():
    b = Balancer(random.Random(0))
    b.update(split_table({"s": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 10}})
    first = sides(b, 5)
    b.update(split_table({"s": 1.0, "s2": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 10}})
    assert (first + sides(b, 5))["canary"] == 1                 # one per ten across the update
    b.update(split_table({"s": 1.0}, {"c": 1.0}), {"d": {"canaryPercent": 50}})
    assert sides(b, 10) == {"canary": 5, "stable": 5}


@pytest.mark.parametrize("doc, where", [
    ({"splits": {"d": {"canaryPercent": 101}}}, r"splits.d.canaryPercent: expected a number in \[0, 100\], got 101"),
    ({"splits": {"d": {"canaryPercent": -1}}}, r"splits.d.canaryPercent: .* got -1"),
    ({"splits": {"d": {"canaryPercent": math.nan}}}, r"splits.d.canaryPercent: .* got nan"),
    ({"splits": {"d": {"canaryPercent": True}}}, r"splits.d.canaryPercent: .* got True"),
    ({"splits": {"d": {"canaryPercent": "10"}}}, r"splits.d.canaryPercent: .* got '10'"),
    ({"splits": {"d": {"weight": 10}}}, r'splits.d: expected {"canaryPercent": W}'),
    ({"splits": {"d": 10}}, r'splits.d: expected {"canaryPercent": W}'),
    ({"splits": {"e": {"canaryPercent": 10}}}, r"splits.e: no deployment 'e' in the table; deployments: \['d'\]"),
    ({"splits": [10]}, r'splits: expected {NAME: {"canaryPercent": W}}'),
    ({"split": {}}, r"unknown keys \['split'\]"),
])
def test_a_split_is_checked_with_the_place_of_the_problem(doc, where):
    with pytest.raises(ValueError, match=where):
        parse_document({"deployments": {"d": [good_row()]}, **doc})


def test_a_row_side_is_stable_or_canary():
    with pytest.raises(ValueError, match=r"deployments.d\[0\].side: expected one of \['stable', 'canary'\]"):
        parse_table({"deployments": {"d": [good_row(side="blue")]}})
    doc = {"deployments": {"d": [good_row(side="canary"), good_row(name="b", side="stable"), good_row(name="c")]},
           "splits": {"d": {"canaryPercent": 25}}}
    assert parse_document(doc) == (doc["deployments"], doc["splits"])


def test_a_request_in_flight_across_a_table_refresh_counts_itself_out_of_the_replica_that_stays():
    """The router actor takes the controller's table every second: a request begun before a refresh and ended
    after it must leave the replica's in-flight count where it found it, or the count only ever grows."""
    b = Balancer()
    rows = [{"name": "a", "url": "http://a", "requestModel": "m", "weight": 1.0}]
    b.update({"d": rows})
    ep = b.pick("d", set(), 0.0, None)
    assert ep is not None
    ep.in_flight += 1  # a request begins
    b.update({"d": [{**rows[0], "weight": 3.0, "labels": {"engine": "vllm"}}]})
    ep.in_flight -= 1  # and ends after the refresh
    (now,) = b.table["d"]
    assert now.in_flight == 0 and now.weight == 3.0 and now.labels["engine"] == "vllm"
