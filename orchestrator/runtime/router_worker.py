"""One worker of ``moxin router --workers`` (``workers.Supervisor`` starts it): serves the listening socket its
parent bound, and its own /metrics socket, with the data plane (``dataplane.run_from_config``).

argv[1]: JSON {"config", "host", "port", "apiKeys" (a path or null), "maxBodyBytes",
"limits" (``RouterLimits`` as JSON), "accessLog", "listenFd", "metricsFd", "worker"} (paths and numbers: no secret; the
engine key comes from the environment, as for ``moxin router``)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from orchestrator.spec.router import RouterLimits


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    from orchestrator.runtime.dataplane import run_from_config

    run_from_config(Path(spec["config"]), spec["host"], spec["port"],
                    api_keys=Path(spec["apiKeys"]) if spec["apiKeys"] else None, max_body_bytes=spec["maxBodyBytes"],
                    limits=RouterLimits.model_validate(spec["limits"]), access_log=spec["accessLog"],
                    sock=socket.socket(fileno=spec["listenFd"]), metrics_sock=socket.socket(fileno=spec["metricsFd"]))


if __name__ == "__main__":
    main(sys.argv[1:])
