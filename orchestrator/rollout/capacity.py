"""Does the new side fit beside the old? The planner's candidates and placer answer, on the running plan.

Pure: (plan, fleet, catalog, rollout) -> ``CapacityCheck``. The new side is the planner's own best replica of the
target variant on the target pool (fewest devices for the deployment's traffic, as ``plan`` would choose), with
as many replicas as the traffic needs (within replicas.min/max). Every replica the plan runs keeps its devices;
``fits_beside[k]`` is how many new replicas the placer packs beside them once the old side has given up k
replicas, in ``removal_order``. All of them at k = 0: *surge* (the new side comes up beside the old); only with
old replicas gone: *replace*, replica by replica (``machine.py``); not even then: *none*, and the reasons say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import InfeasibleError
from orchestrator.estimate.fit import fit_benchmarks
from orchestrator.planner.candidates import Candidate, EstimateCache, candidates_for, replicas_needed
from orchestrator.planner.place import Placement, Stage, place_beside
from orchestrator.rollout.sides import in_removal_order, stable_assignments
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.fleet import Fleet, Pool
from orchestrator.spec.plan import Assignment, Plan, PlanOptions
from orchestrator.spec.rollout import RolloutSpec

CapacityMode = Literal["surge", "replace", "none"]
_NEW = "rollout-new-side"  # the new side's placement key, apart from every assignment's


@dataclass(frozen=True)
class CapacityCheck:
    variant: str
    pool: str
    tensor_parallel: int
    pipeline_parallel: int
    canary_replicas: int
    """New replicas needed to take all the traffic."""
    stable_replicas: int
    """Old replicas running now."""
    fits_beside: tuple[int, ...]
    """``fits_beside[k]``: new replicas that fit beside the old side less its first k replicas in removal_order."""
    removal_order: tuple[tuple[str, int], ...]
    """(assignment label, replica index) of the old side, in the order the runtime removes them in replace mode."""
    mode: CapacityMode
    reasons: tuple[str, ...]


def _one(values: set[str], field: str) -> str:
    if len(values) != 1:
        raise InfeasibleError(f"the old side runs on {len(values)} {field}s ({', '.join(sorted(values))}): the "
                              f"rollout must name 'to.{field}'", [f"set to.{field}"])
    return next(iter(values))


def _placements(a: Assignment) -> list[Placement]:
    return [Placement(r, tuple(Stage(p.node, tuple(p.devices)) for p in ps)) for r, ps in sorted(a.stages().items())]


def _best(candidates: list[Candidate], demand: float, low: int) -> Candidate:
    return min(candidates, key=lambda c: (c.devices * max(replicas_needed(c, demand), low, 1), c.key))


def check(plan: Plan, fleet: Fleet, catalog: Catalog, spec: RolloutSpec) -> CapacityCheck:
    """Whether the rollout's new side fits beside the old one in ``plan`` (see the module docstring)."""
    deployment = catalog.deployments[spec.deployment]
    stable = stable_assignments(plan, spec)
    if not stable:
        raise InfeasibleError(f"the plan runs no replica of {spec.deployment!r} matching 'from'",
                              ["check spec.from against `moxin plan`"])
    variant = spec.to.variant or _one({a.variant for a in stable}, "variant")
    pool_name = spec.to.pool or _one({a.pool for a in stable}, "pool")
    pool = next(p for p in fleet.spec.pools if p.name == pool_name)
    narrowed = deployment.model_copy(update={"spec": deployment.spec.model_copy(
        update={"variants": [variant], "pools": [pool_name]})})
    benchmarks = list(catalog.benchmarks.values())
    fits = fit_benchmarks(benchmarks, catalog.models, catalog.profiles) if benchmarks else None
    found = candidates_for(narrowed, [pool], catalog, EstimateCache(fits.calibrations if fits else ()), benchmarks)
    if not found.candidates:
        raise InfeasibleError(f"{variant} on {pool_name} cannot serve {spec.deployment!r}",
                              [r.reason for r in found.rejections] or ["no candidate"])
    demand = deployment.spec.traffic.requests_per_second
    low, high = deployment.spec.replicas.min, deployment.spec.replicas.max
    best = _best(found.candidates, demand, low)
    needed = max(replicas_needed(best, demand), low, 1)
    reasons = []
    if needed > high:
        reasons.append(f"the traffic needs {needed} replicas of {best.label}; replicas.max caps the new side at "
                       f"{high}")
        needed = high

    per_node = next(p.devices_per_node for p in plan.spec.pools if p.name == pool_name)
    on_pool = [a for a in plan.spec.assignments if a.pool == pool_name and a.replicas > 0]
    removal = [(a, p) for a in in_removal_order(stable, pool_name)
               for p in reversed(_placements(a))]
    fits_beside = []
    for k in range(len(removal) + 1):
        gone = {(removal[i][0].key, removal[i][1].replica) for i in range(k)}
        kept = {a.key: [p for p in _placements(a) if (a.key, p.replica) not in gone] for a in on_pool}
        fits_beside.append(_most(pool, per_node, kept, best, needed))
        if fits_beside[-1] >= needed:
            break
    while len(fits_beside) < len(removal) + 1:  # room only grows as old replicas go
        fits_beside.append(fits_beside[-1])
    label = best.label
    if fits_beside[0] >= needed:
        mode: CapacityMode = "surge"
        reasons.append(f"{needed} x {label} fit beside the {len(removal)} old replicas")
    elif fits_beside[-1] >= needed:
        mode = "replace"
        k = next(i for i, n in enumerate(fits_beside) if n >= needed)
        reasons.append(f"{needed} x {label} do not fit beside the {len(removal)} old replicas ({fits_beside[0]} "
                       f"do): replacing replica by replica, the old side shrinking by {k} in all")
    else:
        mode = "none"
        where = "" if any(a.pool == pool_name for a in stable) else (
            f"; the old side runs on other pools, so removing it frees nothing on {pool_name}")
        reasons.append(f"{needed} x {label} do not fit on {pool_name} even without the old side "
                       f"({fits_beside[-1]} do){where}: add nodes to {pool_name} or choose another pool")
    return CapacityCheck(variant, pool_name, best.tp, best.pp, needed, len(removal), tuple(fits_beside),
                         tuple((a.label, p.replica) for a, p in removal), mode, tuple(reasons))


def _most(pool: Pool, per_node: int, kept: dict[tuple, list[Placement]], c: Candidate, limit: int) -> int:
    """The most new replicas (at most ``limit``) the placer packs beside ``kept``."""
    best = 0
    for n in range(1, limit + 1):
        if place_beside(pool, per_node, kept, [((_NEW, *c.key), c.tp, c.pp, n)]) is None:
            break
        best = n
    return best


def new_side(fleet: Fleet, catalog: Catalog, spec: RolloutSpec, found: CapacityCheck,
             options: PlanOptions | None = None) -> Assignment:
    """The new side as an assignment: the deployment planned alone on the target variant and pool, at the
    parallelism and size ``check`` found, with its engine launch as ``moxin plan`` would write it. Placements are
    the planner's on an empty pool: the runtime places the replicas (Ray's resources), the plan's devices are
    advisory."""
    from orchestrator.planner import plan as make_plan

    deployment = catalog.deployments[spec.deployment]
    size = found.canary_replicas
    narrowed = deployment.model_copy(update={"spec": deployment.spec.model_copy(update={
        "variants": [found.variant], "pools": [found.pool],
        "replicas": deployment.spec.replicas.model_copy(update={"min": size, "max": size})})})
    planned = make_plan(fleet, [narrowed], catalog, options=options)
    ours = [a for a in planned.spec.assignments if a.deployment == spec.deployment and a.replicas > 0]
    if not ours:
        reasons = [r for u in planned.spec.unplaced for r in u.reasons] or ["the planner placed nothing"]
        raise InfeasibleError(f"{found.variant} on {found.pool} cannot be planned for {spec.deployment!r}", reasons)
    return ours[0]
