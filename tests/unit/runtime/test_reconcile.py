"""Desired vs observed -> actions (pure)."""

from __future__ import annotations

import pytest

from orchestrator.runtime.desired import ReplicaSpec
from orchestrator.runtime.reconcile import (
    BACKOFF_MAX_S,
    PENDING_DEADLINE_S,
    STOP_TIMEOUT_S,
    Drain,
    Forget,
    Observed,
    Start,
    State,
    Stop,
    Undrain,
    backoff_s,
    decide,
    readiness_budget_s,
    unschedulable,
)
from orchestrator.spec.plan import EngineLaunch

LAUNCH = EngineLaunch(engine="vllm", platform="cpu", argv=["vllm", "--port", "8000"], port=8000, health_path="/health",
                      metrics_path=None, readiness_timeout_seconds=210, image=None, visibility_env=None,
                      served_model_name="m", request_model="m", model_path="/m")


def spec(rid: str, spec_hash: str = "h1") -> ReplicaSpec:
    return ReplicaSpec(id=rid, deployment="d", labels={}, launch=LAUNCH,
                       bundles=[{"GPU": 1.0}],
                       strategy="STRICT_PACK", nodes=["n-0"], devices=[0], weight=1.0, cost_usd_per_hour=None,
                       spec_hash=spec_hash)


def obs(rid: str, state: State = State.READY, spec_hash: str = "h1", draining: float | None = None,
        since: float | None = None) -> Observed:
    return Observed(rid, spec_hash, state, draining, since)


def test_missing_replicas_start_and_healthy_ones_are_left_alone():
    actions = decide([spec("a"), spec("b")], {"a": obs("a")}, {}, now=100.0)
    assert [type(a) for a in actions] == [Start] and actions[0].spec.id == "b"
    assert decide([spec("a")], {"a": obs("a")}, {}, now=100.0) == []
    assert decide([spec("a")], {"a": obs("a", State.STARTING)}, {}, now=100.0) == []


def test_extra_ready_replicas_drain_first_and_stop_after_the_drain_period():
    assert decide([], {"x": obs("x")}, {}, now=100.0) == [Drain("x", "not in the plan")]
    assert decide([], {"x": obs("x", draining=95.0)}, {}, now=100.0, drain_s=10) == []
    assert decide([], {"x": obs("x", draining=85.0)}, {}, now=100.0, drain_s=10) == [Stop("x", "not in the plan")]


def test_a_draining_replica_the_plan_wants_again_unchanged_is_routed_again():
    """A rollout's new side can take the id of a side just removed, inside its drain period: without Undrain the
    replica stayed drained (out of every routing table) and was never stopped nor routed again."""
    assert decide([spec("x")], {"x": obs("x", draining=95.0)}, {}, now=100.0, drain_s=10) == [
        Undrain("x", "wanted again by the plan, unchanged")]
    assert decide([spec("x", spec_hash="h2")], {"x": obs("x", draining=95.0)}, {}, now=100.0, drain_s=10) == []


def test_extra_replicas_that_serve_nothing_stop_at_once():
    assert decide([], {"x": obs("x", State.STARTING)}, {}, now=1.0) == [Stop("x", "not in the plan")]


def test_a_changed_launch_replaces_the_replica_and_a_stopping_one_is_waited_for():
    new = spec("a", spec_hash="h2")
    assert decide([new], {"a": obs("a")}, {}, now=1.0) == [Drain("a", "its launch changed in the plan")]
    assert decide([new], {"a": obs("a", State.STOPPING, spec_hash="")}, {}, now=1.0) == []
    assert decide([new], {}, {}, now=1.0) == [Start(new, "missing")]


@pytest.mark.parametrize("state", [State.DEAD, State.FAILED])
def test_dead_or_failed_replicas_are_stopped_as_failures_and_restarted_after_backoff(state):
    assert decide([spec("a")], {"a": obs("a", state)}, {}, now=1.0) == [Stop("a", f"replica is {state.value}",
                                                                             failed=True)]
    failures = {"a": (3, 100.0)}  # three failures, the last at t=100: backoff 10 s
    assert decide([spec("a")], {}, failures, now=105.0) == []
    started = decide([spec("a")], {}, failures, now=110.0)
    assert started == [Start(spec("a"), "restart after 3 failure(s)")]
    assert decide([spec("a")], {}, {"a": (1, 100.0)}, now=100.0) == [Start(spec("a"), "restart after 1 failure(s)")]
    # A dead replica that is no longer wanted is stopped without counting as a failure to restart.
    assert decide([], {"a": obs("a", state)}, {}, now=1.0) == [Stop("a", f"replica is {state.value}", failed=False)]


def test_the_first_failure_is_replaced_at_once_then_the_backoff_doubles_and_is_capped():
    assert [backoff_s(n) for n in range(6)] == [0.0, 0.0, 5.0, 10.0, 20.0, 40.0]
    assert backoff_s(50) == BACKOFF_MAX_S


def test_a_scale_down_and_a_new_variant_at_once():
    """Plan change: replica b-1 leaves, c-0 (another variant) arrives; a stays untouched."""
    observed = {"a": obs("a"), "b-1": obs("b-1")}
    actions = decide([spec("a"), spec("c-0")], observed, {}, now=50.0)
    assert actions == [Drain("b-1", "not in the plan"), Start(spec("c-0"), "missing")]


def test_a_replica_starting_within_its_readiness_budget_is_left_alone():
    assert readiness_budget_s(spec("a")) == 330.0  # the launch's 210 s and the margin for the supervisor
    for state in (State.STARTING, State.RESTARTING):
        assert decide([spec("a")], {"a": obs("a", state, since=1000.0)}, {}, now=1330.0) == []
    assert decide([spec("a")], {"a": obs("a", State.STARTING)}, {}, now=1e9) == []  # since unknown: no judgement


@pytest.mark.parametrize("state", [State.STARTING, State.RESTARTING])
def test_a_replica_stuck_past_its_readiness_budget_is_stopped_as_a_failure(state):
    """Its supervisor is stuck or gone: it would neither get ready nor report FAILED, so the controller acts."""
    actions = decide([spec("a")], {"a": obs("a", state, since=1000.0)}, {}, now=1412.0)
    assert actions == [Stop("a", f"{state.value} for 412 s, past its readiness budget of 330 s", failed=True)]


def test_a_replica_ready_for_long_is_left_alone_and_one_stuck_but_unwanted_is_stopped_as_unwanted():
    assert decide([spec("a")], {"a": obs("a", State.READY, since=0.0)}, {}, now=1e9) == []
    assert decide([], {"a": obs("a", State.STARTING, since=0.0)}, {}, now=1e9) == [Stop("a", "not in the plan")]


def test_a_stopped_replica_is_forgotten_and_started_again_in_the_same_pass_if_wanted():
    stopping = Observed("a", "", State.STOPPING, since=100.0)
    assert decide([spec("a")], {"a": stopping}, {}, now=101.0) == []  # its stop is still running
    done = Observed("a", "", State.STOPPING, since=100.0, stopped=True)
    assert decide([spec("a")], {"a": done}, {}, now=101.0) == [Forget("a", "stopped"), Start(spec("a"), "missing")]
    assert decide([], {"a": done}, {}, now=101.0) == [Forget("a", "stopped")]
    # Failed once: replaced at once. Failed again: it waits for its backoff, forgotten now, started later.
    assert decide([spec("a")], {"a": done}, {"a": (1, 100.0)}, now=101.0) == [
        Forget("a", "stopped"), Start(spec("a"), "restart after 1 failure(s)")]
    assert decide([spec("a")], {"a": done}, {"a": (2, 100.0)}, now=101.0) == [Forget("a", "stopped")]


def test_a_stop_that_never_returns_is_forgotten_after_the_stop_timeout():
    """E.g. the stop of an actor never created (its placement group waits): nothing answers it."""
    stuck = Observed("a", "", State.STOPPING, since=100.0)
    assert decide([], {"a": stuck}, {}, now=100.0 + STOP_TIMEOUT_S) == []
    assert decide([], {"a": stuck}, {}, now=100.5 + STOP_TIMEOUT_S) == [Forget("a", "stop took over 40 s")]


# -- unschedulable: a replica waiting for its resources past the pending deadline --------------------------------
POOLS = {"mac": ["mac-0", "mac-1"], "gpu": ["gpu-0"]}


def placed(node: str = "mac-0", pool: str = "mac") -> ReplicaSpec:
    return ReplicaSpec(id="r", deployment="chat", labels={"pool": pool, "hardware": "apple-m2-max-64g"},
                       launch=LAUNCH, bundles=[{"mlx": 1.0}], strategy="STRICT_PACK", nodes=[node], devices=[0],
                       weight=1.0, cost_usd_per_hour=None, node_devices=[[0]])


def test_a_replica_is_not_unschedulable_until_it_has_waited_past_the_deadline():
    assert unschedulable(placed(), None, set(), POOLS, now=1000.0) is None  # not waiting
    assert unschedulable(placed(), 1000.0 - PENDING_DEADLINE_S, set(), POOLS, now=1000.0) is None
    assert unschedulable(placed(), 0.0, {"gpu-0"}, POOLS, now=30.0, deadline_s=30.0) is None
    u = unschedulable(placed(), 0.0, {"gpu-0"}, POOLS, now=30.5, deadline_s=30.0)
    assert u is not None and u.id == "r" and u.waiting_s == 30.5


def test_its_planned_node_missing_with_no_other_node_of_the_pool_says_bring_it_back_or_lower_min():
    u = unschedulable(placed(), 0.0, {"gpu-0"}, POOLS, now=200.0)
    assert u.reason == "node mac-0 (pool mac) is not in the Ray cluster; no other node of pool mac is in it"
    assert u.fix.startswith("bring node mac-0 back or add a node of pool mac (ray start --resources "
                            '"$(moxin node-resources -H apple-m2-max-64g --node NAME)")')
    assert "lower replicas.min of deployment chat" in u.fix and "moxin apply" in u.fix
    assert u.to_json() == {"waitingSeconds": 200, "reason": u.reason, "fix": u.fix}


def test_its_planned_node_missing_while_another_node_of_the_pool_is_full_names_that_node():
    u = unschedulable(placed(), 0.0, {"gpu-0", "mac-1"}, POOLS, now=200.0)
    assert u.reason == ("node mac-0 (pool mac) is not in the Ray cluster; no other node of pool mac (mac-1) has 1 "
                        "free device(s) for it")


def test_its_node_present_but_full_says_something_outside_the_plan_holds_the_resources():
    u = unschedulable(placed(), 0.0, {"gpu-0", "mac-0"}, POOLS, now=200.0)
    assert u.reason == ("node mac-0 (pool mac) is in the Ray cluster, but its free resources do not hold STRICT_PACK "
                        "[{'mlx': 1.0}]: something outside the plan holds them")
    assert u.fix.startswith("free them (`ray status`")


def test_no_node_declaring_any_fleet_node_says_how_to_start_the_pools_nodes():
    u = unschedulable(placed(), 0.0, set(), POOLS, now=200.0)
    assert u.reason.startswith("no Ray node declares a fleet node: the plan places it on mac-0 (pool mac)")
    assert u.fix == ('start the pool\'s nodes with its resources: ray start --resources "$(moxin node-resources -H '
                     'apple-m2-max-64g --node mac-0)"')
