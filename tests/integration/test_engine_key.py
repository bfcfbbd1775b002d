"""The engine key in a real (local, one-node) Ray cluster: created once in the GCS key-value store and the same for
the driver and every worker; MOXIN_ENGINE_KEY, when set, wins."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`")

from orchestrator.runtime.secrets import ENGINE_KEY_ENV, engine_key  # noqa: E402

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


def test_every_process_of_a_cluster_gets_the_same_engine_key_and_the_environment_wins(local_ray, monkeypatch):
    @ray.remote
    def from_a_worker() -> str | None:
        from orchestrator.runtime.secrets import engine_key as worker_engine_key

        return worker_engine_key()

    first = engine_key()
    assert first and len(first) >= 40
    assert engine_key() == first
    assert ray.get([from_a_worker.remote() for _ in range(2)], timeout=60) == [first, first]
    monkeypatch.setenv(ENGINE_KEY_ENV, "from-a-secret")
    assert engine_key() == "from-a-secret"


def test_outside_ray_and_without_the_variable_there_is_no_engine_key(monkeypatch):
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    assert not ray.is_initialized() and engine_key() is None
