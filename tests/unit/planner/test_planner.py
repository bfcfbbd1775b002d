"""The planner against exhaustive search, against one-at-a-time placement, and its invariants."""

from __future__ import annotations

import math

import pytest

from orchestrator.planner import PlanOptions, diff, plan
from orchestrator.planner.candidates import EstimateCache, candidates_for

EXACT = PlanOptions(gap=0.0)


def _brute_force(fleet, deployments, catalog):
    """The least cost that serves all demand within replica bounds and pool devices, by enumerating every
    replica count of every (unpruned) candidate."""
    cache = EstimateCache()
    pools = fleet.spec.pools
    devices = {p.name: p.nodes * (p.devices_per_node or catalog.profile(p.hardware).spec.devices_per_node)
               for p in pools}
    cands = [c for d in deployments for c in candidates_for(d, pools, catalog, cache).candidates]
    demand = {d.name: d.spec.traffic.requests_per_second for d in deployments}
    bounds = {d.name: (d.spec.replicas.min, d.spec.replicas.max or 10**9) for d in deployments}
    best = math.inf

    def walk(i: int, free: dict[str, int], served: dict[str, float], count: dict[str, int], cost: float) -> None:
        nonlocal best
        if cost >= best - 1e-9:
            return
        if i == len(cands):
            if all(served[k] + 1e-9 >= demand[k] and bounds[k][0] <= count[k] <= bounds[k][1] for k in demand):
                best = cost
            return
        c = cands[i]
        n = 0
        while c.devices * n <= free[c.pool] and count[c.deployment] + n <= bounds[c.deployment][1]:
            walk(i + 1, {**free, c.pool: free[c.pool] - c.devices * n},
                 {**served, c.deployment: served[c.deployment] + n * c.capacity.requests_per_second},
                 {**count, c.deployment: count[c.deployment] + n}, cost + n * (c.usd_per_hour or 0.0))
            n += 1

    walk(0, devices, dict.fromkeys(demand, 0.0), dict.fromkeys(demand, 0), 0.0)
    return best, len(cands)


SMALL = [
    (["{name: a, hardware: nvidia-h100-sxm, nodes: 1, devicesPerNode: 4, usdPerDeviceHour: 2.5}",
      "{name: b, hardware: nvidia-l40s, nodes: 1, devicesPerNode: 4, usdPerDeviceHour: 0.9}"],
     ["{model: llama-3.1-8b, variants: [bf16, fp8], contextTokens: 8192, traffic: {requestsPerSecond: 9, "
      "promptTokens: 1000, outputTokens: 200}, slo: {ttftSeconds: 1, tpotSeconds: 0.03}}",
      "{model: qwen3-30b-a3b, variants: [fp8], contextTokens: 8192, traffic: {requestsPerSecond: 4, "
      "promptTokens: 1000, outputTokens: 200}, slo: {tpotSeconds: 0.04}, replicas: {min: 1, max: 3}}"]),
    (["{name: a, hardware: nvidia-h200, nodes: 1, devicesPerNode: 4, usdPerDeviceHour: 3.6}",
      "{name: m, hardware: apple-m3-ultra-512g, nodes: 3, usdPerDeviceHour: 0.9}"],
     ["{model: qwen3-30b-a3b, variants: [fp8, mlx-4bit], contextTokens: 16384, traffic: {requestsPerSecond: 6, "
      "promptTokens: 800, outputTokens: 300}, slo: {tpotSeconds: 0.05}, replicas: {min: 2}}",
      "{model: llama-3.1-8b, variants: [bf16, mlx-8bit], contextTokens: 8192, traffic: {requestsPerSecond: 3, "
      "promptTokens: 500, outputTokens: 200}, slo: {tpotSeconds: 0.05}}"]),
]


@pytest.mark.parametrize(("pools", "deps"), SMALL)
def test_cost_equals_the_exhaustive_optimum(instance, pools, deps) -> None:
    fleet, deployments, catalog = instance(pools, deps)
    doc = plan(fleet, deployments, catalog, options=EXACT)
    best, n = _brute_force(fleet, deployments, catalog)
    assert n >= 4 and math.isfinite(best)
    assert not doc.spec.unplaced
    assert doc.status.cost_usd_per_hour == pytest.approx(best, rel=1e-6), (doc.status, best)


def _greedy_one_at_a_time(fleet, deployments, catalog) -> tuple[float, float]:
    """Each deployment in file order takes the cheapest way to serve it alone on the devices left."""
    cache = EstimateCache()
    free = {p.name: p.nodes * (p.devices_per_node or catalog.profile(p.hardware).spec.devices_per_node)
            for p in fleet.spec.pools}
    cost = served = 0.0
    for d in deployments:
        demand = d.spec.traffic.requests_per_second
        options = []
        for c in candidates_for(d, fleet.spec.pools, catalog, cache).candidates:
            n = max(math.ceil(demand / c.capacity.requests_per_second), d.spec.replicas.min, 1)
            if n * c.devices <= free[c.pool]:
                options.append((n * (c.usd_per_hour or 0), c.key, n, c))
        if options:
            price, _, n, c = min(options)
            free[c.pool] -= n * c.devices
            cost += price
            served += demand
    return cost, served


def test_joint_placement_beats_one_at_a_time(instance) -> None:
    # The cheap pool is the only one the second deployment may use; placing the first one alone, on
    # the cheap pool, leaves the second nowhere to go.
    fleet, deployments, catalog = instance(
        ["{name: cheap, hardware: nvidia-h100-sxm, nodes: 1, devicesPerNode: 4, usdPerDeviceHour: 2.0}",
         "{name: dear, hardware: nvidia-h200, nodes: 1, usdPerDeviceHour: 4.5}"],
        ["{model: glm-4.5-air, variants: [fp8], contextTokens: 32768, traffic: {requestsPerSecond: 2, "
         "promptTokens: 1000, outputTokens: 200}, slo: {tpotSeconds: 0.05}}",
         "{model: llama-3.1-70b, variants: [bf16], contextTokens: 32768, traffic: {requestsPerSecond: 2, "
         "promptTokens: 1000, outputTokens: 200}, slo: {tpotSeconds: 0.05}, pools: [cheap]}"])
    doc = plan(fleet, deployments, catalog, options=EXACT)
    greedy_cost, greedy_served = _greedy_one_at_a_time(fleet, deployments, catalog)
    total = sum(d.spec.traffic.requests_per_second for d in deployments)
    assert not doc.spec.unplaced and doc.status.served_requests_per_second == pytest.approx(total)
    assert greedy_served < total, "the instance no longer defeats one-at-a-time placement"
    pools = {a.deployment: a.pool for a in doc.spec.assignments}
    assert pools == {"d0": "dear", "d1": "cheap"}
    del greedy_cost  # what matters: one-at-a-time leaves d1 unserved


def test_shared_deployment_uses_two_kinds_of_hardware(instance) -> None:
    fleet, deployments, catalog = instance(
        ["{name: gpu, hardware: nvidia-h100-sxm, nodes: 1, devicesPerNode: 1, usdPerDeviceHour: 2.5}",
         "{name: mac, hardware: apple-m3-ultra-512g, nodes: 2, usdPerDeviceHour: 0.9}"],
        ["{model: qwen3-30b-a3b, variants: [fp8, mlx-4bit], contextTokens: 16384, traffic: {requestsPerSecond: 30, "
         "promptTokens: 800, outputTokens: 300}, slo: {tpotSeconds: 0.05}}"])
    doc = plan(fleet, deployments, catalog, options=EXACT)
    engines = {a.engine for a in doc.spec.assignments}
    assert engines == {"vllm", "mlx-lm"}, doc.spec.assignments


def _check_capacity(doc, fleet, catalog) -> None:
    per_node = {p.name: p.devices_per_node or catalog.profile(p.hardware).spec.devices_per_node
                for p in fleet.spec.pools}
    seen = set()
    used = dict.fromkeys(per_node, 0)
    for a in doc.spec.assignments:
        replicas = {p.replica for p in a.placements}
        assert len(replicas) == a.replicas
        assert len(a.placements) == a.replicas * a.pipeline_parallel
        for p in a.placements:
            assert len(p.devices) == a.tensor_parallel
            for dev in p.devices:
                assert 0 <= dev < per_node[a.pool]
                assert (p.node, dev) not in seen
                seen.add((p.node, dev))
            used[a.pool] += len(p.devices)
    for pool, n in used.items():
        assert n <= doc.status.devices_total[pool]


def test_capacity_holds_per_pool_node_and_device_when_demand_exceeds_the_fleet(instance) -> None:
    fleet, deployments, catalog = instance(
        ["{name: a, hardware: nvidia-h100-sxm, nodes: 2, usdPerDeviceHour: 2.5}",
         "{name: b, hardware: nvidia-a100-80g, nodes: 1, usdPerDeviceHour: 1.5}"],
        ["{model: llama-3.1-70b, contextTokens: 16384, traffic: {requestsPerSecond: 400, promptTokens: 1000, "
         "outputTokens: 300}, slo: {tpotSeconds: 0.05}}",
         "{model: llama-3.1-8b, contextTokens: 8192, traffic: {requestsPerSecond: 200, promptTokens: 500, "
         "outputTokens: 200}, slo: {tpotSeconds: 0.03}}"])
    doc = plan(fleet, deployments, catalog)
    _check_capacity(doc, fleet, catalog)
    assert doc.spec.unplaced, "this fleet cannot serve 600 req/s"
    assert sum(doc.status.devices_used.values()) >= 20  # short of capacity: the fleet is used
    assert any("capacity short" in r for u in doc.spec.unplaced for r in u.reasons)


def test_unplaceable_deployment_says_what_would_make_it_fit(instance) -> None:
    fleet, deployments, catalog = instance(
        ["{name: small, hardware: nvidia-l40s, nodes: 1, usdPerDeviceHour: 1.0}"],
        ["{model: glm-4.6, variants: [bf16], contextTokens: 131072, traffic: {requestsPerSecond: 1, "
         "promptTokens: 1000, outputTokens: 200}}"])
    doc = plan(fleet, deployments, catalog)
    assert not doc.spec.assignments
    (u,) = doc.spec.unplaced
    text = " ".join(u.reasons)
    assert "needs" in text and "GB" in text and "To fit" in text


def test_deterministic_and_stable_against_the_previous_plan(instance) -> None:
    pools = ["{name: a, hardware: nvidia-h100-sxm, nodes: 2, usdPerDeviceHour: 2.5}"]
    dep = ("{model: llama-3.1-8b, variants: [bf16], contextTokens: 8192, traffic: {requestsPerSecond: RPS, "
           "promptTokens: 1000, outputTokens: 200}, slo: {tpotSeconds: 0.02}}")
    fleet, deployments, catalog = instance(pools, [dep.replace("RPS", "20")])
    one = plan(fleet, deployments, catalog)
    two = plan(fleet, deployments, catalog)
    assert one.spec == two.spec
    again = plan(fleet, deployments, catalog, previous=one)
    assert diff(one, again) == []
    fleet, deployments, catalog = instance(pools, [dep.replace("RPS", "40")])
    more = plan(fleet, deployments, catalog, previous=one)
    changes = diff(one, more)
    assert changes and all(c.change in ("scaled", "added") for c in changes), changes
    _check_capacity(more, fleet, catalog)
