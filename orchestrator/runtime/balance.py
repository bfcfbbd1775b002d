"""Which replica takes the next request: weighted least-load over a deployment's replicas, across pools,
variants and engines. Pure (the router owns the counters; this module only reads them).

A replica's load is (in-flight + 1) / weight, where weight is the plan's predicted capacity in requests/s: an
H100 replica planned for 40 req/s takes about eight times the concurrent requests of a Mac planned for 5 before
the Mac is preferred. A replica whose connection failed is skipped for ``FAILED_COOLDOWN_S`` unless nothing
else is left.
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
    in_flight: int = 0
    failed_until: float = 0.0

    @property
    def load(self) -> float:
        return (self.in_flight + 1) / max(self.weight, 1e-9)


ROW_KEYS = ("name", "url", "requestModel", "weight")


def parse_table(data: Any) -> dict[str, list[dict[str, Any]]]:
    """Check a routing-table document ({"deployments": {name: [rows]}}); ValueError says what is wrong where."""
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), dict):
        raise ValueError('expected an object with "deployments": {NAME: [replica, ...]}')
    return check_deployments(data["deployments"])


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
    labels = row.get("labels")
    if labels is not None and not (isinstance(labels, dict)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise ValueError(f"{where}.labels: expected an object of strings, got {labels!r}")


_HTTP_URL = re.compile(r"^https?://[^/\s?#@]+(/[^\s]*)?$")
"""http(s), a host[:port], an optional path; no credentials, no whitespace."""


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
