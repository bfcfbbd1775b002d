"""k8s_rollout.run_once against an in-memory API stand-in: a canary bf16 -> mlx-3bit of the tiny model goes
10 -> 50 -> 100, rolls back on a failing gate, and resumes from its ConfigMap after an interruption.

Every object sent is validated strictly (kubernetes-validate, Kubernetes 1.33; CRDs by their schemas).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (the k8s extra)")
pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")
pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is installed by `make test`")

from orchestrator.planner import plan as make_plan
from orchestrator.render.kubernetes import RELEASE
from orchestrator.render.rollout import renderer
from orchestrator.rollout.machine import Phase, SetWeight
from orchestrator.rollout.quality import Generation, compare
from orchestrator.runtime import k8s_rollout
from orchestrator.runtime.k8s_rollout import Target, make_target, run_once, send_command
from orchestrator.runtime.kubernetes import KubernetesError, apply_objects
from tests.unit.rollout.rollout_support import tiny_catalog
from tests.unit.runtime.k8s_api_support import Cluster

NS = "serving"
STABLE, CANARY = "tiny-chat-bf16-gpu-emu", "tiny-chat-mlx-3bit-mac-emu"
STATE = "moxin-rollout-tiny-to-mlx"
ROLLOUTS = """\
apiVersion: moxin.dev/v1alpha1
kind: Rollout
metadata: {name: tiny-to-mlx}
spec:
  deployment: tiny-chat
  from: {variant: bf16}
  to: {variant: mlx-3bit, pool: mac-emu}
  steps:
    - setWeight: 10
    - analysis: {gates: [{metric: quality, intervalSeconds: 60}]}
    - setWeight: 50
    - pause: {}
    - setWeight: 100
  quality: {prompts: builtin, maxTokens: 16, minExactMatch: 0.75}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("rollout")
    catalog = tiny_catalog(d, ROLLOUTS, max_replicas=2)
    fleet = catalog.fleets["local"]
    dep = catalog.deployments["tiny-chat"]
    only_bf16 = dep.model_copy(update={"spec": dep.spec.model_copy(update={"variants": ["bf16"],
                                                                           "pools": ["gpu-emu"]})})
    running = make_plan(fleet, [only_bf16], catalog)  # what runs before the rollout: bf16 on gpu-emu
    rollout = catalog.rollouts["tiny-to-mlx"]
    target = make_target(NS, RELEASE, running, fleet, catalog, rollout.spec,
                         renderer(running, catalog, namespace=NS, fleet=fleet))
    return rollout, target, catalog, fleet


GOOD = Generation("same answer")


def _quality(rollout, passed: bool):
    prompts = ["p1", "p2", "p3", "p4"]
    canary = [GOOD] * 4 if passed else [Generation("other words")] * 4

    def measure(due):
        return {d.index: compare(prompts, [GOOD] * 4, canary, rollout.spec.quality) for d in due}
    return measure


def _drive(cluster, rollout, target, measure, passes, start=1000.0, every=61.0, on_pass=None):
    seen = []
    for i in range(passes):
        done = run_once(cluster, rollout, target, measure=measure, now=start + i * every)
        table = cluster.table()
        seen.append((done.state.phase, table.get("splits", {}).get("tiny-chat", {}).get("canaryPercent")))
        if on_pass:
            on_pass(i, done)
        if done.state.phase.terminal:
            break
    return seen


def test_a_canary_goes_10_50_100_by_the_router_configmap_and_the_old_side_is_pruned(setup):
    rollout, target, *_ = setup
    cluster = Cluster()
    run_once(cluster, rollout, target, now=900.0)  # brings up the canary
    assert cluster.names("Deployment") == ["moxin-router", STABLE, CANARY]
    checksum = cluster.router_checksum()
    table = cluster.table()
    rows = {r["name"]: r for r in table["deployments"]["tiny-chat"]}
    assert rows[CANARY]["side"] == "canary" and "side" not in rows[STABLE]
    assert table["splits"] == {"tiny-chat": {"canaryPercent": 0}}

    def promote_at_the_pause(i, done):
        if done.state.phase == Phase.PAUSED:  # the indefinite pause at 50%: a person promotes
            send_command(cluster, target, "tiny-to-mlx", "promote")

    weights = []

    def each_pass(i, done):
        weights.extend(a.canary_percent for a in done.actions if isinstance(a, SetWeight))
        promote_at_the_pause(i, done)

    seen = _drive(cluster, rollout, target, _quality(rollout, True), 20, on_pass=each_pass)
    assert weights == [10, 50, 100]
    assert [w for _, w in seen if w is not None] == [10, 50]  # the split in the ConfigMap; 100 ends it
    assert seen[-1] == (Phase.SUCCEEDED, None)
    assert cluster.router_checksum() != checksum  # the final table is the new plan's: the routers roll once
    final = cluster.table()
    assert [r["name"] for r in final["deployments"]["tiny-chat"]] == [CANARY]
    assert "splits" not in final and "side" not in final["deployments"]["tiny-chat"][0]
    assert cluster.names("Deployment") == ["moxin-router", CANARY]
    assert ("Deployment", STABLE) in cluster.deleted
    assert cluster.state()["phase"] == "Succeeded"


def test_the_router_is_not_restarted_while_the_split_moves(setup):
    rollout, target, *_ = setup
    cluster = Cluster()
    sums = set()
    _drive(cluster, rollout, target, _quality(rollout, True), 6,
           on_pass=lambda i, d: sums.add(cluster.router_checksum()))
    assert len(sums) == 1 and cluster.table()["splits"]["tiny-chat"]["canaryPercent"] == 50


def test_a_failing_quality_gate_rolls_back_and_removes_the_canary(setup):
    rollout, target, *_ = setup
    cluster = Cluster()
    seen = _drive(cluster, rollout, target, _quality(rollout, False), 10)
    assert (Phase.PROGRESSING, 10) in seen and seen[-1] == (Phase.ROLLED_BACK, None)
    assert cluster.names("Deployment") == ["moxin-router", STABLE]
    assert ("Deployment", CANARY) in cluster.deleted
    table = cluster.table()
    assert [r["name"] for r in table["deployments"]["tiny-chat"]] == [STABLE] and "splits" not in table
    assert "quality" in cluster.state()["message"] or any("quality" in e["message"] for e in cluster.state()["log"])


def test_an_interrupted_pass_resumes_from_the_configmap_without_duplicate_workloads(setup):
    rollout, target, catalog, fleet = setup
    cluster = Cluster()
    _drive(cluster, rollout, target, _quality(rollout, True), 2)  # canary up, weight 10
    assert cluster.table()["splits"]["tiny-chat"]["canaryPercent"] == 10
    before = cluster.state()
    # The next pass saves its state, then dies while applying (a crash of `moxin rollout` between the two).
    cluster.fail_once.add(("ConfigMap", "moxin-router"))
    with pytest.raises(KubernetesError, match="moxin-router"):
        run_once(cluster, rollout, target, measure=_quality(rollout, True), now=1000 + 2 * 61)
    saved = cluster.state()
    assert saved["step"] > before["step"]  # saved before acting
    assert cluster.table()["splits"]["tiny-chat"]["canaryPercent"] == 10  # the effect did not happen
    # A new driver (a restarted `moxin rollout`, a fresh Target) continues from the ConfigMap.
    fresh = Target(NS, RELEASE, target.plan, target.canary, renderer(target.plan, catalog, namespace=NS, fleet=fleet))
    done = run_once(cluster, rollout, fresh, measure=_quality(rollout, True), now=1000 + 3 * 61)
    assert done.state.step >= saved["step"] and done.state.phase != Phase.PENDING
    assert cluster.table()["splits"]["tiny-chat"]["canaryPercent"] == 50
    assert cluster.names("Deployment") == ["moxin-router", STABLE, CANARY]
    canary = cluster.live[("apps/v1", "Deployment", CANARY)]
    assert canary["spec"]["replicas"] == target.canary.replicas
    assert cluster.names("ConfigMap").count(STATE) == 1


def test_a_pass_that_changes_nothing_applies_the_same_objects(setup):
    rollout, target, *_ = setup
    cluster = Cluster()
    cluster.ready_cap[CANARY] = 0  # the canary never becomes ready: the rollout waits at step 0
    first = run_once(cluster, rollout, target, now=1000.0)
    objects = {k: json.dumps(v.get("spec") or v.get("data"), sort_keys=True) for k, v in cluster.live.items()
               if k[1] != "ConfigMap" or k[2] != STATE}
    again = run_once(cluster, rollout, target, now=1010.0)
    assert first.state.weight == again.state.weight == 0 and again.actions == ()
    assert objects == {k: json.dumps(v.get("spec") or v.get("data"), sort_keys=True)
                       for k, v in cluster.live.items() if k[1] != "ConfigMap" or k[2] != STATE}
    assert not cluster.deleted


def test_objects_for_a_rolled_back_state_are_the_running_plans(setup):
    rollout, target, catalog, fleet = setup
    from orchestrator.render.kubernetes import render_objects
    from orchestrator.rollout import machine

    state = machine.start("tiny-to-mlx", rollout.spec, machine.config_for(rollout.spec, 1, 1, 600))
    rolled = machine.State(**{**state.__dict__, "phase": Phase.ROLLED_BACK})
    got = k8s_rollout.objects_for(target, rollout.spec, rolled)
    want = render_objects(target.plan, {"managedBy": "moxin"}, NS, catalog=catalog, fleet=fleet)
    assert got == want


def test_in_replace_mode_the_old_side_makes_room_before_the_new_side_comes_up(setup):
    rollout, target, *_ = setup
    # capacity.check's answer for a pool with room for no new replica beside the old one: replace mode.
    tight = Target(NS, RELEASE, target.plan, target.canary, target.render, fits_beside=(0, 1))
    cluster = Cluster()
    apply_objects(target.render(target.plan, None), namespace=NS, plan_name=target.plan.name, dry_run=False,
                  wait_s=0, client=cluster)  # the running plan
    assert cluster.names("Deployment") == ["moxin-router", STABLE]
    done = run_once(cluster, rollout, tight, now=1000.0)
    assert done.state.config.mode == "replace"
    assert cluster.names("Deployment") == ["moxin-router", CANARY]  # the old replica gave its room in this pass
    assert ("Deployment", STABLE) in cluster.deleted
