"""``Plan``: the planner's answer and the contract with the runtime and the renderers.

A Plan is written by ``planner.plan()`` and read by the Ray runtime (``runtime/desired.py``), the Helm and
KubeRay renderers and ``moxin plan --diff``/``--previous``. It is a document like the others: typed, frozen,
camelCase in YAML, loaded through the ordinary loader (file:line:field errors), so nothing downstream reads it
through string keys. ``EngineLaunch`` is here too: it is plain data (argv, env, probes) that
``engines/launch.py`` builds and every runtime starts engines from; and ``PlanOptions``, how the planner searches
(plain data, here so that the CLI generates ``moxin plan``'s flags from it without loading the solver).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from orchestrator.spec.base import (
    MAX_DEVICES_PER_NODE,
    MAX_NODES_PER_POOL,
    MAX_REPLICAS,
    Document,
    EnvName,
    FiniteFloat,
    HostAddress,
    ImageRef,
    ModelName,
    Name,
    Strict,
)
from orchestrator.spec.defaults import MODEL_ROOT
from orchestrator.spec.deployment import Slo
from orchestrator.spec.engine import EngineName
from orchestrator.spec.hardware import RayResources

_OMIT_NONE: Any = Field(None, exclude_if=lambda v: v is None)

METRIC_LABELS = ("deployment", "model", "variant", "pool", "hardware", "engine", "emulated")
"""The labels every moxin metric and Prometheus target carries: the schema of the router's, the controller's
and (through file_sd) the engines' series, and of the router's routing table."""
Objective = Literal["cost"]
"""What the planner minimises after serving the most demand."""


class EngineLaunch(Strict):
    """Everything needed to start one engine replica: an argv list (never a shell string), environment,
    port, probes and the readiness budget."""

    engine: EngineName
    """Serving engine."""
    platform: str = Field(min_length=1)
    """Engine platform (vLLM's platform or plugin: 'cuda', 'mlu', 'cpu', ...; 'mlx' / 'mlx-cpu' for mlx-lm)."""
    argv: list[str] = Field(min_length=1)
    """Command line; 'python3' as the first word names the interpreter of the image or node."""
    env: dict[EnvName, str] = Field(default_factory=dict)
    """Environment variables the engine needs (plugins, CPU KV space, ...)."""
    port: int = Field(ge=1, le=65535)
    """Port the engine listens on (the argv's --port); runtimes may pick another with ``with_port``."""
    health_path: str
    """HTTP path answering 200 when the engine is up."""
    metrics_path: str | None
    """HTTP path of Prometheus metrics; null for engines that export none (mlx-lm)."""
    readiness_timeout_seconds: int = Field(gt=0)
    """Budget to become ready: engine start-up plus loading one device's weights."""
    image: ImageRef | None
    """Container image of the engine, where the hardware profile names one."""
    visibility_env: EnvName | None
    """Variable that selects the devices the engine sees (e.g. CUDA_VISIBLE_DEVICES); null where none."""
    served_model_name: str
    """Model name the engine serves under."""
    request_model: str
    """Model name a request must carry to reach this engine: the served name on vLLM; 'default_model' on
    mlx-lm, which loads whatever a request names ('default_model' is the checkpoint it started with)."""
    model_path: str
    """Where the engine reads the weights."""
    notes: list[str] = Field(default_factory=list)
    """What a reader should know about this launch (forced launches, defaults chosen)."""

    def with_port(self, port: int) -> EngineLaunch:
        """The same launch listening on another port (the runtime picks free ports per replica)."""
        argv = list(self.argv)
        argv[argv.index("--port") + 1] = str(port)
        return self.model_copy(update={"argv": argv, "port": port})

    def with_host(self, host: str) -> EngineLaunch:
        """The same launch listening on another address (the argv's --host), e.g. loopback only for an engine
        that authenticates nobody and is reached through the replica's proxy."""
        argv = list(self.argv)
        argv[argv.index("--host") + 1] = host
        return self.model_copy(update={"argv": argv})

    def env_for(self, devices: list[int]) -> dict[str, str]:
        """The environment of a replica that owns these device indices."""
        if self.visibility_env is None:
            return dict(self.env)
        return {**self.env, self.visibility_env: ",".join(str(d) for d in devices)}


class Placement(Strict):
    replica: int = Field(ge=0, lt=MAX_REPLICAS)
    """Replica index within its assignment."""
    stage: int = Field(ge=0)
    """Pipeline stage of the replica held on this node."""
    node: HostAddress
    """Node name (the pool's addresses where the fleet lists them, else '<pool>-<i>')."""
    devices: list[Annotated[int, Field(ge=0, lt=MAX_DEVICES_PER_NODE)]]
    """Device indices on the node."""


class Predicted(Strict):
    capacity_requests_per_second: FiniteFloat | None
    """Requests/s one replica serves within the SLO."""
    batch: int = Field(ge=1)
    """Concurrent sequences per replica that capacity assumes."""
    decode_tokens_per_second: FiniteFloat | None
    """Decode tokens/s per sequence at that batch."""
    ttft_seconds: FiniteFloat | None
    """Predicted time to first token."""
    tpot_seconds: FiniteFloat | None
    """Predicted time per output token."""
    measured_by: Name | None = _OMIT_NONE
    """The Benchmark document these figures were read from (its curve, at ``batch``; TTFT and TPOT are its p95);
    absent: predicted from the datasheet roofline."""
    calibrated_from: Name | None = _OMIT_NONE
    """The Benchmark the roofline's bandwidth efficiency was fitted to, where one was (estimate/fit.py)."""


class Alternative(Strict):
    candidate: str
    """The alternative (variant, pool, parallelism)."""
    replicas: int = Field(ge=0)
    """Replicas it would need alone."""
    cost_usd_per_hour: FiniteFloat | None
    """What it would cost alone; null on an unpriced pool."""
    note: str
    """Why it was not chosen."""


class Rejection(Strict):
    variant: str
    """Variant rejected."""
    pool: str
    """Pool it was rejected on."""
    kind: str
    """Class of the reason (unsupported, does-not-fit, slo, ...)."""
    reason: str
    """The reason, with what would change it."""


class Why(Strict):
    binding: Literal["tpot-slo", "ttft-slo", "kv-memory", "max-num-seqs", "measured-range"]
    """What bounds the batch of one replica ('measured-range': the highest concurrency a Benchmark measured
    still meets the SLO, and nothing above it is assumed)."""
    summary: str
    """One line: replicas, capacity, what set the count."""
    alternatives: list[Alternative] = Field(default_factory=list)
    """The cheapest candidates not chosen, with why."""
    rejected: list[Rejection] = Field(default_factory=list)
    """Some of the candidates rejected before solving, with why."""


class Assignment(Strict):
    """Replicas of one deployment on one pool, with one variant and parallelism."""

    deployment: Name
    """The ModelDeployment served."""
    model: ModelName
    """Its model."""
    variant: Name
    """The variant chosen."""
    pool: Name
    """The pool the replicas run on."""
    hardware: Name
    """The pool's hardware profile (as declared, also for emulated pools)."""
    engine: EngineName
    """Serving engine."""
    tensor_parallel: int = Field(ge=1)
    """Tensor-parallel degree."""
    pipeline_parallel: int = Field(ge=1)
    """Pipeline stages."""
    replicas: int = Field(ge=0, le=MAX_REPLICAS)
    """Replica count."""
    devices_per_replica: int = Field(ge=1)
    """Devices one replica holds (tp x pp)."""
    emulated: bool
    """The pool is emulated: planned as its hardware, run on CPU."""
    placements: list[Placement] = Field(default_factory=list)
    """Node and devices of each replica's stages."""
    predicted: Predicted
    """What one replica is predicted to deliver."""
    cost_usd_per_hour: FiniteFloat | None
    """Cost of all the replicas; null on an unpriced pool."""
    why: Why
    """Why this assignment, and what else was considered."""
    launch: EngineLaunch
    """How each replica's engine starts."""

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        """(deployment, variant, pool, tp, pp): what identifies an assignment across plans."""
        return self.deployment, self.variant, self.pool, self.tensor_parallel, self.pipeline_parallel

    @property
    def label(self) -> str:
        return f"{self.deployment}: {self.variant} on {self.pool} (tp={self.tensor_parallel} pp={self.pipeline_parallel})"

    def metric_labels(self) -> dict[str, str]:
        """This assignment's values of ``METRIC_LABELS`` (booleans as 'true'/'false', as Prometheus shows them)."""
        values = self.model_dump(include=set(METRIC_LABELS))
        return {k: str(values[k]).lower() if k == "emulated" else str(values[k]) for k in METRIC_LABELS}

    def stages(self) -> dict[int, list[Placement]]:
        """Each replica's placements in stage order, by replica index."""
        out: dict[int, list[Placement]] = {}
        for p in sorted(self.placements, key=lambda p: (p.replica, p.stage)):
            out.setdefault(p.replica, []).append(p)
        return out

    def nodes_per_replica(self) -> int:
        """How many nodes one replica spans (its pipeline stages on distinct nodes), at least 1."""
        return max((len({p.node for p in ps}) for ps in self.stages().values()), default=1)


def assignment_names(assignments: list[Assignment]) -> list[str]:
    """One name per assignment, ``<deployment>-<variant>-<pool>``, with ``-tp<T>-pp<P>`` appended where two
    assignments would otherwise share it (the same variant on one pool at two parallelisms). Replica ids and
    Kubernetes object names are made from it, each through its naming rule (``spec.names``)."""
    base = [f"{a.deployment}-{a.variant}-{a.pool}" for a in assignments]
    return [b if base.count(b) == 1 else f"{b}-tp{a.tensor_parallel}-pp{a.pipeline_parallel}"
            for a, b in zip(assignments, base, strict=True)]


class PlanPool(Strict):
    """A pool of the fleet as the runtime and the renderers need it."""

    name: Name
    """Pool name."""
    hardware: Name
    """Hardware profile of its nodes."""
    nodes: int = Field(ge=0, le=MAX_NODES_PER_POOL)
    """Number of nodes."""
    devices_per_node: int = Field(ge=1, le=MAX_DEVICES_PER_NODE)
    """Devices per node."""
    node_names: list[HostAddress]
    """Node names the placements refer to."""
    addresses: list[HostAddress] | None
    """Machine addresses, where the fleet lists them."""
    emulated: bool
    """Run on CPU while planned as its hardware."""
    ray_resource: str = Field(min_length=1)
    """Ray resource one device counts as."""
    accelerator_type: str = Field(min_length=1)
    """Ray's accelerator_type of the hardware."""

    @property
    def ray(self) -> RayResources:
        return RayResources(resource=self.ray_resource, accelerator_type=self.accelerator_type)


class Unplaced(Strict):
    deployment: Name
    """The deployment not (fully) served."""
    served_requests_per_second: FiniteFloat | None
    """Requests/s the plan serves of it."""
    demand_requests_per_second: FiniteFloat
    """Requests/s it asks for."""
    reasons: list[str]
    """Why, and what would change it."""


class PlanSpec(Strict):
    fleet: Name
    """The Fleet planned for."""
    objective: Objective = "cost"
    """What the solver minimised after serving the most demand."""
    pools: list[PlanPool] = Field(default_factory=list)
    """The fleet's pools."""
    assignments: list[Assignment] = Field(default_factory=list)
    """What runs where."""
    unplaced: list[Unplaced] = Field(default_factory=list)
    """Deployments the plan cannot fully serve."""
    slo: dict[Name, Slo] = Field(default_factory=dict)
    """Each deployment's latency targets, as its ModelDeployment gave them: the thresholds of the dashboards and
    alerts (exported as ``moxin_slo_target_seconds``)."""

    def pool(self, name: str) -> PlanPool | None:
        return next((p for p in self.pools if p.name == name), None)


class PlanStatus(Strict):
    cost_usd_per_hour: FiniteFloat | None
    """Total cost of the priced assignments."""
    served_requests_per_second: FiniteFloat | None
    """Requests/s served, all deployments."""
    demand_requests_per_second: FiniteFloat | None
    """Requests/s asked for, all deployments."""
    solver: str
    """The solver used."""
    solver_status: str
    """Its final status."""
    optimality_gap: FiniteFloat | None
    """Relative gap at which it stopped."""
    solve_seconds: FiniteFloat = Field(ge=0)
    """Solver time."""
    candidates: int = Field(ge=0)
    """Candidates the solver chose among."""
    devices_used: dict[str, int]
    """Devices allocated, by pool."""
    devices_total: dict[str, int]
    """Devices in each pool."""
    unpriced_pools: list[str] | None = _OMIT_NONE
    """Pools used without a price (their cost is left out)."""


class Plan(Document[PlanSpec]):
    kind: Literal["Plan"]
    """'Plan'."""
    spec: PlanSpec
    status: PlanStatus | None = _OMIT_NONE
    """What the solver reported."""

    def to_json(self) -> dict[str, Any]:
        """The document as ``moxin plan -o yaml`` writes it (empty metadata maps left out)."""
        out = self.model_dump(mode="json", by_alias=True)
        for key in ("labels", "annotations"):
            if not out["metadata"][key]:
                del out["metadata"][key]
        return out

    def assignment(self, key: tuple[str, str, str, int, int]) -> Assignment | None:
        return next((a for a in self.spec.assignments if a.key == key), None)


class PlanOptions(Strict):
    """How ``planner.plan()`` searches; ``moxin plan``'s flags are generated from these fields."""

    objective: Objective = "cost"
    """After serving the most demand: least cost."""
    churn_weight: float = Field(0.1, ge=0)
    """Penalty per replica added or removed against the previous plan (--previous), as a fraction of its
    hourly cost (0: ignore the previous plan's replica counts)."""
    gap: float = Field(0.005, ge=0, le=1)
    """Relative optimality gap at which the solver stops."""
    time_limit_s: float = Field(60.0, gt=0)
    """Seconds the solver may take."""
    model_root: str = Field(MODEL_ROOT, min_length=1)
    """Where every node keeps checkpoints: a variant without its own checkpoint is read from
    <root>/<model>/<variant> (a volume mount on Kubernetes, a local cache for `moxin up`)."""
