"""The Rollout schema: Argo's vocabulary, the checks that need no catalog, and a description on every field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec.rollout import Rollout, RolloutSpec


def _spec(**spec: object) -> RolloutSpec:
    return RolloutSpec.model_validate({"deployment": "chat", "to": {"variant": "fp8"}, **spec})


def test_every_field_of_the_rollout_schema_has_a_description() -> None:
    schema = Rollout.model_json_schema(by_alias=True)
    missing = [f"{name}.{field}" for name, d in schema["$defs"].items()
               for field, prop in d.get("properties", {}).items() if "description" not in prop]
    assert missing == []
    gate = schema["$defs"]["Gate"]["properties"]
    assert {"metric", "threshold", "intervalSeconds", "count", "failureLimit", "minRequests", "inconclusive"} <= set(gate)
    for one_of in ("Step", "Threshold"):  # editors learn that exactly one field is set
        assert (schema["$defs"][one_of]["minProperties"], schema["$defs"][one_of]["maxProperties"]) == (1, 1)


def test_canary_steps_read_as_argo_writes_them() -> None:
    spec = _spec(steps=[{"setWeight": 10}, {"pause": {"durationSeconds": 60}}, {"pause": {}},
                        {"analysis": {"gates": [{"metric": "ttftP95", "threshold": {"maxRatioToStable": 1.2}}]}},
                        {"setWeight": 40}])
    assert [s.set_weight for s in spec.steps] == [10, None, None, None, 40]
    assert spec.steps[1].pause.duration_seconds == 60 and spec.steps[2].pause.duration_seconds is None
    gate = spec.steps[3].analysis.gates[0]
    assert (gate.interval_seconds, gate.count, gate.failure_limit, gate.min_requests, gate.inconclusive) == (
        60, 1, 0, 20, "pause")
    assert gate.threshold.relative and gate.threshold.max_ratio_to_stable == 1.2


@pytest.mark.parametrize(("steps", "message"), [
    ([{"setWeight": 50}, {"setWeight": 50}], "weights must increase: 50 after 50"),
    ([{"pause": {}}], "a canary needs at least one setWeight step"),
    ([{"setWeight": 0}], "greater than or equal to 1"),
    ([{"setWeight": 101}], "less than or equal to 100"),
    ([{}], "exactly one of setWeight, pause, analysis (0 given)"),
])
def test_bad_steps_are_refused(steps: list, message: str) -> None:
    with pytest.raises(ValidationError, match=None) as info:
        _spec(steps=steps)
    assert message in str(info.value)


def test_target_equal_to_source_is_refused_also_when_to_keeps_a_field() -> None:
    with pytest.raises(ValidationError, match="the rollout changes nothing"):
        RolloutSpec.model_validate({"deployment": "chat", "from": {"variant": "fp8", "pool": "a"},
                                    "to": {"pool": "a"}, "steps": [{"setWeight": 100}]})
    ok = RolloutSpec.model_validate({"deployment": "chat", "from": {"variant": "fp8", "pool": "a"},
                                     "to": {"pool": "b"}, "steps": [{"setWeight": 100}]})
    assert ok.to.pool == "b"


def test_blue_green_has_defaults_and_takes_no_steps() -> None:
    spec = _spec(strategy="blueGreen")
    assert spec.blue_green is None and spec.steps == []
    spec = _spec(strategy="blueGreen", blueGreen={"autoPromote": False})
    assert spec.blue_green.scale_down_delay_seconds == 30 and not spec.blue_green.auto_promote
    with pytest.raises(ValidationError, match="steps belong to strategy canary"):
        _spec(strategy="blueGreen", steps=[{"setWeight": 10}])
    with pytest.raises(ValidationError, match="blueGreen settings belong to strategy blueGreen"):
        _spec(steps=[{"setWeight": 10}], blueGreen={})


def test_quality_gate_takes_no_threshold_and_needs_quality_settings() -> None:
    gates = {"gates": [{"metric": "quality"}]}
    spec = _spec(steps=[{"setWeight": 5}, {"analysis": gates}], quality={})
    assert spec.quality.prompts == "builtin" and spec.quality.min_exact_match == 0.9
    with pytest.raises(ValidationError, match="takes its thresholds from spec.quality"):
        _spec(steps=[{"setWeight": 5}, {"analysis": {"gates": [{"metric": "quality", "threshold": {"min": 1}}]}}],
              quality={})
    with pytest.raises(ValidationError, match="a quality gate needs spec.quality"):
        _spec(strategy="blueGreen", blueGreen={"prePromotionAnalysis": gates})
