"""The two ways a multi-node replica runs agree: the chart's LeaderWorkerSet (leader and worker scripts) and the Ray
runtime's replica (one process per placement-group bundle, ``ReplicaSpec.node_argv``) start the same argv on the same
number of nodes with the same devices, for the same plan."""

from __future__ import annotations

import shlex

import pytest
from k8s_support import by_kind, example, rendered

from orchestrator.engines import vllm
from orchestrator.runtime.desired import replica_specs
from orchestrator.runtime.replica import engine_argv

LEADER = "leader.example"


def _pod_argv(container: dict, rank: int) -> list[str]:
    """What ``sh -c SCRIPT ARGS...`` execs in pod ``rank`` of a group, LWS's variables filled in."""
    command = container["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2].replace('"$LWS_LEADER_ADDRESS"', LEADER).replace('"$LWS_WORKER_INDEX"', str(rank))
    words = shlex.split(script.replace('"$0" "$@"', "MOXIN_ARGS"))
    assert words[0] == "exec" and "$" not in " ".join(words)
    out: list[str] = []
    for w in words[1:]:
        out += container.get("args", []) if w == "MOXIN_ARGS" else [w]
    return out


@pytest.mark.parametrize("name", ["pipeline-local", "multinode"])
def test_leaderworkerset_and_ray_replica_run_the_same_argv_on_the_same_nodes_and_devices(name):
    plan, _, _ = example(name)
    values, objects = rendered(name)
    groups = by_kind(objects, "LeaderWorkerSet")
    specs = replica_specs(plan)
    multi = [s for s in specs if s.node_count > 1]
    assert multi, "the example plans a replica across nodes"
    for spec in multi:
        (v,) = [v for v in values["assignments"] if spec.id.startswith(v["id"] + "-")]
        lws = groups[v["id"]]["spec"]["leaderWorkerTemplate"]
        # stages: one pod per bundle (node) of the replica's placement group
        assert lws["size"] == v["groupSize"] == spec.node_count == len(spec.bundles)
        assert spec.strategy == "STRICT_SPREAD"
        # devices: each pod asks for what each bundle reserves, and what the plan put on that node
        resource = next(iter(spec.bundles[0]))
        for bundle, devices in zip(spec.bundles, spec.node_devices, strict=True):
            assert bundle[resource] == v["devicesPerPod"] == len(devices)
        # argv: node rank 0 in the leader pod, rank r in worker pod r, against the same rendezvous
        planned = engine_argv(spec.launch, python="python3")
        (leader,) = lws["leaderTemplate"]["spec"]["containers"]
        (worker,) = lws["workerTemplate"]["spec"]["containers"]
        assert _pod_argv(leader, 0) == spec.node_argv(planned, 0, LEADER, vllm.MASTER_PORT)
        for rank in range(1, spec.node_count):
            assert _pod_argv(worker, rank) == spec.node_argv(planned, rank, LEADER, vllm.MASTER_PORT)
        ray_worker = spec.node_argv(planned, 1, LEADER, vllm.MASTER_PORT)
        assert ray_worker[:3] == ["python3", "-m", vllm.HEADLESS_MODULE]
        assert ray_worker[ray_worker.index("--node-rank") + 1] == "1"


def test_stage_argv_keeps_the_replicas_flags_and_adds_only_the_rendezvous():
    argv = ["python3", "-m", vllm.NEW_MODULE, "--model", "/m", "--pipeline-parallel-size", "2",
            "--distributed-executor-backend", "mp"]
    flags = ["--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1", "--master-port", "29500"]
    assert vllm.stage_argv(argv, node_rank=0, nnodes=2, master_addr="10.0.0.1") == [*argv, *flags]
    follower = vllm.stage_argv(argv, node_rank=1, nnodes=2, master_addr="10.0.0.1", master_port=1234)
    assert follower == ["python3", "-m", vllm.HEADLESS_MODULE, *argv[3:], "--nnodes", "2", "--node-rank", "1",
                        "--master-addr", "10.0.0.1", "--master-port", "1234"]
