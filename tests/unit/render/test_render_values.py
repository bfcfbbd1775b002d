"""render/helm.py on its own: assignment ids, router config, external pools, images — pure functions of the plan."""

from __future__ import annotations

import pytest
from k8s_support import example

from orchestrator.render.helm import (
    RenderError,
    address_type,
    assignment_ids,
    helm_values,
    router_config,
)


def test_parallelism_disambiguates_assignments_that_would_share_a_name():
    plan, _, _ = example("local")
    a = plan.spec.assignments[0]
    b = a.model_copy(update={"tensor_parallel": 2})
    ids = assignment_ids([a, b])
    assert len(set(ids)) == 2 and ids[0].endswith("tp1-pp1")


def test_router_weights_follow_capacity_and_replicas():
    plan, _, _ = example("maas")
    config = router_config(plan, "ns")
    by_id = dict(zip(assignment_ids(plan.spec.assignments), plan.spec.assignments, strict=True))
    routes = config["deployments"]["glm-45-air"]
    assert routes and len({r["name"] for r in routes}) == len(routes)
    for route in routes:
        a = by_id[route["name"]]
        assert a.deployment == "glm-45-air"
        assert route["weight"] == pytest.approx(a.predicted.capacity_requests_per_second * a.replicas)
        assert route["url"] == f"http://{route['name']}.ns.svc:8000"
    assert {r["labels"]["pool"] for r in config["deployments"]["qwen3-30b"]} == {"h100", "mac-studio"}


def test_an_apple_pool_without_addresses_is_left_out_with_a_warning():
    plan, catalog, _ = example("maas")
    pools = [p.model_copy(update={"addresses": None}) for p in plan.spec.pools]
    plan = plan.model_copy(update={"spec": plan.spec.model_copy(update={"pools": pools})})
    result = helm_values(plan, catalog)  # no fleet: the plan's spec.pools are all there is
    assert result.values["externalAssignments"] == []
    (warning,) = result.warnings
    assert "mac-studio" in warning and "addresses" in warning
    assert [r["labels"]["pool"] for r in result.values["router"]["config"]["deployments"]["qwen3-30b"]] == ["h100"]


def test_without_a_fleet_the_plans_recorded_addresses_are_used():
    plan, catalog, _ = example("maas")
    (external,) = helm_values(plan, catalog).values["externalAssignments"]
    assert external["endpointSlices"] == [{"addressType": "FQDN", "addresses": ["studio-1.lan"]}]


def test_pool_labels_from_the_fleet_join_the_profiles_node_selector():
    plan, catalog, fleet = example("maas")
    values = helm_values(plan, catalog, fleet=fleet).values
    h100 = next(a for a in values["assignments"] if a["pool"] == "h100")
    assert h100["nodeSelector"] == {"moxin.dev/pool": "h100", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_addresses_are_typed_and_bad_ones_refused():
    assert address_type("10.0.0.1") == "IPv4"
    assert address_type("fd00::1") == "IPv6"
    assert address_type("studio-1.lan") == "FQDN"
    with pytest.raises(RenderError):
        address_type("Not A Host")


def test_cpu_platforms_default_to_the_moxin_image_and_images_can_be_overridden():
    plan, catalog, fleet = example("local")
    values = helm_values(plan, catalog, fleet=fleet, moxin_image="reg/moxin:9").values
    assert {a["image"] for a in values["assignments"]} == {"reg/moxin:9"}
    assert values["router"]["image"] == {"repository": "reg/moxin", "tag": "9"}
    values = helm_values(plan, catalog, fleet=fleet, images={"vllm/cpu": "reg/vllm-cpu:1"}).values
    assert {a["platform"]: a["image"] for a in values["assignments"]}["cpu"] == "reg/vllm-cpu:1"


def test_router_config_is_a_routing_table_the_router_accepts(example_name):
    from orchestrator.runtime.balance import parse_table

    plan, _, _ = example(example_name)
    table = parse_table(router_config(plan, "moxin"))
    assert sum(len(rows) for rows in table.values()) == sum(1 for a in plan.spec.assignments if a.replicas)


def test_with_split_marks_the_canary_routes_and_adds_the_split_only_when_there_are_some():
    from orchestrator.render.helm import with_split

    config = {"deployments": {"chat": [{"name": "a", "url": "http://a:8000", "requestModel": "m", "weight": 1.0,
                                        "labels": {}},
                                       {"name": "b", "url": "http://b:8000", "requestModel": "m", "weight": 2.0,
                                        "labels": {}}]}}
    split = with_split(config, "chat", frozenset({"b"}), 10)
    assert [r.get("side") for r in split["deployments"]["chat"]] == [None, "canary"]
    assert split["splits"] == {"chat": {"canaryPercent": 10}}
    assert "side" not in config["deployments"]["chat"][1]  # the input is left alone
    assert with_split(config, "chat", frozenset({"gone"}), 10) == config
