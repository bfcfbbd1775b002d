"""The labels of the replica behind a deployment, read from moxin's router (``GET /moxin/routes``). Effects.

A Benchmark describes one replica. Through the router, a deployment served by several replicas mixes their
figures (and sums their throughput), so recording from the router needs the deployment to have exactly one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from orchestrator.errors import MoxinError
from orchestrator.spec.defaults import ROUTES_PATH
from orchestrator.spec.suggest import did_you_mean

Routes = dict[str, list[dict[str, Any]]]
"""{deployment: [{name, weight, labels, inFlight}]}"""


def read_routes(router_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> Routes:
    """The router's table: {deployment: [{name, weight, labels, inFlight}]}."""
    request = urllib.request.Request(router_url.rstrip("/") + ROUTES_PATH,
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        hint = " (is this moxin's router? --from-status needs it)" if exc.code == 404 else ""
        raise MoxinError(f"GET {ROUTES_PATH} answered {exc.code}{hint}") from None
    except (OSError, ValueError) as exc:
        raise MoxinError(f"cannot read the routing table from {ROUTES_PATH}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), dict):
        raise MoxinError(f"{ROUTES_PATH} did not return a routing table")
    return data["deployments"]


def replica_labels(routes: Routes, deployment: str, replica: str | None = None) -> dict[str, str]:
    """The labels of the replica measured: the one named ``replica`` (``--replica``), else the one replica serving
    ``deployment``; an error when there is none or several."""
    rows = routes.get(deployment)
    if rows is None:
        raise MoxinError(f"the router serves no deployment {deployment!r} (to this key); "
                         f"{did_you_mean(deployment, routes)}")
    if replica is not None:
        rows = [r for r in rows if r.get("name") == replica]
        if not rows:
            raise MoxinError(f"deployment {deployment!r} has no ready replica {replica!r}; "
                             f"{did_you_mean(replica, [str(r.get('name')) for r in routes[deployment]])}")
    if len(rows) != 1:
        names = ", ".join(f"{r.get('name')} ({(r.get('labels') or {}).get('hardware', '?')})"
                          for r in rows) or "none"
        raise MoxinError(f"deployment {deployment!r} has {len(rows)} ready replicas ({names}); a Benchmark "
                         "describes one replica: name it with --replica (the router sends the load to it alone)")
    return {str(k): str(v) for k, v in (rows[0].get("labels") or {}).items()}
