"""``plan()``: every deployment placed on the fleet at once — variant, pool, parallelism, replicas, nodes.

Pure: (fleet, deployments, catalog, previous plan) -> a typed ``Plan`` document (``spec/plan.py``, the
contract with the runtime and the renderers). Candidates come from the estimator and the compatibility matrix, the replica
counts from one exact MILP over all deployments together, the nodes and devices from the placer; every
assignment says why it was chosen and what the best alternatives would have cost.

The catalog's Benchmark documents are measurements: a candidate measured exactly takes its capacity from the
curve, other candidates on measured hardware use the efficiency fitted to it (planner/candidates.py). When the
catalog holds any Benchmark, every assignment's why says which of its numbers are measured (and by which
Benchmark) and which are datasheet rooflines; with none, every number is a roofline and the plan is as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.engines.launch import engine_launch
from orchestrator.estimate.fit import fit_benchmarks
from orchestrator.planner.candidates import (
    EMULATION_PROFILE,
    Candidate,
    DeploymentCandidates,
    EstimateCache,
    candidates_for,
    prune_dominated,
    replicas_needed,
)
from orchestrator.planner.place import Placement, Stage, node_names, place_pool
from orchestrator.planner.solve import Demand, solve
from orchestrator.spec import plan as doc
from orchestrator.spec.base import API_VERSION
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.deployment import ModelDeployment
from orchestrator.spec.engine import ENGINE_DEFAULTS
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.plan import PlanOptions

SOLVER = "HiGHS via scipy.optimize.milp"


def plan(fleet: Fleet, deployments: list[ModelDeployment], catalog: Catalog, previous: doc.Plan | None = None,
         options: PlanOptions | None = None) -> doc.Plan:
    options = options or PlanOptions()
    pools = {p.name: p for p in fleet.spec.pools}
    per_node = {p.name: p.devices_per_node or catalog.profile(p.hardware).spec.devices_per_node for p in pools.values()}
    pool_devices = {name: per_node[name] * p.nodes for name, p in pools.items()}
    prev_counts, prev_places = _read_previous(previous)
    benchmarks = list(catalog.benchmarks.values())
    fits = fit_benchmarks(benchmarks, catalog.models, catalog.profiles) if benchmarks else None
    cache = EstimateCache(fits.calibrations if fits else ())
    found: list[DeploymentCandidates] = [candidates_for(d, list(pools.values()), catalog, cache, benchmarks)
                                         for d in deployments]
    keep = frozenset(prev_counts)
    usable = [c for f in found for c in prune_dominated(f.candidates, keep)]
    demands = [Demand(d.name, d.spec.traffic.requests_per_second, d.spec.replicas.min, d.spec.replicas.max)
               for d in deployments]
    sol = solve(demands, usable, pool_devices, prev_counts, churn_weight=options.churn_weight, gap=options.gap,
                time_limit=options.time_limit_s)

    placements: dict[tuple, list[Placement]] = {}
    for name, pool in pools.items():
        wants = [(c.key, c.tp, c.pp, sol.replicas[c.key]) for c in usable if c.pool == name and c.key in sol.replicas]
        if wants:
            placements.update(place_pool(pool, per_node[name], wants, prev_places))

    used = {name: 0 for name in pools}
    for c in usable:
        used[c.pool] += c.devices * sol.replicas.get(c.key, 0)
    assignments, unplaced = [], []
    for d, f in zip(deployments, found, strict=True):
        chosen = [c for c in usable if c.deployment == d.name and c.key in sol.replicas]
        for c in chosen:
            assignments.append(_assignment(d, c, sol.replicas, placements[c.key], f, chosen, used,
                                           pool_devices, catalog, pools[c.pool].emulate, options.model_root,
                                           measured=bool(benchmarks)))
        served = sol.served.get(d.name, 0.0)
        demand = d.spec.traffic.requests_per_second
        count = sum(sol.replicas[c.key] for c in chosen)
        if served + 1e-9 < demand or count < d.spec.replicas.min or (not chosen and demand > 0):
            unplaced.append(doc.Unplaced(deployment=d.name, served_requests_per_second=_r(served),
                                         demand_requests_per_second=demand,
                                         reasons=_unplaced_reasons(d, f, served, used, pool_devices)))
    cost = sum(a.cost_usd_per_hour or 0.0 for a in assignments)
    unpriced = sorted({a.pool for a in assignments if a.cost_usd_per_hour is None})
    status = doc.PlanStatus(
        cost_usd_per_hour=_r(cost), served_requests_per_second=_r(sum(sol.served.values())),
        demand_requests_per_second=_r(sum(d.requests_per_second for d in demands)),
        solver=SOLVER, solver_status=sol.status, optimality_gap=_r(sol.gap),
        solve_seconds=round(sol.seconds, 3), candidates=len(usable),
        devices_used=dict(sorted(used.items())), devices_total=dict(sorted(pool_devices.items())),
        unpriced_pools=unpriced or None)
    return doc.Plan(api_version=API_VERSION, kind="Plan", metadata={"name": fleet.name},
                    spec=doc.PlanSpec(fleet=fleet.name, objective=options.objective,
                                      pools=_pools(fleet, per_node, catalog), assignments=assignments,
                                      unplaced=unplaced, slo=_slos(deployments)),
                    status=status)


def _slos(deployments: list[ModelDeployment]) -> dict[str, doc.Slo]:
    """The latency targets of the deployments that set any."""
    return {d.name: d.spec.slo for d in deployments
            if d.spec.slo.ttft_seconds is not None or d.spec.slo.tpot_seconds is not None}


def _pools(fleet: Fleet, per_node: dict[str, int], catalog: Catalog) -> list[doc.PlanPool]:
    """The fleet's pools as the runtime and renderers need them: node names (the plan's placements refer to
    them), devices, whether emulated, and the Ray resource each node declares."""
    out = []
    for p in fleet.spec.pools:
        ray = catalog.profile(p.hardware).spec.ray
        out.append(doc.PlanPool(name=p.name, hardware=p.hardware, nodes=p.nodes, devices_per_node=per_node[p.name],
                                node_names=node_names(p), addresses=p.addresses, emulated=p.emulate is not None,
                                ray_resource=ray.resource, accelerator_type=ray.accelerator_type))
    return out


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def _assignment(d: ModelDeployment, c: Candidate, replicas_of: dict[tuple, int], placed: list[Placement],
                f: DeploymentCandidates, chosen: list[Candidate], used: dict[str, int], pool_devices: dict[str, int],
                catalog: Catalog, emulate: str | None, model_root: str, measured: bool = False) -> doc.Assignment:
    replicas = replicas_of[c.key]
    model = catalog.model(c.model)
    variant = model.spec.variant(c.variant)
    # An emulated pool is planned as its declared hardware; its engine is launched for what it really runs on.
    profile = catalog.profile(EMULATION_PROFILE[emulate] if emulate else c.hardware)
    multi_node = any(len({s.node for s in p.stages}) > 1 for p in placed)
    launch = engine_launch(model, variant, profile, tp=c.tp, pp=c.pp, context=d.spec.context_tokens,
                           concurrency=c.capacity.batch, kv_dtype=d.spec.kv_cache_dtype, engine=c.engine,
                           served_name=d.name, multi_node=multi_node, model_root=model_root,
                           settings=ENGINE_DEFAULTS)
    cap = c.capacity
    return doc.Assignment(
        deployment=d.name, model=c.model, variant=c.variant, pool=c.pool, hardware=c.hardware,
        engine=c.engine, tensor_parallel=c.tp, pipeline_parallel=c.pp, replicas=replicas,
        devices_per_replica=c.devices, emulated=emulate is not None,
        placements=[doc.Placement(replica=p.replica, stage=i, node=s.node, devices=list(s.devices))
                    for p in placed for i, s in enumerate(p.stages)],
        predicted=doc.Predicted(capacity_requests_per_second=_r(cap.requests_per_second), batch=cap.batch,
                                decode_tokens_per_second=_r(cap.decode_tokens_per_second), ttft_seconds=_r(cap.ttft_s),
                                tpot_seconds=_r(cap.tpot_s), measured_by=cap.measured_by,
                                calibrated_from=None if cap.measured_by else cap.calibrated_from),
        cost_usd_per_hour=None if c.usd_per_hour is None else _r(c.usd_per_hour * replicas),
        why=_why(d, c, replicas, f, chosen, used, pool_devices, replicas_of, measured),
        launch=launch)


def _why(d: ModelDeployment, c: Candidate, replicas: int, f: DeploymentCandidates, chosen: list[Candidate],
         used: dict[str, int], pool_devices: dict[str, int], replicas_of: dict[tuple, int],
         measured: bool = False) -> doc.Why:
    """``measured``: the catalog holds Benchmarks, so the summary says where the capacity comes from."""
    demand = d.spec.traffic.requests_per_second
    cap = c.capacity
    binding = {"tpot-slo": f"the TPOT target of {d.spec.slo.tpot_seconds} s",
               "ttft-slo": f"the TTFT target of {d.spec.slo.ttft_seconds} s",
               "kv-memory": "KV-cache memory", "max-num-seqs": "the engine's sequence limit",
               "measured-range": f"the highest concurrency Benchmark {cap.measured_by} measured"}[cap.binding]
    text = (f"{replicas} x {c.label}: {cap.requests_per_second:.3g} req/s per replica at {cap.batch} concurrent "
            f"sequences (batch bound by {binding})")
    if len(chosen) > 1:
        text += f"; shares {demand:g} req/s with {len(chosen) - 1} other candidate(s)"
    elif demand:
        text += f"; {demand:g} req/s needs {replicas_needed(c, demand)}"
    total_replicas = sum(replicas_of[x.key] for x in chosen)
    if total_replicas == d.spec.replicas.min and total_replicas > min(replicas_needed(x, demand) for x in chosen):
        text += f"; replicas.min ({d.spec.replicas.min}) sets the count, not demand"
    if used[c.pool] == pool_devices[c.pool]:
        text += f"; pool {c.pool} is full ({pool_devices[c.pool]} devices)"
    if measured or cap.measured_by or cap.calibrated_from:
        text += "".join(f"; {part}" for part in (cap.source, *cap.notes))
    text += "".join(f"; {caveat}" for caveat in c.caveats)
    chosen_keys = {x.key for x in chosen}
    total = sum((x.usd_per_hour or 0.0) * replicas_of[x.key] for x in chosen)
    others = []
    for o in f.candidates:
        if o.key in chosen_keys:
            continue
        n = max(replicas_needed(o, demand), d.spec.replicas.min, 1)
        alone = None if o.usd_per_hour is None else o.usd_per_hour * n
        if alone is None:
            note = "unpriced pool"
        elif alone > total + 1e-9:
            note = "costs more"
        elif o.devices * n > pool_devices[o.pool] - used[o.pool] + (o.devices * n if o.pool == c.pool else 0):
            note = "cheaper alone, but its pool lacks free devices"
        elif alone > total - 1e-9:
            note = "costs the same, but rests on uncertain datasheet figures" if o.uncertain and not any(
                x.uncertain for x in chosen) else "costs the same"
        else:
            note = "cheaper alone, but its devices serve other deployments at a lower total cost"
        others.append((alone if alone is not None else float("inf"), o.key,
                       doc.Alternative(candidate=o.label, replicas=n, cost_usd_per_hour=_r(alone), note=note)))
    others.sort(key=lambda t: (t[0], t[1]))
    rejected = sorted({(r.kind, r.variant, r.pool): r.reason for r in f.rejections}.items())[:5]
    return doc.Why(binding=cap.binding, summary=text, alternatives=[o[2] for o in others[:3]],
                   rejected=[doc.Rejection(variant=v, pool=p, kind=k, reason=reason) for (k, v, p), reason in rejected])


def _unplaced_reasons(d: ModelDeployment, f: DeploymentCandidates, served: float, used: dict[str, int],
                      pool_devices: dict[str, int]) -> list[str]:
    demand = d.spec.traffic.requests_per_second
    reasons = []
    if f.candidates:
        best = max(f.candidates, key=lambda c: (c.capacity.requests_per_second / c.devices, c.key))
        missing = demand - served
        n = replicas_needed(best, missing) if missing > 0 else 1
        reasons.append(f"capacity short: {served:.3g} of {demand:g} req/s served. {n} more replica(s) of {best.label} "
                       f"({n * best.devices} devices) would serve the rest; pool {best.pool} has "
                       f"{pool_devices[best.pool] - used[best.pool]} free of {pool_devices[best.pool]}: add nodes "
                       "to it, or allow more pools or variants")
    elif f.rejections and all(r.kind in ("unknown-speed", "unsupported") for r in f.rejections) and any(
            r.kind == "unknown-speed" for r in f.rejections):
        reasons.append("no speed can be predicted where a variant fits: measure it (below), and plan with the "
                       "Benchmark it records")
    else:
        reasons.append("no variant fits any allowed pool under the SLO")
    by_kind: dict[tuple[str, str], str] = {}
    for r in f.rejections:
        by_kind.setdefault((r.variant, r.pool), f"{r.variant} on {r.pool}: {r.reason}")
    reasons += [by_kind[k] for k in sorted(by_kind)]
    return reasons


def _read_previous(previous: doc.Plan | None) -> tuple[dict[tuple, int], dict[tuple, list[Placement]]]:
    """Replica counts and placements of a previous Plan, keyed like candidates."""
    counts: dict[tuple, int] = {}
    places: dict[tuple, list[Placement]] = {}
    if previous is None:
        return counts, places
    for a in previous.spec.assignments:
        counts[a.key] = a.replicas
        places[a.key] = [Placement(r, tuple(Stage(p.node, tuple(p.devices)) for p in ps))
                         for r, ps in sorted(a.stages().items())]
    return counts, places


@dataclass(frozen=True)
class Change:
    """One difference between two plans (``diff``)."""

    assignment: str
    change: str
    """'added', 'removed', 'scaled' (replica count) or 'moved' (a replica's stage on other devices)."""
    replicas_before: int | None = None
    replicas_after: int | None = None
    replica: int | None = None
    stage: int | None = None
    from_: str | None = None
    to: str | None = None

    def to_json(self) -> dict[str, object]:
        names = {"replicas_before": "replicasBefore", "replicas_after": "replicasAfter", "from_": "from"}
        return {names.get(k, k): v for k, v in self.__dict__.items() if v is not None}


def diff(old: doc.Plan | None, new: doc.Plan) -> list[Change]:
    """What moves between two plans: replica counts per assignment and replicas whose devices changed. With no
    old plan, every assignment is added."""
    before = {a.key: a for a in old.spec.assignments} if old is not None else {}
    after = {a.key: a for a in new.spec.assignments}
    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        label = (a or b).label  # type: ignore[union-attr]
        ra, rb = a.replicas if a else 0, b.replicas if b else 0
        if ra != rb:
            changes.append(Change(label, "added" if not a else "removed" if not b else "scaled", ra, rb))
        if a and b:
            pa = {(p.replica, p.stage): (p.node, p.devices) for p in a.placements}
            pb = {(p.replica, p.stage): (p.node, p.devices) for p in b.placements}
            for rep in sorted(set(pa) & set(pb)):
                if pa[rep] != pb[rep]:
                    changes.append(Change(label, "moved", replica=rep[0], stage=rep[1],
                                          from_=f"{pa[rep][0]}{pa[rep][1]}", to=f"{pb[rep][0]}{pb[rep][1]}"))
    return changes
