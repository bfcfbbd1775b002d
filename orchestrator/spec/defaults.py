"""Where moxin's processes listen and read by default: the router's and the controller's ports, an engine's port,
the checkpoint root.

Constants only, at the bottom layer so that every reader can import them: the runtime (the controller's options),
the renderers (KubeRay's head ports, the Helm values' model mount), the planner, the engines' launch and the CLI's
flag defaults.
"""

from __future__ import annotations

ROUTER_PORT = 8000
"""The OpenAI-compatible router the controller starts on the Ray head (``moxin up --port``)."""
CONTROLLER_METRICS_PORT = 9400
"""The controller's Prometheus metrics (``moxin up --metrics-port``)."""
ENGINE_PORT = 8000
"""An engine replica's HTTP port where the runtime picks none (vLLM's own default)."""
MODEL_ROOT = "/models"
"""Where checkpoints live on every node: a variant without its own ``checkpoint`` is read from
``<root>/<model>/<variant>`` (a volume mount on Kubernetes, a local cache for ``moxin up``)."""
ROUTES_PATH = "/moxin/routes"
"""The router's read-only routing table: each deployment's ready replicas with their labels (``moxin bench``)."""
REPLICA_HEADER = "X-Moxin-Replica"
"""A request carrying this header goes to the named replica of its deployment and no other (``moxin bench
--replica``: a Benchmark describes one replica, while a deployment may run on several kinds of hardware)."""
