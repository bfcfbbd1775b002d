"""The exact choice of replica counts: a MILP solved by HiGHS (``scipy.optimize.milp``).

Variables: x_c replicas of candidate c (integer); s_d demand of deployment d served (continuous);
z_d deployment d placed at all (binary); u_c replicas of c moved against the previous plan.

Constraints:
- coverage: sum_c cap_c x_c >= s_d; s_d <= demand_d z_d;
- replica bounds: min_d z_d <= sum_c x_c <= max_d z_d;
- pool devices: sum_c devices_c x_c <= devices of the pool (exact for packing: tensor-parallel
  groups are powers of two that divide the node, see compat.tp_choices);
- churn: u_c >= |x_c - previous_c|.

Objective, lexicographic: first serve as much demand as possible (sum of served fractions; a
deployment with no traffic counts 1 when placed), then the least cost plus churn penalty. Solved as
one MILP when all demand can be served (the usual case), else as two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from orchestrator.planner.candidates import Candidate

# A device-hour of an unpriced pool is not free: this keeps the solver from spending devices for nothing
# and breaks ties toward fewer devices. Small against any real price.
DEVICE_TIEBREAK_USD = 1e-3


@dataclass(frozen=True)
class Demand:
    name: str
    requests_per_second: float
    min_replicas: int
    max_replicas: int | None


@dataclass(frozen=True)
class Solution:
    replicas: dict[tuple, int]
    served: dict[str, float]
    status: str
    """'optimal', 'time-limit' (feasible, gap reported), 'infeasible'."""
    gap: float
    seconds: float


def solve(demands: list[Demand], candidates: list[Candidate], pool_devices: dict[str, int],
          previous: dict[tuple, int] | None = None, *, churn_weight: float, gap: float,
          time_limit: float) -> Solution:
    """The replica counts (``PlanOptions`` documents churn_weight, gap and time_limit, in seconds)."""
    t0 = time.perf_counter()
    previous = previous or {}
    nd, nc = len(demands), len(candidates)
    d_index = {d.name: i for i, d in enumerate(demands)}
    # Churn: u_c >= |x_c - previous_c| for candidates the previous plan ran; replicas of any other
    # candidate are all new, so their penalty rides on x_c's own cost.
    churn = [i for i, c in enumerate(candidates) if previous.get(c.key)]
    # Columns: x (nc) | s (nd) | z (nd) | u (len(churn))
    n = nc + 2 * nd + len(churn)
    xs, ss, zs, us = 0, nc, nc + nd, nc + 2 * nd

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lo.append(low)
        hi.append(high)

    by_dep: list[list[int]] = [[] for _ in demands]
    for i, c in enumerate(candidates):
        by_dep[d_index[c.deployment]].append(i)
    for j, d in enumerate(demands):
        cs = by_dep[j]
        # coverage: sum cap x - s >= 0
        add([(xs + i, candidates[i].capacity.requests_per_second) for i in cs] + [(ss + j, -1.0)], 0, np.inf)
        # s <= demand z
        add([(ss + j, 1.0), (zs + j, -d.requests_per_second)], -np.inf, 0)
        # min z <= sum x <= max z
        add([(xs + i, 1.0) for i in cs] + [(zs + j, -float(d.min_replicas))], 0, np.inf)
        big = d.max_replicas if d.max_replicas is not None else sum(_ub(candidates[i], pool_devices) for i in cs)
        add([(xs + i, 1.0) for i in cs] + [(zs + j, -float(big))], -np.inf, 0)
    for pool, devices in sorted(pool_devices.items()):
        members = [(xs + i, float(c.devices)) for i, c in enumerate(candidates) if c.pool == pool]
        if members:
            add(members, -np.inf, devices)
    for k, i in enumerate(churn):
        p = previous[candidates[i].key]
        add([(us + k, 1.0), (xs + i, -1.0)], -p, np.inf)  # u >= x - p
        add([(us + k, 1.0), (xs + i, 1.0)], p, np.inf)  # u >= p - x

    lb = np.zeros(n)
    ub = np.full(n, np.inf)
    integrality = np.zeros(n)
    for i, c in enumerate(candidates):
        ub[xs + i] = _ub(c, pool_devices)
        integrality[xs + i] = 1
    for j, d in enumerate(demands):
        ub[ss + j] = d.requests_per_second
        ub[zs + j] = 1
        integrality[zs + j] = 1

    cost = np.zeros(n)
    for i, c in enumerate(candidates):
        price = c.usd_per_hour or 0.0
        # New replicas of a candidate the previous plan did not run are churn too.
        fresh = churn_weight * price if previous and not previous.get(c.key) else 0.0
        cost[xs + i] = price + DEVICE_TIEBREAK_USD * c.devices + fresh
    for k, i in enumerate(churn):
        cost[us + k] = churn_weight * (candidates[i].usd_per_hour or DEVICE_TIEBREAK_USD * candidates[i].devices)

    served = np.zeros(n)
    for j, d in enumerate(demands):
        if d.requests_per_second > 0:
            served[ss + j] = 1.0 / d.requests_per_second
        else:
            served[zs + j] = 1.0
    full = float(len(demands))

    base = coo_array((vals, (rows, cols)), shape=(len(lo), n)).tocsr()
    cons = [LinearConstraint(base, lo, hi)]
    options = {"mip_rel_gap": gap, "time_limit": time_limit, "presolve": True}
    # Phase "all served": served fraction fixed at 1 for every deployment.
    first = milp(cost, constraints=[*cons, LinearConstraint(served.reshape(1, -1), full - 1e-7, np.inf)],
                 integrality=integrality, bounds=Bounds(lb, ub), options=options)
    result = first
    if first.x is None:
        # Capacity is short: the most demand first, then the least cost at that service level.
        most = milp(-served, constraints=cons, integrality=integrality, bounds=Bounds(lb, ub), options=options)
        if most.x is None:
            return Solution({}, {}, "infeasible", 0.0, time.perf_counter() - t0)
        level = float(served @ most.x)
        result = milp(cost, constraints=[*cons, LinearConstraint(served.reshape(1, -1), level - 1e-6, np.inf)],
                      integrality=integrality, bounds=Bounds(lb, ub), options=options)
        if result.x is None:
            result = most
    x = result.x
    replicas = {c.key: int(round(x[xs + i])) for i, c in enumerate(candidates) if round(x[xs + i]) > 0}
    served_rps = {d.name: float(min(d.requests_per_second, sum(
        candidates[i].capacity.requests_per_second * round(x[xs + i]) for i in by_dep[j])))
        for j, d in enumerate(demands)}
    status = "optimal" if result.status == 0 else "time-limit"
    mip_gap = float(getattr(result, "mip_gap", 0.0) or 0.0)
    return Solution(replicas, served_rps, status, mip_gap, time.perf_counter() - t0)


def _ub(c: Candidate, pool_devices: dict[str, int]) -> int:
    return pool_devices.get(c.pool, 0) // c.devices
