"""Node placement: which node and which device indices each replica's pipeline stages get.

Pure. Per pool, replicas kept from the previous plan stay where they were when their devices are still
theirs; the rest are packed largest first into aligned blocks (a tensor-parallel group of t devices
takes indices [k*t, (k+1)*t), as NVLink-style topologies want), best fit across nodes. Sizes are powers
of two that divide the node (compat.tp_choices), so largest-first aligned packing always succeeds
when the solver's device count fits the pool; a kept replica that would fragment the pool is moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.spec.fleet import Pool


@dataclass(frozen=True)
class Stage:
    node: str
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    replica: int
    stages: tuple[Stage, ...]


# What the placer needs of a candidate: key, tensor-parallel size, pipeline stages, and how many replicas.
Want = tuple[tuple, int, int, int]


def node_names(pool: Pool) -> list[str]:
    return list(pool.addresses) if pool.addresses else [f"{pool.name}-{i}" for i in range(pool.nodes)]


class _Pool:
    """Free devices per node; untouched nodes wait in order, so a stage looks only at partly used ones."""

    def __init__(self, names: list[str], per_node: int) -> None:
        self.names = names
        self.order = {n: i for i, n in enumerate(names)}
        self.per_node = per_node
        self.free = {n: [True] * per_node for n in names}
        self.count = dict.fromkeys(names, per_node)
        self.partial: set[str] = set()
        self.empty = list(reversed(names))  # pop() gives the first untouched node

    def can(self, node: str, devices: tuple[int, ...]) -> bool:
        row = self.free.get(node)
        return row is not None and all(d < self.per_node and row[d] for d in devices)

    def take(self, node: str, devices: tuple[int, ...]) -> None:
        for d in devices:
            self.free[node][d] = False
        if self.count[node] == self.per_node:  # first use of an untouched node
            if self.empty and self.empty[-1] == node:
                self.empty.pop()
            else:
                self.empty.remove(node)
        self.count[node] -= len(devices)
        if self.count[node]:
            self.partial.add(node)
        else:
            self.partial.discard(node)

    def block(self, node: str, size: int) -> tuple[int, ...] | None:
        row = self.free[node]
        for start in range(0, self.per_node - size + 1, size):
            if all(row[start:start + size]):
                return tuple(range(start, start + size))
        return None

    def place_stage(self, size: int, prefer: str | None) -> Stage | None:
        """Best fit: the preferred node (the replica's previous stage), else the partly used node with the
        fewest free devices that has an aligned block, else the first untouched node."""
        order = sorted((n for n in self.partial if self.count[n] >= size),
                       key=lambda n: (n != prefer, self.count[n], self.order[n]))
        if self.empty:
            order.append(self.empty[-1])
        for node in order:
            devices = self.block(node, size)
            if devices is not None:
                self.take(node, devices)
                return Stage(node, devices)
        return None


def place_pool(pool: Pool, per_node: int, wants: list[Want],
               previous: dict[tuple, list[Placement]] | None = None) -> dict[tuple, list[Placement]]:
    """Placements per candidate key. ``wants``: (key, tp, pp, replicas) for this pool."""
    result = _try(pool, per_node, wants, previous or {})
    if result is None:  # kept replicas fragmented the pool: pack everything afresh
        result = _try(pool, per_node, wants, {})
    if result is None:
        raise AssertionError(f"pool {pool.name}: the solver's replicas do not pack onto its nodes")
    return result


def _try(pool: Pool, per_node: int, wants: list[Want],
         previous: dict[tuple, list[Placement]]) -> dict[tuple, list[Placement]] | None:
    state = _Pool(node_names(pool), per_node)
    out: dict[tuple, list[Placement]] = {key: [] for key, *_ in wants}
    todo: list[tuple[int, tuple, int, int]] = []  # (size, key, pp, count still to place)
    for key, tp, pp, count in wants:
        kept = 0
        for old in previous.get(key, []):
            if kept == count:
                break
            if len(old.stages) == pp and all(len(s.devices) == tp and state.can(s.node, s.devices)
                                             for s in old.stages) and _disjoint(old.stages):
                for s in old.stages:
                    state.take(s.node, s.devices)
                out[key].append(old)
                kept += 1
        todo.append((tp, key, pp, count - kept))
    todo.sort(key=lambda t: (-t[0], t[1]))
    for tp, key, pp, count in todo:
        used = {p.replica for p in out[key]}
        next_id = 0
        for _ in range(count):
            while next_id in used:
                next_id += 1
            stages: list[Stage] = []
            prefer = None
            for _s in range(pp):
                stage = state.place_stage(tp, prefer)
                if stage is None:
                    return None
                stages.append(stage)
                prefer = stage.node
            out[key].append(Placement(next_id, tuple(stages)))
            used.add(next_id)
    for key in out:
        out[key].sort(key=lambda p: p.replica)
    return out


def _disjoint(stages: tuple[Stage, ...]) -> bool:
    seen = [(s.node, d) for s in stages for d in s.devices]
    return len(seen) == len(set(seen))


def place_beside(pool: Pool, per_node: int, kept: dict[tuple, list[Placement]],
                 wants: list[Want]) -> dict[tuple, list[Placement]] | None:
    """Placements for ``wants`` on the devices that ``kept`` (running replicas, by key) leave free, moving none of
    them; None when they do not pack. A rollout asks this of the new side beside the old (rollout/capacity.py)."""
    fixed = [(key, len(ps[0].stages[0].devices), len(ps[0].stages), len(ps)) for key, ps in kept.items() if ps]
    clash = {key for key, *_ in wants} & set(kept)
    if clash:
        raise ValueError(f"keys both kept and wanted: {sorted(clash)}")
    result = _try(pool, per_node, fixed + wants, kept)
    if result is None or any(sorted(result[key], key=lambda p: p.replica) != sorted(ps, key=lambda p: p.replica)
                             for key, ps in kept.items() if ps):
        return None
    return {key: result[key] for key, *_ in wants}
