"""One worker of ``moxin router --workers`` (``workers.Supervisor`` starts it): serves the listening socket its
parent bound, and its own /metrics socket, with the data plane its spec names. Small on purpose: swapping the
data plane is one line here.

argv[1]: JSON {"plane": "aiohttp" | "fast", "config", "host", "port", "apiKeys" (a path or null), "maxBodyBytes",
"limits" (``RouterLimits`` as JSON), "listenFd", "metricsFd", "worker"} (paths and numbers: no secret; the
engine key comes from the environment, as for ``moxin router``)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from orchestrator.spec.router import RouterLimits


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    if spec["plane"] == "fast":
        from orchestrator.runtime.fastpath import run_fast_from_config as run
    else:
        from orchestrator.runtime.router import run_from_config as run
    run(Path(spec["config"]), spec["host"], spec["port"],
        api_keys=Path(spec["apiKeys"]) if spec["apiKeys"] else None, max_body_bytes=spec["maxBodyBytes"],
        limits=RouterLimits.model_validate(spec["limits"]), sock=socket.socket(fileno=spec["listenFd"]),
        metrics_sock=socket.socket(fileno=spec["metricsFd"]))


if __name__ == "__main__":
    main(sys.argv[1:])
