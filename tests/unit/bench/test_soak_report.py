"""The chaos soak's verdicts (benchmarks/soak.py), pure: which failed requests are clean retriable errors, which
fault window a request ended in, and what the report calls a problem."""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import FaultResult, Outcome, Report, classify


def result(name: str, injected: float, ended: float, **kw) -> FaultResult:
    return FaultResult(name, "t", injected, recovered_s=kw.pop("recovered_s", 1.0), ended=ended, **kw)


def test_clean_errors_are_allowed_and_a_request_lost_before_it_started_is_a_violation():
    faults = [result("engine", 10.0, 20.0), result("router", 30.0, 40.0)]
    outcomes = [Outcome("ok", 0, 1), Outcome("retriable_503", 9, 11), Outcome("stream_cut", 10, 12),
                Outcome("connect_error", 30, 30.5), Outcome("reset_before_start", 31, 31.1),
                Outcome("dropped_mid_stream", 29, 31.5), Outcome("dropped_mid_stream", 33, 35),
                Outcome("disconnected_before_first_byte", 30.2, 30.4),
                Outcome("disconnected_before_first_byte", 45, 45.1),
                Outcome("http_404", 36, 36.1), Outcome("truncated", 50, 51)]
    got = [(o.cause, window, allowed) for o, window, allowed in classify(outcomes, faults)]
    assert got == [("ok", "steady", True), ("retriable_503", "engine", True), ("stream_cut", "engine", True),
                   ("connect_error", "router", False), ("reset_before_start", "router", False),
                   ("router_killed_mid_stream", "router", True),  # cut within 2 s of the router's SIGKILL
                   ("dropped_mid_stream", "router", False),
                   ("router_killed_before_first_byte", "router", True),  # closed (a FIN) by the killed router
                   ("disconnected_before_first_byte", "steady", False),  # no router was killed then
                   ("http_404", "router", False),
                   ("truncated", "steady", False)]


def test_the_report_names_slow_recoveries_orphans_duplicates_and_an_engine_that_outlived_its_node():
    faults = [result("engine", 0, 10, recovered_s=40.0, engine_start_s=30.0),  # bound 45 s: fine
              result("actor", 10, 20, recovered_s=50.0, engine_start_s=30.0),  # over its bound
              result("rollout", 20, 30, recovered_s=90.0, engine_start_s=30.0, bounded=False),  # no bound
              result("rollout", 25, 30, recovered_s=None, bounded=False),  # never Succeeded
              result("controller", 30, 40, orphans=[123], duplicates={"r": 2}),
              result("node", 40, 50, fenced_s=None), result("router", 50, 60, recovered_s=None)]
    problems = Report([], faults, 60).problems()
    assert problems == ["actor (t): recovered in 50.0 s, bound 45.0 s",
                        "rollout (t): recovered in None s",
                        "controller: orphan engines [123], duplicates {'r': 2}",
                        "node: the lost node's engine outlived its raylet by more than 30 s",
                        "router (t): recovered in None s, bound 15.0 s"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_an_engine_off_its_nodes_cpus_is_a_problem_of_the_fault_after_which_it_was_seen():
    from benchmarks.soak import Cluster

    cluster = Cluster.__new__(Cluster)  # only the local cluster's node layout, no Ray
    mine = sorted(os.sched_getaffinity(0))
    cluster.info = {"nodes": [{"name": "a", "cpus": mine}, {"name": "b", "cpus": [max(mine) + 1]},
                              {"name": "c", "cpus": []}]}
    replicas = [{"id": f"r-{n}", "enginePid": os.getpid(), "nodes": [n]} for n in "abc"]
    misplaced = cluster.misplaced({"replicas": replicas})
    assert misplaced == [f"r-b engine pid {os.getpid()} on CPUs {mine}, its node's are [{max(mine) + 1}]"]
    problems = Report([], [result("engine", 0, 10, misplaced=misplaced)], 10).problems()
    assert problems == [f"engine: {misplaced[0]}"]
