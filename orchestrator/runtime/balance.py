"""Which replica takes the next request: weighted least-load over a deployment's replicas, across pools,
variants and engines. Pure (the router owns the counters; this module only reads them).

A replica's load is (in-flight + 1) / weight, where weight is the plan's predicted capacity in requests/s: an
H100 replica planned for 40 req/s takes about eight times the concurrent requests of a Mac planned for 5 before
the Mac is preferred. A replica whose connection failed is skipped for ``FAILED_COOLDOWN_S`` unless nothing
else is left, and so is a replica marked down by the router's active health checks.

A rollout splits a deployment in two sides: a row may carry ``"side": "canary"`` (absent: stable), and the
table's ``"splits": {NAME: {"canaryPercent": W}}`` sends W% of the deployment's requests to the canary side. The
side is chosen once per request by smooth weighted round-robin (nginx's), so any 100 consecutive requests split
exactly W/100-W; within the side the replica is the weighted least-loaded one. A split applies only while both
sides have rows; a side with no replica left gives its requests to the other. A new split's round-robin starts
with the canary (when W > 0): each router splits only the requests it takes, and started from nginx's zero
weights a router would send its first canary request only after about 50/W of its own, so at low traffic across
several routers the canary would see nothing for a while (and a gate would find too little traffic).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec.plan import METRIC_LABELS

FAILED_COOLDOWN_S = 2.0


@dataclass
class Endpoint:
    name: str
    url: str
    request_model: str
    weight: float
    labels: dict[str, str] = field(default_factory=dict)
    """The metric labels (``spec.plan.METRIC_LABELS``): what a table row gives, "" for what it does not."""
    side: str = "stable"
    """``SIDES``: the stable side or a rollout's canary."""
    in_flight: int = 0
    failed_until: float = 0.0
    down: bool = False
    """Its last active health check failed (routers outside Ray): it gets requests only when no other is up."""

    @property
    def load(self) -> float:
        return (self.in_flight + 1) / max(self.weight, 1e-9)


ROW_KEYS = ("name", "url", "requestModel", "weight")
STABLE, CANARY = "stable", "canary"
SIDES = (STABLE, CANARY)
SPLIT_KEYS = ("canaryPercent",)


def parse_table(data: Any) -> dict[str, list[dict[str, Any]]]:
    """Check a routing-table document ({"deployments": {name: [rows]}, "splits"?: {name: {"canaryPercent": W}}});
    the deployments it holds. ValueError says what is wrong where."""
    return parse_document(data)[0]


def parse_document(data: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, float]]]:
    """Check a routing-table document; its deployments and its splits ({} without any)."""
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), dict):
        raise ValueError('expected an object with "deployments": {NAME: [replica, ...]}')
    unknown = sorted(set(data) - {"deployments", "splits"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}: a routing table has deployments and splits")
    deployments = check_deployments(data["deployments"])
    return deployments, check_splits(data.get("splits") or {}, deployments)


def check_splits(splits: Any, deployments: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Check the splits of a routing table ({name: {"canaryPercent": W}}, W in [0, 100]) against its
    deployments: a split of a deployment the table does not hold is a typo, not a no-op."""
    if not isinstance(splits, dict):
        raise ValueError('splits: expected {NAME: {"canaryPercent": W}}')
    for name, split in splits.items():
        where = f"splits.{name}"
        if name not in deployments:
            raise ValueError(f"{where}: no deployment {name!r} in the table; deployments: {sorted(deployments)}")
        if not isinstance(split, dict) or set(split) != set(SPLIT_KEYS):
            raise ValueError(f'{where}: expected {{"canaryPercent": W}}, got {split!r}')
        w = split["canaryPercent"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= 100:
            raise ValueError(f"{where}.canaryPercent: expected a number in [0, 100], got {w!r}")
    return splits


def check_deployments(deployments: Any) -> dict[str, list[dict[str, Any]]]:
    """Check the deployments of a routing table ({name: [{name, url, requestModel, weight, labels?}]}) before it
    replaces a good one: one bad row would otherwise fail every request of the router that takes it."""
    if not isinstance(deployments, dict):
        raise ValueError("expected {NAME: [replica, ...]}")
    seen: dict[str, str] = {}
    for name, rows in deployments.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"deployments: names must be non-empty strings, got {name!r}")
        if not isinstance(rows, list):
            raise ValueError(f"deployments.{name}: expected a list of replicas")
        for i, row in enumerate(rows):
            where = f"deployments.{name}[{i}]"
            _check_row(where, row)
            if row["name"] in seen:
                raise ValueError(f"{where}.name: replica {row['name']!r} is already in {seen[row['name']]}")
            seen[row["name"]] = where
    return deployments


def _check_row(where: str, row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object {{name, url, requestModel, weight}}, got {type(row).__name__}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    for key in ("name", "requestModel"):
        if not isinstance(row[key], str) or not row[key]:
            raise ValueError(f"{where}.{key}: expected a non-empty string, got {row[key]!r}")
    url = row["url"]
    if not isinstance(url, str) or not _HTTP_URL.match(url):
        raise ValueError(f"{where}.url: expected an http:// or https:// URL with a host, got {url!r}")
    weight = row["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{where}.weight: expected a finite number > 0, got {weight!r}")
    side = row.get("side", STABLE)
    if side not in SIDES:
        raise ValueError(f"{where}.side: expected one of {list(SIDES)} (absent: stable), got {side!r}")
    labels = row.get("labels")
    if labels is not None and not (isinstance(labels, dict)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise ValueError(f"{where}.labels: expected an object of strings, got {labels!r}")


_HTTP_URL = re.compile(r"^https?://[^/\s?#@]+(/[^\s]*)?$")
"""http(s), a host[:port], an optional path; no credentials, no whitespace."""


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.table: dict[str, list[Endpoint]] = {}
        self.splits: dict[str, float] = {}
        """Canary percent per split deployment."""
        self._current: dict[str, dict[str, float]] = {}
        """Smooth weighted round-robin's running weights per split deployment."""
        self.rng = rng or random.Random()

    def update(self, table: dict[str, list[dict[str, Any]]], splits: dict[str, dict[str, float]] | None = None) -> None:
        """Replace the routing table and its splits, keeping the round-robin of splits that stay and the very
        ``Endpoint`` of a replica that stays (same name and URL), its row's fields updated: a request in flight
        holds it and counts itself out of it, so a copy of its counters would never come down."""
        old = {e.name: e for eps in self.table.values() for e in eps}
        new: dict[str, list[Endpoint]] = {}
        for deployment, rows in table.items():
            eps = []
            for r in rows:
                given = r.get("labels") or {}
                labels = {k: str(given.get(k, deployment if k == "deployment" else "")) for k in METRIC_LABELS}
                e = Endpoint(r["name"], r["url"].rstrip("/"), r["requestModel"], float(r["weight"]), labels,
                             r.get("side", STABLE))
                prev = old.get(r["name"])
                if prev is not None and prev.url == e.url:
                    prev.request_model, prev.weight, prev.labels, prev.side = e.request_model, e.weight, labels, e.side
                    e = prev
                eps.append(e)
            new[deployment] = eps
        self.table = new
        percents = {name: float(split["canaryPercent"]) for name, split in (splits or {}).items()}
        self._current = {name: self._current[name] for name in percents
                         if name in self._current and self.splits.get(name) == percents[name]}
        self.splits = percents

    def side(self, deployment: str) -> str | None:
        """The side the next request of the deployment goes to (None: no split in force); call once per request."""
        percent = self.splits.get(deployment)
        if percent is None or {e.side for e in self.table.get(deployment, [])} != set(SIDES):
            return None
        weights = {CANARY: percent, STABLE: 100.0 - percent}
        # The phase that picks the canary first (50 - W/2: above the stable side by W at the first pick when W > 0,
        # never for W = 0); from there it is the same rotation, W canary picks in any 100.
        current = self._current.setdefault(deployment, {CANARY: 50.0 - percent / 2, STABLE: percent / 2 - 50.0})
        for s in SIDES:
            current[s] += weights[s]
        chosen = max(SIDES, key=lambda s: (current[s], s == STABLE))  # a tie goes to stable
        current[chosen] -= 100.0
        return chosen

    def pick(self, deployment: str, exclude: set[str], now: float, side: str | None = None) -> Endpoint | None:
        """The least-loaded replica not excluded, on ``side`` while it has one left (then on the other)."""
        eps = [e for e in self.table.get(deployment, []) if e.name not in exclude]
        if side is not None:
            eps = [e for e in eps if e.side == side] or eps
        if len(eps) < 2:  # one left (healthy or not, it is the one): no load to compare
            return eps[0] if eps else None
        healthy = [e for e in eps if e.failed_until <= now and not e.down] or [e for e in eps if not e.down] or eps
        best = min(e.load for e in healthy)
        return self.rng.choice([e for e in healthy if e.load <= best * (1 + 1e-9)])
