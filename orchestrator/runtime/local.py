"""The embedded default: a multi-node Ray cluster on this machine, one Ray node per node of the local fleet's
(emulated) pools, each declaring its profile's Ray resources; plus the tiny model the demo serves.

The cluster runs in a daemon process (``python -m orchestrator.runtime.local serve``) that owns every Ray
process through ``ray.cluster_utils.Cluster`` and shuts them all down on SIGTERM; ``moxin down`` sends it.
SIGUSR1 (``restore_nodes``) brings back every node whose raylet has died, with its resources, as a machine that
reboots rejoins its cluster: how the chaos soak (``benchmarks/soak.py``) returns a node it took away.
The emulated nodes share this machine's CPUs: each gets its own share of them (``node_cpus``; its raylet, and so
every process Ray and the replicas start on it, runs pinned to them), as separate machines would. Without that, on
two cores vLLM's CPU worker takes one core (its OpenMP binding) and vLLM's engine core spins on the other while it
waits for the worker (vLLM reserves that core for it), and an mlx-lm engine starting on the other node got 5-25 % of
a core: 30-60 s to start instead of 4 (benchmarks/README.md). The head node (controller, routers) keeps them all.
State (address, daemon pid) lives in ``<home>/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import MoxinError
from orchestrator.output import write_atomic
from orchestrator.runtime.guard import alive
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.formats import FORMATS
from orchestrator.spec.plan import PlanPool

OBJECT_STORE_BYTES = 80 * 2**20  # Ray's minimum is 75 MiB; the demo passes no large objects


def home() -> Path:
    return Path(os.environ.get("MOXIN_HOME") or Path.home() / ".cache" / "moxin")


@dataclass(frozen=True)
class NodeLayout:
    name: str
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]
    cpus: tuple[int, ...] = ()
    """The host CPUs the node runs on (its raylet's affinity); empty: all of them."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "numCpus": self.num_cpus, "numGpus": self.num_gpus, "resources": self.resources,
                "cpus": list(self.cpus)}


def node_cpus(host_cpus: list[int], nodes: int) -> list[tuple[int, ...]]:
    """Each of ``nodes`` emulated nodes' share of ``host_cpus``: contiguous and as even as can be (the first ones
    get one more), or, with fewer CPUs than nodes, one CPU each in turn. Pure."""
    cpus = sorted(host_cpus)
    if not cpus or nodes <= 0:
        return [() for _ in range(max(nodes, 0))]
    if len(cpus) < nodes:
        return [(cpus[i % len(cpus)],) for i in range(nodes)]
    size, extra = divmod(len(cpus), nodes)
    out, start = [], 0
    for i in range(nodes):
        end = start + size + (1 if i < extra else 0)
        out.append(tuple(cpus[start:end]))
        start = end
    return out


def layout(pools: list[PlanPool], cpus_per_node: float = 1.0, host_cpus: list[int] | None = None) -> list[NodeLayout]:
    """One Ray node per fleet node (the head, which runs the controller and router, comes on top), each on its
    share of ``host_cpus`` (None: no pinning). Pure."""
    out = []
    for pool in pools:
        for node in pool.node_names:
            flags, custom = pool.ray.start_flags(pool.devices_per_node, node)  # what `ray start` would get
            out.append(NodeLayout(node, flags.get("num-cpus", cpus_per_node), flags.get("num-gpus", 0.0), custom))
    if host_cpus:
        out = [replace(n, cpus=c) for n, c in zip(out, node_cpus(host_cpus, len(out)), strict=True)]
    return out


def host_cpus() -> list[int] | None:
    """The CPUs this process may run on (Linux), None where that cannot be asked."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


@contextmanager
def pinned(cpus: list[int] | tuple[int, ...]):
    """This thread runs on ``cpus`` meanwhile, and so does every process it starts (affinity is inherited at fork)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- the daemon ---------------------------------------------------------------------------------------------------
def serve(state: Path, nodes: list[dict[str, Any]]) -> None:
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    stop = {"now": False, "restore": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGUSR1, lambda *_: stop.update(restore=True))
    common = {"object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **common})

    def add(n: dict[str, Any]) -> Any:
        with pinned(n.get("cpus") or ()):  # the raylet inherits it, and everything it starts
            return cluster.add_node(num_cpus=n["numCpus"], num_gpus=n["numGpus"], resources=n["resources"],
                                    object_store_memory=OBJECT_STORE_BYTES)

    def raylet_dead(node: Any) -> bool:
        return any(p.process.poll() is not None for p in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET])

    try:
        started = [add(n) for n in nodes]
        cluster.wait_for_nodes()
        write_atomic(state, json.dumps({"address": cluster.address, "pid": os.getpid(), "nodes": nodes}) + "\n")
        print(f"moxin local cluster at {cluster.address}: head + {len(nodes)} node(s)", flush=True)
        while not stop["now"]:
            if stop["restore"]:
                stop["restore"] = False
                started = restore_nodes(cluster, nodes, started, raylet_dead, add)
            time.sleep(0.5)
    finally:
        cluster.shutdown()
        state.unlink(missing_ok=True)


def restore_nodes(cluster: Any, nodes: list[dict[str, Any]], started: list[Any], dead: Any, add: Any) -> list[Any]:
    """Each node whose raylet has died: what is left of its Ray processes is removed and the node is started again
    with the same resources (a new Ray node id). Returns the nodes now running, in ``nodes``' order."""
    out = []
    for n, node in zip(nodes, started, strict=True):
        if dead(node):
            cluster.remove_node(node, allow_graceful=False)
            node = add(n)
            print(f"restored node {n['name']} (its raylet had died)", flush=True)
        out.append(node)
    return out


def running(state: Path | None = None) -> dict[str, Any] | None:
    state = state or home() / "cluster.json"
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return info if alive(info["pid"]) else None


def start(nodes: list[NodeLayout], state: Path | None = None, timeout_s: float = 180.0) -> dict[str, Any]:
    """Start the daemon (or reuse a running one with the same nodes) and return its state."""
    state = state or home() / "cluster.json"
    wanted = [n.to_json() for n in nodes]
    info = running(state)
    if info is not None:
        if info["nodes"] == wanted:
            return info
        raise MoxinError(f"a local moxin cluster with other nodes is running (pid {info['pid']}); "
                         "run `moxin down` first")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.unlink(missing_ok=True)
    log = open(state.with_name("cluster.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.runtime.local", "serve", "--state", str(state),
                             "--nodes", json.dumps(wanted)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MoxinError(f"the local Ray cluster failed to start (exit {proc.returncode}); "
                             f"see {state.with_name('cluster.log')}")
        info = running(state)
        if info is not None:
            return info
        time.sleep(0.5)
    stop(state)
    raise MoxinError(f"the local Ray cluster did not start within {timeout_s:.0f} s; see "
                     f"{state.with_name('cluster.log')}")


def stop(state: Path | None = None, timeout_s: float = 60.0) -> bool:
    """SIGTERM the daemon (it shuts every Ray process down), then SIGKILL its process group if need be."""
    state = state or home() / "cluster.json"
    info = running(state)
    if info is None:
        state.unlink(missing_ok=True)
        return False
    pid = info["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    state.unlink(missing_ok=True)
    return True


def prepare_checkpoints(catalog: Catalog, root: Path) -> list[str]:
    """Generate (once, cached under ``root``) the checkpoints of every deployed model that has none anywhere: the
    embedded default's tiny model. Returns the models it prepared."""
    prepared = []
    for name in sorted({d.spec.model for d in catalog.deployments.values()}):
        model = catalog.model(name)
        if model.spec.architecture and all(v.checkpoint is None for v in model.spec.variants):
            tiny_model(model, {v.name: v.formats["default"] for v in model.spec.variants}, root)
            prepared.append(name)
    return prepared


def tiny_model(model: Any, variants: dict[str, str], root: Path) -> dict[str, Path]:
    """Generate the demo's checkpoints once (cached under ``root``): the HF checkpoint of ``model``'s
    architecture, and an MLX conversion for each MLX variant. ``variants`` maps variant name to its format."""
    from orchestrator.devtools import tiny_model as tm

    arch = model.spec.architecture
    base = root / model.name
    formats = {name: FORMATS[fmt] for name, fmt in variants.items()}
    hf = next((base / name for name, f in formats.items() if f.family != "mlx-affine"), base / "hf")
    if not (hf / "config.json").exists():
        tm.generate(arch.family, hf, layers=arch.layers, hidden=arch.hidden_size, heads=arch.attention_heads,
                    kv_heads=arch.kv_heads, head_dim=arch.head_dim, intermediate=arch.intermediate_size,
                    vocab=arch.vocab_size, max_position=arch.max_position_embeddings)
    for name, f in formats.items():
        if f.family == "mlx-affine" and not (base / name / "config.json").exists():
            tm.convert_mlx(hf, base / name, f.bits, f.group_size or 64)
    return {name: base / name for name in variants}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.runtime.local")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--state", type=Path, required=True)
    s.add_argument("--nodes", required=True)
    args = parser.parse_args(argv)
    serve(args.state, json.loads(args.nodes))


if __name__ == "__main__":
    main()
