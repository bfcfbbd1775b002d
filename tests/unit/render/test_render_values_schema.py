"""render/values.py: the chart's values.schema.json is generated from the typed values models, and the
values moxin writes (render helm, render kuberay) are valid by both the models and the schema."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from k8s_support import BAD_VALUES, VENDOR_IMAGES, example
from pydantic import ValidationError

from orchestrator.render.helm import deep_merge, helm_values
from orchestrator.render.kuberay import kuberay_values
from orchestrator.render.kubernetes import chart_dir
from orchestrator.render.values import ChartValues, values_schema, values_schema_text

jsonschema = pytest.importorskip("jsonschema")


def _chart_defaults() -> dict:
    return yaml.safe_load((chart_dir() / "values.yaml").read_text())


def _schema_validator():
    schema = json.loads((chart_dir() / "values.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_the_committed_schema_is_the_generated_one():
    committed = (chart_dir() / "values.schema.json").read_text()
    assert committed == values_schema_text(), \
        "helm/moxin/values.schema.json is stale: python -m orchestrator.render.values > helm/moxin/values.schema.json"


def test_the_generated_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(values_schema())


def test_values_yaml_holds_the_models_defaults():
    assert _chart_defaults() == ChartValues().model_dump(mode="json", by_alias=True, exclude_none=True)


def _rendered_values(name: str, kind: str) -> dict:
    plan, catalog, fleet = example(name)
    if kind == "helm":
        values = helm_values(plan, catalog, fleet=fleet, images=VENDOR_IMAGES).values
    else:
        values = kuberay_values(plan, catalog, fleet=fleet).values
    return deep_merge(_chart_defaults(), values)  # what Helm validates: the values over the chart's defaults


@pytest.mark.parametrize("kind", ["helm", "kuberay"])
def test_values_moxin_writes_are_valid_by_the_models_and_the_schema(example_name, kind):
    values = _rendered_values(example_name, kind)
    ChartValues.model_validate(values)
    errors = [e.message for e in _schema_validator().iter_errors(values)]
    assert errors == []


@pytest.mark.parametrize("change", [
    *BAD_VALUES,
    {"images": {"Not A Key": "img"}},
    {"engine": {"resources": {"requests": {"cpu": "lots"}}}},
    {"kuberay": {"enabled": True}},  # nothing of the plan
    {"kuberay": {"workerGroups": [{"name": "x"}]}},
])
def test_models_and_schema_reject_the_same_bad_values(change):
    values = deep_merge(_chart_defaults(), change)
    assert list(_schema_validator().iter_errors(values))
    with pytest.raises(ValidationError):
        ChartValues.model_validate(values)


def test_a_leaderworkerset_assignment_needs_its_scripts_in_models_and_schema():
    values = _rendered_values("multinode", "helm")
    lws = next(a for a in values["assignments"] if a["kind"] == "LeaderWorkerSet")
    broken = copy.deepcopy(values)
    broken["assignments"] = [{k: v for k, v in lws.items() if k != "workerScript"}]
    assert list(_schema_validator().iter_errors(broken))
    with pytest.raises(ValidationError, match="workerScript"):
        ChartValues.model_validate(broken)


def test_optional_values_are_never_null():
    """Helm deletes a key set to null, so the schema allows leaving it out but never null."""
    values = _rendered_values("local", "helm")
    values["assignments"][0]["runtimeClassName"] = None
    assert list(_schema_validator().iter_errors(values))
