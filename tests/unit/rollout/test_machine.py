"""The rollout state machine, checked on exact action lists and phases, like reconcile.decide."""

from __future__ import annotations

import json

import pytest

from orchestrator.rollout.gates import Readings, SideReading
from orchestrator.rollout.machine import (
    Check,
    Command,
    Config,
    Desired,
    Hold,
    Observation,
    Phase,
    RemoveSide,
    ScaleSide,
    SetWeight,
    State,
    Weight,
    config_for,
    desired,
    due,
    plan_steps,
    spec_digest,
    start,
    status,
    step,
)
from orchestrator.rollout.quality import Generation, compare
from orchestrator.spec.rollout import Quality, RolloutSpec

TTFT = {"metric": "ttftP95", "threshold": {"max": 1}, "intervalSeconds": 60, "count": 2}


def _spec(steps: list | None = None, **more: object) -> RolloutSpec:
    return RolloutSpec.model_validate({"deployment": "chat", "from": {"variant": "bf16"}, "to": {"variant": "fp8"},
                                       **({"steps": steps} if steps is not None else {}), **more})


def _effects(actions: list) -> list:
    """The actions without the decision records (those are checked through the log)."""
    return [a for a in actions if isinstance(a, (ScaleSide, SetWeight, RemoveSide))]


def _go(spec: RolloutSpec, state: State, now: float, ready: int, readings: dict | None = None,
        commands: tuple = ()) -> tuple[State, list]:
    new, actions = step(spec, state, Observation(now, ready, readings or {}, commands))
    again, repeat = step(spec, new, Observation(now, ready, readings or {}, commands))
    assert again == new and repeat == [], "the same observation twice changed something"
    return new, _effects(actions)


def _ttft(value: float, requests: int = 100) -> Readings:
    return Readings(SideReading(requests, value))


CANARY = _spec([{"setWeight": 25}, {"analysis": {"gates": [TTFT]}}, {"pause": {"durationSeconds": 120}},
                {"setWeight": 50}])


def test_canary_walks_its_steps_then_promotes_and_removes_the_old_side() -> None:
    s = start("r", CANARY, Config(stable_replicas=4, canary_replicas=4, deadline_s=900))
    s, acts = _go(CANARY, s, 0, ready=0)
    assert s.phase == Phase.PROGRESSING and s.step == 0
    assert acts == [ScaleSide("canary", 1, "step 0")]  # ceil(4 x 25%) = 1; the old side stays whole
    s, acts = _go(CANARY, s, 30, ready=1)
    assert acts == [SetWeight(25, "step 0: setWeight 25")] and s.step == 1 and s.analysis_started_at == 30
    assert [d.index for d in due(CANARY, s, 89)] == [] and [d.index for d in due(CANARY, s, 90)] == [0]
    s, acts = _go(CANARY, s, 90, ready=1, readings={0: _ttft(0.5)})
    assert acts == [] and s.gates[0].taken == 1 and s.step == 1
    s, _ = _go(CANARY, s, 120, ready=1, readings={0: _ttft(0.5)})  # 30 s after the last: not due, not counted
    assert s.gates[0].taken == 1
    s, acts = _go(CANARY, s, 150, ready=1, readings={0: _ttft(0.9)})
    assert s.step == 2 and s.step_started_at == 150 and acts == []
    s, acts = _go(CANARY, s, 269, ready=1)
    assert s.step == 2
    s, acts = _go(CANARY, s, 270, ready=1)  # the 120 s pause is over: step 3 scales to 2
    assert s.step == 3 and acts == [ScaleSide("canary", 2, "step 3")]
    s, acts = _go(CANARY, s, 300, ready=2)  # step 3 done -> promoting: all 4 replicas, then all traffic
    assert s.phase == Phase.PROMOTING and acts == [SetWeight(50, "step 3: setWeight 50"),
                                                   ScaleSide("canary", 4, "promoting")]
    s, acts = _go(CANARY, s, 400, ready=4)
    assert s.phase == Phase.SUCCEEDED
    assert acts == [SetWeight(100, "promoting: all traffic to the new side"), RemoveSide("stable", "promoted")]
    assert desired(s) == Desired(4, 0, 100)
    assert [d.message for d in s.log][-1] == "succeeded: the old side is removed"


def test_a_failing_gate_past_its_failure_limit_rolls_back() -> None:
    s = start("r", CANARY, Config(4, 4, deadline_s=900))
    s, _ = _go(CANARY, s, 0, ready=0)
    s, _ = _go(CANARY, s, 10, ready=1)
    s, acts = _go(CANARY, s, 70, ready=1, readings={0: _ttft(1.5)})  # failureLimit 0: the first failure
    assert s.phase == Phase.ROLLED_BACK
    assert acts == [SetWeight(0, acts[0].reason), RemoveSide("canary", acts[0].reason)]
    assert "gate ttftP95 failed 1 time(s), limit 0: ttftP95 1.5 > 1" in acts[0].reason
    assert desired(s) == Desired(0, 4, 0)
    s2, acts = _go(CANARY, s, 200, ready=0, commands=(Command(1, "promote"),))  # terminal: commands ignored
    assert s2.phase == Phase.ROLLED_BACK and acts == [] and "promote ignored" in s2.message


def test_failure_limit_tolerates_failures_and_without_rollback_the_rollout_is_left_failed() -> None:
    gates = [{**TTFT, "failureLimit": 1, "count": 3}]
    spec = _spec([{"setWeight": 10}, {"analysis": {"gates": gates}}], rollbackOnFailure=False)
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    s, _ = _go(spec, s, 60, ready=1, readings={0: _ttft(2)})
    assert s.phase == Phase.PROGRESSING and (s.gates[0].taken, s.gates[0].failures) == (1, 1)
    s, acts = _go(spec, s, 120, ready=1, readings={0: _ttft(2)})
    assert s.phase == Phase.FAILED and acts == [] and desired(s) == Desired(1, 2, 10)


def _failed() -> tuple[RolloutSpec, State]:
    """A rollout left Failed at 10% (rollbackOnFailure false): both sides up, for a person to decide."""
    spec = _spec([{"setWeight": 10}, {"analysis": {"gates": [{**TTFT, "count": 1}]}}, {"setWeight": 100}],
                 rollbackOnFailure=False)
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    s, _ = _go(spec, s, 60, ready=1, readings={0: _ttft(2)})
    assert s.phase == Phase.FAILED and desired(s) == Desired(1, 2, 10)
    return spec, s


def test_a_failed_rollout_takes_abort_back_to_the_old_side_and_ignores_pause() -> None:
    spec, s = _failed()
    s, acts = _go(spec, s, 70, ready=1, commands=(Command(1, "pause"),))
    assert s.phase == Phase.FAILED and acts == [] and "pause ignored" in s.message
    s, acts = _go(spec, s, 80, ready=1, commands=(Command(2, "abort"),))
    assert s.phase == Phase.ROLLED_BACK and desired(s) == Desired(0, 2, 0)
    assert RemoveSide("canary", "aborted by the operator") in acts


def test_a_failed_rollout_takes_promote_full_to_the_new_side() -> None:
    spec, s = _failed()
    s, _ = _go(spec, s, 70, ready=1, commands=(Command(1, "promoteFull"),))
    assert s.phase == Phase.PROMOTING
    for now in (80, 90, 200):
        s, _ = _go(spec, s, now, ready=2)
    assert s.phase == Phase.SUCCEEDED and desired(s) == Desired(2, 0, 100)


def test_too_little_traffic_pauses_resume_measures_again_and_fail_mode_rolls_back() -> None:
    gates = [{**TTFT, "count": 1, "inconclusiveLimit": 1}]
    spec = _spec([{"setWeight": 10}, {"analysis": {"gates": gates}}])
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    s, _ = _go(spec, s, 60, ready=1, readings={0: _ttft(0.1, requests=3)})  # within the limit of 1
    assert s.phase == Phase.PROGRESSING and s.gates[0].inconclusive == 1
    s, _ = _go(spec, s, 120, ready=1, readings={0: _ttft(0.1, requests=3)})
    assert s.phase == Phase.PAUSED and "too little traffic on the canary: 3 requests" in s.paused_reason
    s, _ = _go(spec, s, 500, ready=1, readings={0: _ttft(0.1)})  # paused: nothing is measured
    assert s.phase == Phase.PAUSED and s.gates[0].taken == 0
    s, _ = _go(spec, s, 600, ready=1, commands=(Command(1, "resume"),))
    assert s.phase == Phase.PROGRESSING and s.gates[0].inconclusive == 0
    s, _ = _go(spec, s, 660, ready=1, readings={0: _ttft(0.1)})
    assert s.phase == Phase.PROMOTING

    failing = _spec([{"setWeight": 10}, {"analysis": {"gates": [{**TTFT, "inconclusive": "fail"}]}}])
    s = start("r", failing, Config(2, 2))
    s, _ = _go(failing, s, 0, ready=1)
    s, acts = _go(failing, s, 60, ready=1, readings={0: _ttft(0.1, requests=0)})
    assert s.phase == Phase.ROLLED_BACK and "inconclusive" in acts[0].reason


def test_the_progress_deadline_counts_only_while_waiting_for_replicas() -> None:
    spec = _spec([{"setWeight": 50}])
    s = start("r", spec, Config(2, 2, deadline_s=1000))
    s, _ = _go(spec, s, 0, ready=0)
    assert s.waiting_since == 0
    s, _ = _go(spec, s, 400, ready=0, commands=(Command(1, "pause"),))
    s, _ = _go(spec, s, 5000, ready=0, commands=(Command(2, "resume"),))  # paused time does not count
    assert s.phase == Phase.PROGRESSING and s.waiting_since == 5000
    s, _ = _go(spec, s, 6000, ready=0)
    assert s.phase == Phase.PROGRESSING
    s, acts = _go(spec, s, 6001, ready=0)
    assert s.phase == Phase.ROLLED_BACK and acts[-1] == RemoveSide("canary", acts[-1].reason)
    assert "progress deadline: 0 of 1 new replicas ready after 1000 s" in s.message


def test_default_deadline_leaves_room_to_load_the_model() -> None:
    assert config_for(_spec([{"setWeight": 50}]), 2, 2, readiness_budget_s=1800).deadline_s == 2400
    assert config_for(_spec([{"setWeight": 50}], progressDeadlineSeconds=300), 2, 2, 1800).deadline_s == 300


def test_indefinite_pause_waits_for_promote_and_promote_full_skips_the_rest() -> None:
    spec = _spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 80}])
    s = start("r", spec, Config(10, 10))
    s, _ = _go(spec, s, 0, ready=1)
    assert s.phase == Phase.PAUSED and s.step == 1 and s.paused_reason == "step 1: pause until promoted"
    s, acts = _go(spec, s, 50, ready=1, commands=(Command(7, "promote"),))
    assert s.phase == Phase.PROGRESSING and s.step == 2 and acts == [ScaleSide("canary", 5, "step 2")]
    s, acts = _go(spec, s, 60, ready=5)
    assert s.phase == Phase.PAUSED and s.step == 3 and acts == [SetWeight(50, "step 2: setWeight 50")]
    s, acts = _go(spec, s, 70, ready=5, commands=(Command(7, "promoteFull"),))  # id 7 was applied already
    assert s.phase == Phase.PAUSED and acts == []
    s, acts = _go(spec, s, 80, ready=5, commands=(Command(8, "promoteFull"),))
    assert s.phase == Phase.PROMOTING and acts == [ScaleSide("canary", 10, "promoting")]


def test_abort_returns_all_traffic_to_the_old_side() -> None:
    s = start("r", CANARY, Config(4, 4))
    s, _ = _go(CANARY, s, 0, ready=1)
    s, acts = _go(CANARY, s, 10, ready=1, commands=(Command(1, "abort"),))
    assert s.phase == Phase.ROLLED_BACK
    assert acts == [SetWeight(0, "aborted by the operator"), RemoveSide("canary", "aborted by the operator")]


def test_blue_green_brings_the_whole_side_up_checks_it_switches_then_keeps_the_old_side_for_the_delay() -> None:
    q = {"metric": "quality", "intervalSeconds": 30}
    spec = _spec(strategy="blueGreen", quality={}, blueGreen={"prePromotionAnalysis": {"gates": [q]},
                                                               "scaleDownDelaySeconds": 300, "autoPromote": False})
    config = config_for(spec, 3, 2, readiness_budget_s=600)
    assert plan_steps(spec, config) == [Weight(0, 100), Check(tuple(spec.blue_green.pre_promotion_analysis.gates),
                                                                 "blueGreen.prePromotionAnalysis"), Hold(None)]
    s = start("r", spec, config)
    s, acts = _go(spec, s, 0, ready=0)
    assert acts == [ScaleSide("canary", 2, "step 0")]
    s, acts = _go(spec, s, 100, ready=2)
    assert acts == [] and s.step == 1 and s.weight == 0  # up, no user traffic yet
    same = [Generation("x")]
    s, acts = _go(spec, s, 130, ready=2, readings={0: compare(["p"], same, same, Quality())})
    assert s.phase == Phase.PAUSED and s.step == 2 and acts == []  # autoPromote false
    s, acts = _go(spec, s, 200, ready=2, commands=(Command(1, "promote"),))
    assert s.phase == Phase.PROMOTING and acts == [SetWeight(100, "promoting: all traffic to the new side")]
    s, acts = _go(spec, s, 450, ready=2)
    assert s.phase == Phase.PROMOTING and acts == []  # the old side stays for scaleDownDelaySeconds
    s, acts = _go(spec, s, 499, ready=2, commands=(Command(2, "abort"),))  # abort within the delay: instant switch back
    assert s.phase == Phase.ROLLED_BACK and acts == [SetWeight(0, "aborted by the operator"),
                                                     RemoveSide("canary", "aborted by the operator")]


def test_blue_green_scale_down_after_the_delay() -> None:
    spec = _spec(strategy="blueGreen", blueGreen={"scaleDownDelaySeconds": 60})
    s = start("r", spec, config_for(spec, 1, 1, 100))
    s, _ = _go(spec, s, 0, ready=1)
    assert s.phase == Phase.PROMOTING and s.weight == 100 and s.promoted_at == 0
    s, acts = _go(spec, s, 60, ready=1)
    assert s.phase == Phase.SUCCEEDED and acts == [RemoveSide("stable", "promoted")]


def test_replace_mode_shrinks_the_old_side_to_make_room_before_each_new_replica() -> None:
    # 4 old replicas fill the pool; each new replica needs the room of one old one: fits_beside = 0,1,2,3,4.
    spec = _spec([{"setWeight": 25}, {"setWeight": 50}])
    config = config_for(spec, 4, 4, 100, fits_beside=(0, 1, 2, 3, 4))
    assert config.mode == "replace"
    s = start("r", spec, config)
    s, acts = _go(spec, s, 0, ready=0)
    assert acts == [ScaleSide("stable", 3, "step 0: room for 1 new replicas"), ScaleSide("canary", 1, "step 0")]
    assert "does not fit beside the old (4): replacing replica by replica" in s.log[0].message
    s, acts = _go(spec, s, 10, ready=1)
    assert acts == [SetWeight(25, "step 0: setWeight 25"), ScaleSide("stable", 2, "step 1: room for 2 new replicas"),
                    ScaleSide("canary", 2, "step 1")]
    s, acts = _go(spec, s, 20, ready=1, commands=(Command(1, "abort"),))
    assert acts == [SetWeight(0, "aborted by the operator"), RemoveSide("canary", "aborted by the operator"),
                    ScaleSide("stable", 4, "aborted by the operator")]


def test_replace_mode_blue_green_moves_replica_by_replica_with_its_analysis_after_each() -> None:
    spec = _spec(strategy="blueGreen", blueGreen={"prePromotionAnalysis": {"gates": [TTFT]}})
    config = config_for(spec, 3, 3, 100, fits_beside=(0, 1, 2, 3))
    check = Check(tuple(spec.blue_green.pre_promotion_analysis.gates), "blueGreen.prePromotionAnalysis")
    assert plan_steps(spec, config) == [Weight(33, 33), check, Weight(66, 66), check, Weight(66, 100), check]
    with pytest.raises(ValueError, match="do not fit even with the old side removed"):
        config_for(spec, 3, 3, 100, fits_beside=(0, 1, 1, 1))


def test_a_changed_document_pauses_the_rollout() -> None:
    s = start("r", CANARY, Config(4, 4))
    s, _ = step(CANARY, s, Observation(0, 0))
    other = _spec([{"setWeight": 30}])
    s, _ = step(CANARY, s, Observation(5, 0, digest=spec_digest(other)))
    assert s.phase == Phase.PAUSED and "document changed" in s.paused_reason
    assert spec_digest(CANARY) == s.digest != spec_digest(other)


def test_state_survives_json_and_a_restart_resumes_at_the_same_step() -> None:
    s = start("r", CANARY, Config(4, 4, "replace", (0, 1, 2, 3, 4), 900, 0))
    s, _ = _go(CANARY, s, 0, ready=0)
    s, _ = _go(CANARY, s, 10, ready=1)
    s, _ = _go(CANARY, s, 70, ready=1, readings={0: _ttft(0.2)})
    saved = json.dumps(s.to_json())
    restored = State.from_json(json.loads(saved))
    assert restored == s and restored.step == 1 and restored.gates[0].last.outcome == "pass"
    # the restarted controller converges on what the state says, and the same observation adds nothing
    assert desired(restored) == Desired(1, 3, 25)
    again, acts = step(CANARY, restored, Observation(70, 1, {0: _ttft(0.2)}))
    assert again == restored and acts == []


def test_pausing_while_promoting_resumes_promoting() -> None:
    spec = _spec([{"setWeight": 50}])
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    assert s.phase == Phase.PROMOTING
    s, acts = _go(spec, s, 10, ready=1, commands=(Command(1, "pause"),))
    assert s.phase == Phase.PAUSED and acts == []
    s, acts = _go(spec, s, 20, ready=2)  # paused: the promotion waits
    assert s.phase == Phase.PAUSED and acts == []
    s, acts = _go(spec, s, 30, ready=2, commands=(Command(2, "resume"),))
    assert s.phase == Phase.SUCCEEDED and acts == [SetWeight(100, "promoting: all traffic to the new side"),
                                                   RemoveSide("stable", "promoted")]


def test_a_command_before_the_first_step_applies_after_the_start() -> None:
    s = start("r", CANARY, Config(4, 4))
    s, acts = _go(CANARY, s, 0, ready=0, commands=(Command(1, "pause"),))
    assert s.phase == Phase.PAUSED and acts == [] and [d.message for d in s.log][1] == "paused by the operator"
    s, acts = _go(CANARY, s, 5, ready=0, commands=(Command(2, "resume"),))
    assert s.phase == Phase.PROGRESSING and acts == [ScaleSide("canary", 1, "step 0")]


def test_status_shows_each_gate_against_its_threshold_and_the_log() -> None:
    spec = _spec([{"setWeight": 10}, {"analysis": {"gates": [{**TTFT, "threshold": {"maxRatioToStable": 1.5}}]}}])
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    s, _ = _go(spec, s, 60, ready=1, readings={0: Readings(SideReading(30, 0.3), SideReading(300, 0.4))})
    view = status(spec, s)
    assert (view["phase"], view["step"], view["steps"], view["stepKind"], view["weight"]) == (
        "Progressing", 1, 2, "check", 10)
    [gate] = view["gates"]
    assert gate["measurements"] == "1/2" and gate["failures"] == "0/0" and gate["outcome"] == "pass"
    assert (gate["canary"], gate["stable"], gate["threshold"]) == (0.3, 0.4, "maxRatioToStable 1.5")
    assert gate["limit"] == pytest.approx(0.6)
    assert [e["message"] for e in view["log"]][-1] == "step 0: 10% of traffic on the new side (1 new, 2 old replicas)"
    json.dumps(view)


def test_a_gate_that_has_its_count_is_not_measured_again_while_another_runs() -> None:
    quick = {**TTFT, "count": 1}
    slow = {"metric": "errorRatio", "threshold": {"max": 0.01}, "intervalSeconds": 60, "count": 2}
    spec = _spec([{"setWeight": 10}, {"analysis": {"gates": [quick, slow]}}])
    s = start("r", spec, Config(2, 2))
    s, _ = _go(spec, s, 0, ready=1)
    s, _ = _go(spec, s, 60, ready=1, readings={0: _ttft(0.5), 1: _ttft(0.0)})
    assert [d.index for d in due(spec, s, 120)] == [1]
    s, _ = _go(spec, s, 120, ready=1, readings={0: _ttft(9.0), 1: _ttft(0.0)})  # a late ttft reading is ignored
    assert s.phase == Phase.PROMOTING and "ttftP95 1/1, errorRatio 2/2" in s.log[-2].message
