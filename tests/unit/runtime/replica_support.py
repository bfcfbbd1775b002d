"""Replicas outside Ray, as unit tests run them: built from a stand-in engine's argv, and whatever they started
stopped afterwards (a guard started after stop() got to it included)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.runtime.desired import ReplicaSpec
from orchestrator.runtime.guard import stop_group
from orchestrator.runtime.replica import Replica
from orchestrator.spec.plan import EngineLaunch


@contextmanager
def replicas(log_dir: Path) -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(argv: list[str], engine: str = "vllm", readiness_s: int = 10) -> Replica:
        launch = EngineLaunch(engine=engine, platform="cpu", argv=argv, port=8000, health_path="/health",
                              metrics_path=None, readiness_timeout_seconds=readiness_s, image=None,
                              visibility_env=None, served_model_name="m", request_model="m", model_path="/m")
        spec = ReplicaSpec(id=f"r{len(made)}", deployment="d", labels={}, launch=launch, bundles=[{"GPU": 1.0}],
                           strategy="STRICT_PACK", nodes=["n-0"], devices=[0], weight=1.0, cost_usd_per_hour=None,
                           spec_hash="h")
        made.append(Replica(spec, str(log_dir), grace_s=2.0))
        return made[-1]

    try:
        yield make
    finally:
        for r in made:
            r.stop()
            r._thread.join(10)
            pidfile = r.log_path.with_suffix(".pid")
            if pidfile.exists():
                stop_group(json.loads(pidfile.read_text())["engine"], 0.0)
