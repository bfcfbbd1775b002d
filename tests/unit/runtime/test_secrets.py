"""Where the engine key comes from outside Ray: the environment, else nowhere (engines run unauthenticated).
Inside Ray (the internal KV) it is exercised by the Ray integration tests."""

from __future__ import annotations

import ray

from orchestrator.runtime.secrets import ENGINE_KEY_ENV, engine_key


def test_the_environment_variable_is_the_key(monkeypatch) -> None:
    monkeypatch.setenv(ENGINE_KEY_ENV, "from-a-secret")
    assert engine_key() == "from-a-secret"


def test_outside_ray_without_the_variable_there_is_no_key_and_ray_is_not_started(monkeypatch) -> None:
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    assert engine_key() is None
    assert not ray.is_initialized()
