"""moxin's parameter and byte accounting against checkpoints written by transformers itself."""

from __future__ import annotations

import pytest

from orchestrator.devtools.tiny_model import checkpoint_size
from orchestrator.estimate.parameters import count_parameters, weight_bytes

from .conftest import TINY, load_tiny

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", sorted(TINY))
def test_parameters_and_bf16_bytes_equal_the_checkpoint(tiny_models, tmp_path, name: str) -> None:
    model = load_tiny(tiny_models[name], f"tiny-{name}", tmp_path)
    on_disk = checkpoint_size(tiny_models[name])
    p = count_parameters(model.spec.architecture)
    assert p.total + p.mtp == on_disk.parameters
    assert weight_bytes(model.spec.architecture, model.spec.variant("bf16")) == on_disk.payload_bytes


def test_tiny_models_span_10m_to_500m_parameters(tiny_models) -> None:
    sizes = sorted(checkpoint_size(p).parameters for p in tiny_models.values())
    assert 8e6 < sizes[0] < 20e6 and sizes[-1] > 150e6 and sizes[-1] < 600e6, sizes
