"""Build fleets and deployments from YAML snippets (real documents through the real loader)."""

from __future__ import annotations

import pytest


@pytest.fixture
def instance(tmp_path):
    from orchestrator.spec import load_catalog

    def _build(pools: list[str], deployments: list[str]):
        text = ("apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: test}\nspec:\n  pools:\n"
                + "".join(f"    - {p}\n" for p in pools))
        for i, d in enumerate(deployments):
            text += (f"---\napiVersion: moxin.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: d{i}}}\n"
                     f"spec: {d}\n")
        path = tmp_path / "instance.yaml"
        path.write_text(text)
        catalog = load_catalog([path])
        return catalog.fleets["test"], list(catalog.deployments.values()), catalog

    return _build
