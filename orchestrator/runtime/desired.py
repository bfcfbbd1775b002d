"""Plan -> the replicas that should run: one frozen ``ReplicaSpec`` per replica of every assignment.

Pure. The runtime never re-derives what the plan already says: the engine argv and env, devices, nodes and
predicted capacity all come from the assignment; this module only names replicas and turns placements into
placement-group bundles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from orchestrator.engines import vllm
from orchestrator.spec.names import slug
from orchestrator.spec.plan import EngineLaunch, Plan, assignment_names

__all__ = ["ReplicaSpec", "replica_id", "replica_specs"]



@dataclass(frozen=True)
class ReplicaSpec:
    id: str
    """Stable name: ``<deployment>-<variant>-<pool>-<index>`` (DNS-1123-ish), unique in a plan."""
    deployment: str
    labels: dict[str, str]
    launch: EngineLaunch
    """The assignment's engine launch, as the plan wrote it."""
    bundles: list[dict[str, float]]
    """One placement-group bundle per pipeline stage (one node each)."""
    strategy: str
    """STRICT_PACK for a replica on one node, STRICT_SPREAD when its pipeline spans nodes."""
    nodes: list[str]
    devices: list[int]
    """Device indices of stage 0, as the plan chose them."""
    weight: float
    """Predicted requests/s of this replica: the router's weight."""
    cost_usd_per_hour: float | None
    spec_hash: str = field(default="")
    batch: int = 1
    """Concurrent sequences the plan assumes for this replica."""
    output_tokens_per_second: float = 0.0
    """Planned decode throughput of this replica (batch x per-sequence decode tokens/s); 0 without a speed."""

    node_devices: list[list[int]] = field(default_factory=list)
    """Device indices on each node of the replica, in bundle order (node rank i runs on bundle i)."""

    @property
    def request_model(self) -> str:
        return self.launch.request_model

    @property
    def node_count(self) -> int:
        return len(self.bundles)

    def node_argv(self, argv: list[str], node_rank: int, master_addr: str, master_port: int) -> list[str]:
        """The argv node ``node_rank`` of this replica runs (``argv``: the launch's, as this node resolves it): the
        launch itself on one node; vLLM's multi-node mode across several (engines/vllm.stage_argv, which the
        LeaderWorkerSet rendering uses too)."""
        if self.node_count == 1:
            return list(argv)
        return vllm.stage_argv(argv, node_rank=node_rank, nnodes=self.node_count, master_addr=master_addr,
                               master_port=master_port)


def replica_id(assignment_name: str, index: int) -> str:
    """``<assignment name>-<index>`` (``spec.plan.assignment_names``: ``<deployment>-<variant>-<pool>``, with the
    parallelism where two assignments share that) through the one naming rule (``spec.names.slug``)."""
    return f"{slug(assignment_name)}-{index}"


def _hash(launch: EngineLaunch, bundles: list[dict[str, float]], strategy: str) -> str:
    """What forces a restart when it changes: the launch (minus the port, which the runtime picks) and the
    resources reserved."""
    body = launch.model_dump(mode="json", by_alias=True, exclude={"port", "notes"})
    text = json.dumps([body, bundles, strategy], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def replica_specs(plan: Plan, known_nodes: set[str] | None = None) -> list[ReplicaSpec]:
    """Every replica of the plan, with Ray resources from the plan's pools. Nodes are pinned
    (a ``moxin-node-<name>`` resource in each bundle) only where ``known_nodes`` holds them: a cluster whose nodes
    were not started with moxin's node resources still runs the plan, placed by Ray."""
    out: list[ReplicaSpec] = []
    ray_of = {p.name: p.ray for p in plan.spec.pools}
    for a, name in zip(plan.spec.assignments, assignment_names(plan.spec.assignments), strict=True):
        ray = ray_of[a.pool]
        labels = a.metric_labels()
        per_replica_cost = None if a.cost_usd_per_hour is None else a.cost_usd_per_hour / max(1, a.replicas)
        for index, stages in sorted(a.stages().items()):
            nodes = [s.node for s in stages]
            # Stages on the same node share one bundle; a pipeline across nodes gets one bundle per node.
            per_node: dict[str, int] = {}
            node_devices: dict[str, list[int]] = {}
            for s in stages:
                per_node[s.node] = per_node.get(s.node, 0) + len(s.devices)
                node_devices.setdefault(s.node, []).extend(s.devices)
            bundles = [ray.bundle(n, node if known_nodes is not None and node in known_nodes else None)
                       for node, n in per_node.items()]
            strategy = "STRICT_PACK" if len(per_node) == 1 else "STRICT_SPREAD"
            out.append(ReplicaSpec(
                id=replica_id(name, index), deployment=a.deployment,
                labels=labels, launch=a.launch, bundles=bundles, strategy=strategy, nodes=nodes,
                devices=list(stages[0].devices), weight=float(a.predicted.capacity_requests_per_second or 1.0),
                cost_usd_per_hour=per_replica_cost, spec_hash=_hash(a.launch, bundles, strategy),
                batch=a.predicted.batch,
                output_tokens_per_second=a.predicted.batch * (a.predicted.decode_tokens_per_second or 0.0),
                node_devices=list(node_devices.values())))
    return out
