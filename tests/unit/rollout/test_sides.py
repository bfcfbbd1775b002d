"""sides_plan: the plan of one moment of a rollout (old side scaled, new side added), and its refusals."""

from __future__ import annotations

import pytest

from orchestrator.planner import plan as make_plan
from orchestrator.rollout.machine import Desired
from orchestrator.rollout.sides import (
    canary_name,
    in_removal_order,
    promoted_plan,
    resized,
    sides_plan,
    split_of,
    stable_assignments,
)
from tests.unit.rollout.rollout_support import tiny_catalog

ROLLOUTS = """\
apiVersion: moxin.dev/v1alpha1
kind: Rollout
metadata: {name: r}
spec:
  deployment: tiny-chat
  from: {variant: bf16}
  to: {variant: mlx-3bit, pool: mac-emu}
  steps: [{setWeight: 50}]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("sides")
    catalog = tiny_catalog(d, ROLLOUTS, max_replicas=4)
    fleet = catalog.fleets["local"]
    dep = catalog.deployments["tiny-chat"]

    def planned(variant: str, pool: str):
        narrowed = dep.model_copy(update={"spec": dep.spec.model_copy(update={"variants": [variant],
                                                                              "pools": [pool]})})
        (a,) = make_plan(fleet, [narrowed], catalog).spec.assignments
        return make_plan(fleet, [narrowed], catalog), a

    running, bf16 = planned("bf16", "gpu-emu")
    running = running.model_copy(update={"spec": running.spec.model_copy(
        update={"assignments": [resized(bf16, 1)]})})
    _, mlx = planned("mlx-3bit", "mac-emu")
    return running, mlx, catalog.rollouts["r"].spec


def _shape(plan):
    return [(a.variant, a.pool, a.replicas, len({p.replica for p in a.placements})) for a in plan.spec.assignments]


def test_the_new_side_is_added_at_the_wanted_size_beside_the_old(world):
    running, canary, spec = world
    assert _shape(sides_plan(running, spec, canary, Desired(1, 1, 10))) == [
        ("bf16", "gpu-emu", 1, 1), ("mlx-3bit", "mac-emu", 1, 1)]
    with pytest.raises(ValueError, match="1 replicas placed, not 2"):
        sides_plan(running, spec, canary, Desired(2, 1, 50))


def test_the_old_side_goes_at_zero_and_the_new_side_is_absent_at_zero(world):
    running, canary, spec = world
    assert _shape(sides_plan(running, spec, canary, Desired(1, 0, 100))) == [("mlx-3bit", "mac-emu", 1, 1)]
    assert sides_plan(running, spec, canary, Desired(0, 1, 0)).spec.assignments == running.spec.assignments
    assert stable_assignments(running, spec) == running.spec.assignments


def test_the_canary_name_and_split_are_the_new_sides_object_name(world):
    running, canary, spec = world
    assert canary_name(running, spec, canary) == "tiny-chat-mlx-3bit-mac-emu"
    split = split_of(running, spec, canary, 10)
    assert (split.deployment, split.canary, split.canary_percent) == (
        "tiny-chat", frozenset({"tiny-chat-mlx-3bit-mac-emu"}), 10)


def test_a_new_side_named_like_a_kept_assignment_is_refused(world):
    running, canary, spec = world
    other = resized(canary, 1)
    both = running.model_copy(update={"spec": running.spec.model_copy(
        update={"assignments": [*running.spec.assignments, other]})})
    with pytest.raises(ValueError, match="share its object name"):
        sides_plan(both, spec, canary, Desired(1, 1, 10))


def test_resizing_keeps_the_first_replicas_and_the_per_replica_cost(world):
    _, canary, _ = world
    priced = canary.model_copy(update={"cost_usd_per_hour": 2.0 * canary.replicas})
    assert resized(priced, canary.replicas).cost_usd_per_hour == pytest.approx(2.0 * canary.replicas)
    none = resized(priced, 0)
    assert (none.replicas, none.placements, none.cost_usd_per_hour) == (0, [], 0.0)


def test_the_promoted_plan_is_the_new_side_alone_at_full_size(world):
    running, canary, spec = world
    assert _shape(promoted_plan(running, spec, canary)) == [("mlx-3bit", "mac-emu", canary.replicas,
                                                             len({p.replica for p in canary.placements}))]


def test_the_old_side_shrinks_first_on_the_new_sides_pool(world):
    running, _, _ = world
    (bf16,) = running.spec.assignments
    elsewhere = bf16.model_copy(update={"pool": "mac-emu"})
    order = in_removal_order([bf16, elsewhere], "mac-emu")
    assert [a.pool for a in order] == ["mac-emu", "gpu-emu"]
