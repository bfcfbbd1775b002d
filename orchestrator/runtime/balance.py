"""Which replica takes the next request: weighted least-load over a deployment's replicas, across pools,
variants and engines. Pure (the router owns the counters; this module only reads them).

A replica's load is (in-flight + 1) / weight, where weight is the plan's predicted capacity in requests/s: an
H100 replica planned for 40 req/s takes about eight times the concurrent requests of a Mac planned for 5 before
the Mac is preferred. A replica whose connection failed is skipped for ``FAILED_COOLDOWN_S`` unless nothing
else is left.
"""

from __future__ import annotations

import random
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
    in_flight: int = 0
    failed_until: float = 0.0

    @property
    def load(self) -> float:
        return (self.in_flight + 1) / max(self.weight, 1e-9)


ROW_KEYS = ("name", "url", "requestModel", "weight")


def parse_table(data: Any) -> dict[str, list[dict[str, Any]]]:
    """Check a routing table ({"deployments": {name: [rows]}}); ValueError says what is wrong where."""
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), dict):
        raise ValueError('expected an object with "deployments": {NAME: [replica, ...]}')
    for name, rows in data["deployments"].items():
        if not isinstance(rows, list):
            raise ValueError(f"deployments.{name}: expected a list of replicas")
        for i, row in enumerate(rows):
            missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
            if missing:
                raise ValueError(f"deployments.{name}[{i}]: missing {', '.join(missing)}")
            if not isinstance(row["weight"], (int, float)) or row["weight"] <= 0:
                raise ValueError(f"deployments.{name}[{i}].weight: expected a number > 0, got {row['weight']!r}")
    return data["deployments"]


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.table: dict[str, list[Endpoint]] = {}
        self.rng = rng or random.Random()

    def update(self, table: dict[str, list[dict[str, Any]]]) -> None:
        """Replace the routing table, keeping the counters of replicas that stay."""
        old = {e.name: e for eps in self.table.values() for e in eps}
        new: dict[str, list[Endpoint]] = {}
        for deployment, rows in table.items():
            eps = []
            for r in rows:
                given = r.get("labels") or {}
                labels = {k: str(given.get(k, deployment if k == "deployment" else "")) for k in METRIC_LABELS}
                e = Endpoint(r["name"], r["url"].rstrip("/"), r["requestModel"], float(r["weight"]), labels)
                if r["name"] in old and old[r["name"]].url == e.url:
                    e.in_flight, e.failed_until = old[r["name"]].in_flight, old[r["name"]].failed_until
                eps.append(e)
            new[deployment] = eps
        self.table = new

    def pick(self, deployment: str, exclude: set[str], now: float) -> Endpoint | None:
        eps = [e for e in self.table.get(deployment, []) if e.name not in exclude]
        if not eps:
            return None
        healthy = [e for e in eps if e.failed_until <= now] or eps
        best = min(e.load for e in healthy)
        return self.rng.choice([e for e in healthy if e.load <= best * (1 + 1e-9)])
