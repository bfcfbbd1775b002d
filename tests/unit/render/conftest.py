"""Fixtures of the render tests; the helpers live in k8s_support.py (importable by the test modules)."""

from __future__ import annotations

import pytest
from k8s_support import EXAMPLES


@pytest.fixture(params=sorted(EXAMPLES))
def example_name(request: pytest.FixtureRequest) -> str:
    return request.param
