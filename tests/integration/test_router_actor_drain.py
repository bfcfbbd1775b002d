"""The router actor in a real Ray cluster, started and drained through ``RayCluster`` as the controller does: the
limits of the controller's ``routerLimits`` option reach it, and ``drain_routers`` closes its port at once, then
ends what is still in flight after drainSeconds (here 1 s, shorter than the stream: the client sees no [DONE])."""

from __future__ import annotations

import time

import pytest
import ray

from orchestrator.devtools.sse_server import Behaviour, StaticServer
from orchestrator.runtime.cluster import RayCluster
from tests.unit.runtime.router_support import refused_url, row
from tests.unit.runtime.test_router_faults import StreamReader, refused

pytestmark = pytest.mark.integration


def test_drain_routers_closes_the_actors_port_first_and_honours_its_drain_seconds():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        ray.init(address=cluster.address)
        rc = RayCluster()
        with StaticServer(Behaviour(itl_s=0.1)).run_in_thread() as engine:
            port = int(refused_url().rsplit(":", 1)[1])
            handle = rc.start_router("moxin-router-drain-test", "127.0.0.1", port, None, {"drainSeconds": 1.0})
            (endpoint,) = rc.serve_routers([handle], 60)
            url = endpoint["url"]
            ray.get(handle._take.remote({"deployments": {"d": [row("a", engine.url, "static")]}}))  # no controller here
            reader = StreamReader(url, tokens=50)  # 5 s of tokens
            reader.start()
            assert reader.begun.wait(30) and reader.error is None and not reader.done
            t0 = time.monotonic()
            rc.drain_routers([handle], 30)
            took = time.monotonic() - t0
            assert refused(url)
            reader.join(10)
            assert 1.0 <= took < 3.0 and not reader.done  # cut after drainSeconds: no [DONE]
            assert len(reader.lines) < 50 and b'"code": "router_draining"' in reader.lines[-1]
            print(f"drain_routers returned after {took:.1f} s, the stream cut after {len(reader.lines)} lines")
            rc.kill(handle)
    finally:
        ray.shutdown()
        cluster.shutdown()
