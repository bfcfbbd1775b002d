"""Plan -> replica specs and the local cluster's node layout (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.planner import PlanOptions, plan
from orchestrator.runtime.desired import replica_specs
from orchestrator.runtime.local import layout, node_cpus
from orchestrator.spec import load_catalog

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def local_plan():
    catalog = load_catalog([ROOT / "manifests" / "local"])
    return plan(catalog.fleets["local"], list(catalog.deployments.values()), catalog,
                options=PlanOptions(model_root="/cache/models"))


@pytest.fixture(scope="module")
def maas_plan():
    catalog = load_catalog([ROOT / "manifests" / "fleets" / "maas.yaml", ROOT / "manifests" / "deployments" / "maas.yaml"])
    return plan(catalog.fleets["maas"], list(catalog.deployments.values()), catalog)


def test_every_replica_of_the_plan_gets_a_spec_with_its_assignments_launch(maas_plan):
    specs = replica_specs(maas_plan)
    assignments = maas_plan.spec.assignments
    assert len(specs) == sum(a.replicas for a in assignments)
    assert len({s.id for s in specs}) == len(specs)
    for a in assignments:
        mine = [s for s in specs if s.launch is a.launch]
        assert len(mine) == a.replicas
        pool = next(p for p in maas_plan.spec.pools if p.name == a.pool)
        for s in mine:
            assert s.launch is a.launch
            # Every bundle asks for the profile's resource; together they hold the replica's devices.
            assert sum(b[pool.ray_resource] for b in s.bundles) == a.devices_per_replica
            assert all(b[f"accelerator_type:{pool.accelerator_type}"] > 0 for b in s.bundles)
            assert s.strategy == ("STRICT_PACK" if len(set(s.nodes)) == 1 else "STRICT_SPREAD")
            assert s.weight == a.predicted.capacity_requests_per_second


def test_nodes_are_pinned_only_where_the_cluster_has_them(local_plan):
    unpinned = replica_specs(local_plan)
    assert not any(k.startswith("moxin-node-") for s in unpinned for b in s.bundles for k in b)
    pinned = {s.id: s for s in replica_specs(local_plan, known_nodes={"gpu-emu-0"})}
    gpu = pinned["tiny-chat-bf16-gpu-emu-0"]
    assert gpu.bundles == [{"GPU": 1.0, "accelerator_type:H100": 0.001, "moxin-node-gpu-emu-0": 0.001}]
    assert pinned["tiny-chat-mlx-3bit-mac-emu-0"].bundles == [{"mlx": 1.0, "accelerator_type:M2-Max-64G": 0.001}]
    # Pinning is part of what a replica reserves: a change of it replaces the replica.
    assert gpu.spec_hash != next(s for s in unpinned if s.id == gpu.id).spec_hash


def test_emulated_replicas_run_their_engine_for_the_cpu_from_the_model_root(local_plan):
    specs = {s.labels["engine"]: s for s in replica_specs(local_plan)}
    assert specs["vllm"].launch.platform == "cpu" and specs["vllm"].labels["hardware"] == "nvidia-h100-sxm"
    assert "/cache/models/tiny-llama/bf16" in specs["vllm"].launch.argv
    assert specs["mlx-lm"].request_model == "default_model"
    assert specs["vllm"].request_model == "tiny-chat"
    assert all(s.labels["emulated"] == "true" for s in specs.values())


def test_the_local_cluster_has_one_ray_node_per_fleet_node_with_its_profiles_resources(local_plan):
    nodes = {n.name: n for n in layout(local_plan.spec.pools)}
    assert set(nodes) == {"gpu-emu-0", "mac-emu-0"}
    assert nodes["gpu-emu-0"].num_gpus == 1 and "GPU" not in nodes["gpu-emu-0"].resources
    assert nodes["gpu-emu-0"].resources == {"accelerator_type:H100": 1.0, "moxin-node-gpu-emu-0": 1.0}
    assert nodes["mac-emu-0"].num_gpus == 0
    assert nodes["mac-emu-0"].resources == {"mlx": 1.0, "accelerator_type:M2-Max-64G": 1.0,
                                            "moxin-node-mac-emu-0": 1.0}


def test_two_assignments_of_one_variant_on_one_pool_get_distinct_replica_ids(local_plan):
    """The planner may serve one variant on one pool at two parallelisms: their replicas must not share ids."""
    a = next(x for x in local_plan.spec.assignments if x.engine == "vllm")
    twin = a.model_copy(update={"tensor_parallel": 2})
    plan = local_plan.model_copy(update={"spec": local_plan.spec.model_copy(update={"assignments": [a, twin]})})
    ids = [s.id for s in replica_specs(plan)]
    assert len(ids) == len(set(ids)) == 2 * a.replicas
    assert ids[0].endswith("-tp1-pp1-0") and ids[-1].endswith("-tp2-pp1-0")


@pytest.fixture(scope="module")
def pipeline_plan():
    catalog = load_catalog([ROOT / "manifests" / "examples" / "pipeline-local", ROOT / "manifests" / "local" / "tiny-llama.yaml"])
    return plan(catalog.fleets["pipeline-local"], list(catalog.deployments.values()), catalog,
                options=PlanOptions(model_root="/cache/models"))


def test_a_pipeline_over_two_nodes_is_one_bundle_per_node_spread_with_each_nodes_devices(pipeline_plan):
    (spec,) = replica_specs(pipeline_plan, known_nodes={"pipe-emu-0", "pipe-emu-1"})
    assert spec.strategy == "STRICT_SPREAD" and spec.node_count == 2
    assert spec.nodes == ["pipe-emu-0", "pipe-emu-1"] and spec.node_devices == [[0], [0]]
    assert [b.get(f"moxin-node-{n}") for b, n in zip(spec.bundles, spec.nodes, strict=True)] == [0.001, 0.001]
    argv = list(spec.launch.argv)
    leader, follower = spec.node_argv(argv, 0, "10.0.0.1", 4000), spec.node_argv(argv, 1, "10.0.0.1", 4000)
    assert leader[:len(argv)] == argv and leader[leader.index("--node-rank") + 1] == "0"
    assert follower[2] == "orchestrator.engines.vllm_headless" and follower[follower.index("--node-rank") + 1] == "1"
    assert follower[follower.index("--master-port") + 1] == leader[leader.index("--master-port") + 1] == "4000"


def test_a_replica_on_one_node_runs_its_launch_unchanged(local_plan):
    for spec in replica_specs(local_plan):
        assert spec.node_count == 1 and spec.node_argv(list(spec.launch.argv), 0, "x", 1) == spec.launch.argv


@pytest.mark.parametrize("host, nodes, expected", [
    ([0, 1], 2, [(0,), (1,)]),
    ([0, 1, 2, 3], 3, [(0, 1), (2,), (3,)]),
    ([3, 1, 2, 0], 2, [(0, 1), (2, 3)]),
    ([5], 3, [(5,), (5,), (5,)]),
    ([0, 1], 3, [(0,), (1,), (0,)]),
    ([0, 1], 1, [(0, 1)]),
    ([], 2, [(), ()]),
])
def test_each_emulated_node_gets_its_own_share_of_the_machines_cpus(host, nodes, expected):
    shares = node_cpus(host, nodes)
    assert shares == expected
    if len(host) >= nodes:  # disjoint, and none left out
        assert sorted(c for s in shares for c in s) == sorted(host)


def test_the_local_cluster_pins_its_nodes_only_when_given_the_hosts_cpus(local_plan):
    pinned = layout(local_plan.spec.pools, host_cpus=[0, 1])
    assert [(n.name, n.cpus) for n in pinned] == [("gpu-emu-0", (0,)), ("mac-emu-0", (1,))]
    assert pinned[1].to_json()["cpus"] == [1]
    assert all(n.cpus == () for n in layout(local_plan.spec.pools))
