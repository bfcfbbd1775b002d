"""What the CLI does with a Ray cluster: connect, create or find the controller, apply a plan, read status and
logs, tear down; and ``up``, the embedded default. Effects only; the decisions live in the controller's pure
parts and the planner.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import MoxinError
from orchestrator.runtime import local, prometheus
from orchestrator.runtime.names import CONTROLLER, HEAD, KV_PLAN, NAMESPACE
from orchestrator.spec.plan import Plan


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MoxinError("Ray is not installed: pip install 'moxin[ray]' (make test installs it)") from None
    return ray


def resolve_address(address: str | None) -> tuple[str, bool]:
    """(address, is the local cluster moxin started). Explicit > $RAY_ADDRESS > the running local cluster."""
    if address:
        return address, False
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], False
    info = local.running()
    if info is None:
        raise MoxinError("no Ray cluster: start the local one with `moxin up`, or pass --address HOST:PORT "
                         "(or set RAY_ADDRESS)")
    return info["address"], True


def connect(address: str) -> Any:
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as exc:
            raise MoxinError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return ray


def controller(address: str, create: bool = False, options: dict[str, Any] | None = None) -> Any:
    ray = connect(address)
    from orchestrator.runtime.controller import Controller

    try:
        return ray.get_actor(CONTROLLER, namespace=NAMESPACE)
    except ValueError:
        if not create:
            raise MoxinError(f"no moxin controller on the Ray cluster at {address}: run `moxin apply` or "
                             "`moxin up` first") from None
    return ray.remote(Controller).options(
        name=CONTROLLER, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_concurrency=16, num_cpus=0, resources=HEAD).remote(options or {})


def apply(address: str, plan: Plan, options: dict[str, Any] | None = None) -> dict[str, Any]:
    ray = connect(address)
    handle = controller(address, create=True, options=options)
    return ray.get(handle.apply.remote(plan, options), timeout=120)


def current_plan(address: str) -> Plan | None:
    """The plan the controller holds (the previous plan of the next apply), or None."""
    connect(address)
    from orchestrator.runtime.cluster import RayCluster

    saved = RayCluster().kv_get(KV_PLAN)
    return None if saved is None else Plan.model_validate(saved)


def status(address: str) -> dict[str, Any]:
    ray = connect(address)
    return ray.get(controller(address).status.remote(), timeout=60)


def set_prometheus_sd(address: str, path: Path) -> None:
    ray = connect(address)
    ray.get(controller(address).set_prometheus_sd.remote(str(path.resolve())), timeout=60)


def logs(address: str, replica: str, tail: int) -> str:
    ray = connect(address)
    try:
        return ray.get(controller(address).logs.remote(replica, tail), timeout=60)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), KeyError) else exc
        raise MoxinError(str(cause).strip("'\"")) from None


def down(address: str | None) -> list[str]:
    """Stop every replica and router and the controller; then the local cluster and its Prometheus, if moxin up
    started them."""
    lines: list[str] = []
    try:
        addr, is_local = resolve_address(address)
    except MoxinError:  # no cluster; a Prometheus `moxin up` left behind still goes
        return ["stopped Prometheus"] if prometheus.stop() else ["nothing is running"]
    ray = connect(addr)
    try:
        handle = ray.get_actor(CONTROLLER, namespace=NAMESPACE)
    except ValueError:
        handle = None
    if handle is not None:
        stopped = ray.get(handle.shutdown.remote(), timeout=180)
        ray.kill(handle, no_restart=True)
        lines.append(f"stopped {len(stopped)} replica(s): {', '.join(stopped) or '-'}")
        lines.append("stopped the controller and router(s)")
    ray.shutdown()
    if is_local and local.stop():
        lines.append("stopped the local Ray cluster")
    if is_local and prometheus.stop():
        lines.append("stopped Prometheus")
    return lines


def wait_ready(address: str, timeout_s: float, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Poll the controller until every desired replica is ready; ``progress`` sees every status."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(address)
        progress(st)
        wanted = [r for r in st["replicas"] if r["desired"]]
        if wanted and all(r["state"] == "ready" for r in wanted) and st["routers"]:
            return st
        if time.monotonic() > deadline:
            raise MoxinError(f"not every replica was ready within {timeout_s:.0f} s; see `moxin status` and "
                             "`moxin logs REPLICA`")
        time.sleep(1.0)


def set_prometheus_url(address: str, url: str | None) -> None:
    """Tell the controller where Prometheus answers queries (rollout gates read it)."""
    ray = connect(address)
    ray.get(controller(address).set_prometheus_url.remote(url), timeout=60)


def rollout(address: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call the controller's ``rollout_<method>``; its refusals (unknown rollout, one already running, ...) come
    back as one-line MoxinErrors."""
    ray = connect(address)
    try:
        return ray.get(getattr(controller(address), f"rollout_{method}").remote(*args, **kwargs), timeout=120)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (KeyError, ValueError)):
            raise MoxinError(str(cause).strip("'\"")) from None
        raise
