"""Hostile strings in the chart's values: refused with an error that names the field, or written as values
and nothing else (issue "Trust boundaries": a newline in a runtime class or an env name must not become
pod fields).

The property: every free string the chart writes (names, labels, node selector, env names and values,
argv, images, runtime class, paths, Secret names and keys, ...) is first rendered with a placeholder token,
then with hostile text in a few of them. Either the chart's models and its values.schema.json (checked by
Helm itself, as `helm install` does) both refuse the values, or the objects are exactly the placeholder
render with each token replaced by the hostile text: same objects, same fields, the text only where the
token was.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from k8s_support import ROOT
from pydantic import ValidationError

from orchestrator.cli import cli
from orchestrator.render.helm import RenderError, deep_merge
from orchestrator.render.kubernetes import chart_dir, render_chart
from orchestrator.render.values import ChartValues

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the k8s extra)")

# Fields whose every value is text the chart only ever writes as a quoted value (argv entries, env values,
# annotations, shell scripts): any non-empty string must render.
FREE = ["model", "deployment", "variant", "pool", "hardware", "platform", "envValue", "argv", "leaderScript",
        "workerScript", "remote", "folder"]
# Fields that become names, label keys and values, env names, images, paths, resource names: constrained.
CONSTRAINED = ["id", "lwsId", "image", "runtimeClassName", "healthPath", "metricsPath", "modelSubPath",
               "deviceResource", "envName", "apiKeyEnv", "labelKey", "labelValue", "nodeSelectorKey",
               "nodeSelectorValue", "tolerationKey", "tolerationValue", "plan", "managedBy", "pullSecret",
               "mountPath", "fetchImage", "storeSecret", "hubSecret", "hubKey", "engineSecret", "engineKey",
               "apiKeysSecret", "apiKeysKey", "routerRepository", "routerTag", "monitoringLabelKey",
               "monitoringLabelValue", "dashboardLabel", "dashboardLabelValue", "prometheusNamespace"]
FIELDS = FREE + CONSTRAINED
NOT_WRITTEN = ["deployment", "pool", "variant"]
"""Values the chart reads but writes nowhere (labels carry them, made by render/helm.py)."""


def _token(i: int, field: str) -> str:
    """A placeholder valid for the field, unique, and no substring of another."""
    token = f"zq{i:02d}x"
    if field in ("healthPath", "metricsPath", "mountPath"):
        return "/" + token
    if field == "deviceResource":
        return token + ".io/dev"
    return token


TOKENS = {field: _token(i, field) for i, field in enumerate(FIELDS)}

NASTY = [
    "nvidia\nhostPID: true\nhostNetwork: true", "x\n- name: LD_PRELOAD\n  value: /tmp/evil.so", "a: b",
    "hostPID: true", "privileged: true", "{{ .Release.Name }}", "{{", "}}", '"', "'", '"quoted"', "# comment",
    " #x", "ünïcödé ✓", "-", "- item", "--flag", "&anchor", "*alias", "!!python/object/apply:os.system ['id']",
    "!tag", "|", ">-", "%YAML 1.1", "---", "...", "null", "~", "true", "no", "0x10", "1e3", "0", "[a, b]",
    "{a: 1}", "@", "`", "\t", "\r\n", "\u2028", "\u0085", "\\", "$(id)", "a b",
]
HOSTILE = st.one_of(
    st.sampled_from(NASTY),
    st.lists(st.sampled_from([*NASTY, "a", "B", "/", ".", "_", "1", "nvidia.com", "gpu"]), min_size=2,
             max_size=5).map("".join),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
).filter(lambda s: "zq" not in s)  # a token inside the text would confuse the substitution below


def _values(s: dict[str, str]) -> dict[str, Any]:
    """Chart values with every free string taken from ``s``: a Deployment assignment that uses all of
    them and a LeaderWorkerSet one (scripts), object storage, Secrets, monitoring labels."""
    common = {
        "deployment": s["deployment"], "model": s["model"], "variant": s["variant"], "pool": s["pool"],
        "hardware": s["hardware"], "engine": "vllm", "platform": s["platform"], "emulated": False, "replicas": 2,
        "port": 8000, "devicesPerPod": 1, "image": s["image"], "deviceResource": s["deviceResource"],
        "argv": ["vllm", s["argv"], "--port", "8000"], "env": {s["envName"]: s["envValue"], "FIXED": s["envValue"]},
        "apiKeyEnv": s["apiKeyEnv"], "healthPath": s["healthPath"], "metricsPath": s["metricsPath"],
        "readinessTimeoutSeconds": 300, "runtimeClassName": s["runtimeClassName"],
        "nodeSelector": {s["nodeSelectorKey"]: s["nodeSelectorValue"]},
        "tolerations": [{"key": s["tolerationKey"], "operator": "Equal", "value": s["tolerationValue"],
                         "effect": "NoSchedule"}],
        "labels": {s["labelKey"]: s["labelValue"]},
    }
    deployment = {**common, "id": s["id"], "kind": "Deployment", "groupSize": 1, "modelSubPath": s["modelSubPath"]}
    lws = {**common, "id": s["lwsId"], "kind": "LeaderWorkerSet", "groupSize": 2, "modelSubPath": "",
           "leaderScript": s["leaderScript"], "workerScript": s["workerScript"]}
    return {
        "plan": {"name": s["plan"]}, "managedBy": s["managedBy"], "imagePullSecrets": [{"name": s["pullSecret"]}],
        "modelStorage": {"type": "objectStore", "mountPath": s["mountPath"], "objectStore": {
            "image": s["fetchImage"], "remote": s["remote"], "secretName": s["storeSecret"]}},
        "hubToken": {"secretName": s["hubSecret"], "key": s["hubKey"]},
        "engineAuth": {"secretName": s["engineSecret"], "key": s["engineKey"]},
        "router": {"image": {"repository": s["routerRepository"], "tag": s["routerTag"]},
                   "apiKeys": {"secretName": s["apiKeysSecret"], "key": s["apiKeysKey"]}},
        "monitoring": {"labels": {s["monitoringLabelKey"]: s["monitoringLabelValue"]}},
        "dashboards": {"folder": s["folder"], "label": s["dashboardLabel"], "labelValue": s["dashboardLabelValue"]},
        "networkPolicy": {"prometheus": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": s["prometheusNamespace"]}}}]},
        "assignments": [deployment, lws],
    }


@functools.cache
def _defaults() -> dict[str, Any]:
    return yaml.safe_load((chart_dir() / "values.yaml").read_text())


def _models_accept(values: dict[str, Any]) -> bool:
    try:
        ChartValues.model_validate(deep_merge(_defaults(), values))
    except ValidationError:
        return False
    return True


def _substituted(obj: Any, replace: dict[str, str]) -> Any:
    """``obj`` with every token replaced by its text, in keys and values."""
    if isinstance(obj, dict):
        return {_substituted(k, replace): _substituted(v, replace) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substituted(v, replace) for v in obj]
    if isinstance(obj, str):
        for token, text in replace.items():
            obj = obj.replace(token, text)
    return obj


def _canonical(objects: list[dict[str, Any]]) -> list[Any]:
    """Objects compared as data: lists of named entries (env) in name order, since Helm writes a map's
    entries in key order and a token sorts differently from the text that replaces it."""
    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            items = [walk(v) for v in obj]
            if items and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in items):
                items.sort(key=lambda v: v["name"])
            return items
        return obj
    return sorted((walk(o) for o in objects), key=lambda o: (o["kind"], o["metadata"]["name"]))


@functools.cache
def _placeholder_objects() -> list[dict[str, Any]]:
    return render_chart(_values(TOKENS), check=False)


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = []
    for o in objects:
        if o["kind"] == "Deployment":
            pods.append(o["spec"]["template"]["spec"])
        elif o["kind"] == "LeaderWorkerSet":
            t = o["spec"]["leaderWorkerTemplate"]
            pods += [t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]]
    return pods


POD_KEYS = {"serviceAccountName", "terminationGracePeriodSeconds", "runtimeClassName", "nodeSelector", "tolerations",
            "automountServiceAccountToken", "enableServiceLinks", "imagePullSecrets", "securityContext",
            "initContainers", "containers", "volumes"}


def _assert_only_expected_pod_fields(objects: list[dict[str, Any]], s: dict[str, str]) -> None:
    """The claims of the issue, spelled out: no host namespaces or privilege, the env names given."""
    pods = _pod_specs(objects)
    assert len(pods) == 4  # the Deployment's, the router's, the LeaderWorkerSet's leader and worker
    for pod in pods:
        assert set(pod) <= POD_KEYS
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert "privileged" not in c.get("securityContext", {})
    engine_pods = [p for p in pods if p["containers"][0]["name"] == "engine"]
    for pod in engine_pods:
        (c,) = pod["containers"]
        names = [e["name"] for e in c["env"]]
        assert sorted(names) == sorted(["HOME", "XDG_CACHE_HOME", "HF_HOME", s["envName"], "FIXED", "HF_TOKEN",
                                        s["apiKeyEnv"]])
        assert {"name": s["envName"], "value": s["envValue"]} in c["env"]
        assert pod["runtimeClassName"] == s["runtimeClassName"]
        assert pod["nodeSelector"] == {s["nodeSelectorKey"]: s["nodeSelectorValue"]}
        assert c["image"] == s["image"]


def test_the_placeholder_render_has_every_field_where_it_belongs():
    objects = _placeholder_objects()
    _assert_only_expected_pod_fields(objects, TOKENS)
    text = yaml.safe_dump_all(objects, allow_unicode=True)
    unwritten = sorted(f for f, token in TOKENS.items() if token not in text)
    assert unwritten == NOT_WRITTEN, "fields the chart does not write are checked for refusal only"


_SETTINGS = settings(max_examples=50, derandomize=True, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@_SETTINGS
@given(data=st.data())
def test_hostile_strings_are_refused_or_written_only_as_the_values_given(data):
    chosen = data.draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=3), label="fields")
    hostile = {f: data.draw(HOSTILE, label=f) for f in sorted(chosen)}
    strings = {**TOKENS, **hostile}
    values = _values(strings)
    accepted = _models_accept(values)
    event("accepted" if accepted else "refused")
    if set(chosen) <= set(FREE):
        assert accepted, "free text (argv, env values, annotations, scripts) must never be refused"
    try:
        objects = render_chart(values, check=False)  # the chart's own schema, as `helm install` checks it
    except RenderError:
        assert not accepted, "Helm refused values the models accept: values.schema.json and the models differ"
        with pytest.raises(RenderError, match="refused"):
            render_chart(values)  # the models' message, naming the field
        return
    assert accepted, "Helm rendered values the models refuse: values.schema.json and the models differ"
    replace = {TOKENS[f]: text for f, text in hostile.items()}
    expected = _substituted(_placeholder_objects(), replace)
    assert _canonical(objects) == _canonical(expected)
    _assert_only_expected_pod_fields(objects, strings)


@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.fixed_dictionaries({f: HOSTILE for f in FREE}))
def test_all_free_text_at_once_renders_as_the_values_given(texts):
    assume(len(set(texts.values())) == len(texts))
    objects = render_chart(_values({**TOKENS, **texts}))
    expected = _substituted(_placeholder_objects(), {TOKENS[f]: t for f, t in texts.items()})
    assert _canonical(objects) == _canonical(expected)


# --------------------------------------------------------------------------- the two examples

EVIL_RUNTIME_CLASS = "nvidia\nhostPID: true\nhostNetwork: true"
EVIL_ENV_NAME = "MLU_X\n  value: '1'\n- name: LD_PRELOAD\n  value: /tmp/evil.so\n- name: Y"


@pytest.mark.parametrize("check", [True, False], ids=["models", "chart-schema"])
def test_a_runtime_class_with_newlines_is_refused(check):
    values = _values({**TOKENS, "runtimeClassName": EVIL_RUNTIME_CLASS})
    with pytest.raises(RenderError, match="runtimeClassName"):
        render_chart(values, check=check)


@pytest.mark.parametrize("check", [True, False], ids=["models", "chart-schema"])
def test_an_env_name_with_newlines_is_refused(check):
    values = _values({**TOKENS, "envName": EVIL_ENV_NAME})
    with pytest.raises(RenderError, match="LD_PRELOAD"):
        render_chart(values, check=check)


def test_the_models_name_the_bad_env_key_with_its_newlines_escaped():
    values = _values({**TOKENS, "envName": EVIL_ENV_NAME})
    with pytest.raises(RenderError) as err:
        render_chart(values)
    first = str(err.value).splitlines()[1]
    assert first.startswith("  assignments[0].env[") and "(the key)" in first and "\\n- name: LD_PRELOAD" in first


def test_a_hardware_profile_with_both_is_refused_by_moxin_render_k8s(tmp_path):
    """The issue's reproduction end to end: a profile whose runtime class and plugin env name carry YAML."""
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "cambricon-mlu370-x8.yaml").read_text())
    profile["metadata"]["name"] = "evil-mlu"
    profile["spec"]["kubernetes"]["runtimeClassName"] = EVIL_RUNTIME_CLASS
    profile["spec"]["engines"][0]["plugin"]["env"] = {EVIL_ENV_NAME: "1"}
    fleet = {"apiVersion": "moxin.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "evil"},
             "spec": {"pools": [{"name": "mlu", "hardware": "evil-mlu", "nodes": 1, "usdPerDeviceHour": 1.0}]}}
    deployment = {"apiVersion": "moxin.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
                  "spec": {"model": "qwen3-30b-a3b", "contextTokens": 8192, "pools": ["mlu"], "replicas": {"min": 1},
                           "traffic": {"requestsPerSecond": 1, "promptTokens": 500, "outputTokens": 100}}}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump_all([profile, fleet, deployment]))
    result = CliRunner().invoke(cli, ["render", "k8s", "-f", str(path), "--image", "vllm/mlu=r/v:1"],
                                catch_exceptions=False)  # any exception but SystemExit fails the test
    assert result.exit_code == 2, result.output
    assert "runtimeClassName" in result.output and "Traceback" not in result.output
    assert "hostPID" not in result.stdout and "LD_PRELOAD" not in result.stdout

