"""One follower node of a multi-node replica: a Ray actor on bundle ``r`` of the replica's placement group that runs
that node's headless vLLM process under a guard.

The replica actor (on bundle 0, node rank 0: the API server) creates one per other bundle, owns it (not detached:
the stage dies with its replica, and with the placement group) and asks it to start, describe and stop its process.
It decides nothing: the replica fails the whole replica when any stage's process is gone. Fencing is the replica's:
the guard watches this node's raylet, and the actor leaves when the raylet is gone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.runtime.guard import alive
from orchestrator.runtime.replica import (
    _node_id,
    _raylet_pid,
    engine_env,
    granted_devices,
    kill_guarded,
    node_ip,
    start_guarded,
)

FENCE_EVERY_S = 1.0


class Stage:
    def __init__(self, replica_id: str, node_rank: int, resource: str, log_dir: str, grace_s: float = 15.0) -> None:
        self.replica_id, self.node_rank, self.resource, self.grace_s = replica_id, node_rank, resource, grace_s
        self.log_path = Path(log_dir) / f"{replica_id}.stage{node_rank}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.host, self.node_id, self.raylet_pid = node_ip(), _node_id(), _raylet_pid()
        self.guard_pid: int | None = None
        self.engine_pid: int | None = None
        self.devices: list[int] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._fence, name=f"stage-{replica_id}-{node_rank}", daemon=True).start()

    def start(self, argv: list[str], env: dict[str, str], visibility_env: str | None) -> dict[str, Any]:
        """Start this node's process (after stopping any earlier one): ``env`` is the replica's, and the devices Ray
        granted this actor are made visible through ``visibility_env``."""
        self.stop()
        self.devices = granted_devices(self.resource) or []
        full = engine_env(dict(os.environ), env)
        if visibility_env and self.devices:
            full[visibility_env] = ",".join(str(d) for d in self.devices)
        pids = start_guarded(argv, full, self.log_path, self.grace_s, self.raylet_pid,
                             f"starting node rank {self.node_rank} of {self.replica_id}")
        with self._lock:
            self.guard_pid, self.engine_pid = pids.get("guard"), pids.get("engine")
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {"nodeRank": self.node_rank, "host": self.host, "nodeId": self.node_id, "devices": self.devices,
                "guardPid": self.guard_pid, "enginePid": self.engine_pid, "actorPid": os.getpid(),
                "alive": self.guard_pid is not None and alive(self.guard_pid), "log": str(self.log_path)}

    def stop(self, grace_s: float | None = None) -> bool:
        with self._lock:
            guard, engine, self.guard_pid, self.engine_pid = self.guard_pid, self.engine_pid, None, None
        kill_guarded(guard, engine, self.grace_s if grace_s is None else grace_s)
        return True

    def _fence(self) -> None:
        """The node's raylet is gone: the guard stops the process; this worker leaves too (Ray gave it up)."""
        while self.raylet_pid is None or alive(self.raylet_pid):
            time.sleep(FENCE_EVERY_S)
        self.stop()
        os._exit(1)
