"""The tiny-chat world the rollout tests share: the local fleet, the tiny model, a two-variant deployment and the
test's own Rollout documents."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import load_catalog
from orchestrator.spec.catalog import Catalog

ROOT = Path(__file__).resolve().parents[3]


def tiny_chat(max_replicas: int) -> str:
    """tiny-chat on bf16 or mlx-3bit, at most ``max_replicas`` replicas."""
    return f"""\
apiVersion: moxin.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: tiny-chat}}
spec:
  model: tiny-llama
  variants: [bf16, mlx-3bit]
  contextTokens: 2048
  traffic: {{requestsPerSecond: 0.5, promptTokens: 200, outputTokens: 64}}
  slo: {{ttftSeconds: 2, tpotSeconds: 0.1}}
  replicas: {{min: 1, max: {max_replicas}}}
"""


def tiny_catalog(folder: Path, rollouts: str, max_replicas: int) -> Catalog:
    """The local fleet, the tiny model, tiny-chat and ``rollouts`` (YAML documents), written to ``folder``."""
    (folder / "docs.yaml").write_text(tiny_chat(max_replicas) + "---\n" + rollouts)
    return load_catalog([ROOT / "manifests/local/fleet.yaml", ROOT / "manifests/local/tiny-llama.yaml",
                         folder / "docs.yaml"])
