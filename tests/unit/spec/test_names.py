"""spec/names.py: the one rule that turns names into safe ids, for Kubernetes objects and Ray replicas alike."""

from __future__ import annotations

import re

import pytest

from orchestrator.runtime.desired import replica_id
from orchestrator.spec.names import MAX_NAME, label_value, object_name, slug

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("text", ["glm-4.5-air-w4a16-h200", "Qwen3.235B_A22B", "1st-model", "x" * 200, "--a--"])
def test_object_names_are_short_dns_labels(text):
    name = object_name(text)
    assert DNS_1035.match(name) and len(name) <= MAX_NAME


def test_long_names_stay_distinct():
    assert object_name("a" * 80 + "-one") != object_name("a" * 80 + "-two")


def test_label_values_are_valid():
    assert label_value("glm-4.5-air") == "glm-4.5-air"
    assert label_value("-a b/c-") == "a-b-c"
    assert len(label_value("y" * 100)) == 63


def test_slug_turns_every_run_of_other_characters_into_one_dash():
    assert slug("GLM-4.5_Air") == "glm-4-5-air"
    assert slug("--a.-b--") == "a-b"


def test_replica_ids_and_object_names_apply_the_same_rule():
    assert replica_id("chat", "fp8", "h100", 0) == "chat-fp8-h100-0"
    assert replica_id("a--b", "fp8", "h100", 1) == object_name("a--b-fp8-h100") + "-1" == "a-b-fp8-h100-1"
