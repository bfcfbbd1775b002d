"""Weighted least-load replica choice and the routing-table checks (pure)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from orchestrator.runtime.balance import FAILED_COOLDOWN_S, Balancer, parse_table


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
