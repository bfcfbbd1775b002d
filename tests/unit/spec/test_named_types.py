"""The named types of spec/base.py: anchored patterns, finite floats, limits, strict numbers, in the schema too."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import SpecError
from orchestrator.spec import base, load_documents
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.hardware import HardwareProfile

CASES = {
    "DnsSubdomain": (["nvidia", "kata-qemu", "a.b-c.d"], ["Nvidia", "nvidia\nhostPID: true", "nvidia\n", "a..b", "-a"]),
    "QualifiedName": (["nvidia.com/gpu", "moxin.dev/pool", "zone", "nvidia.com/gpu.product", "huawei.com/Ascend910"],
                      ["", "a/b/c", "nvidia.com/", "-x", "nvidia.com/gpu\n", "x" * 64]),
    "LabelValue": (["", "h100", "NVIDIA-H100-80GB-HBM3", "a_b.c"], ["a b", "-a", "a-", "x" * 64, "a\n", 'H100" }']),
    "EnvName": (["CUDA_VISIBLE_DEVICES", "_X", "x1"], ["", "1X", "BAD-NAME", "A B", "A=1", "A\n"]),
    "ImageRef": (["vllm/vllm-openai:v0.11.0", "quay.io/ascend/vllm-ascend:v0.23.0-310p", "localhost:5000/x",
                  "reg.example.com/a/b@sha256:" + "a" * 64, "moxin"],
                 ["", "vllm/vllm-openai:v1 --privileged", "x:tag\nfoo", "x/UPPER", "x:-bad", "x;rm -rf /"]),
    "HostAddress": (["10.0.0.1", "fd00::1", "studio-1.lan", "mac-1.local"],
                    ["studio-1.lan:99999", "1.2.3.4:80", "Not A Host", "fe80::1%eth0", "a\n"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_string_types_accept_and_refuse(name: str) -> None:
    adapter = TypeAdapter(getattr(base, name))
    good, bad = CASES[name]
    for value in good:
        assert adapter.validate_python(value) == value
    for value in bad:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


def test_finite_float_refuses_inf_and_nan_but_takes_integers() -> None:
    adapter = TypeAdapter(base.FiniteFloat)
    assert adapter.validate_python(4) == 4.0
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


def test_the_schema_shows_the_patterns_and_limits() -> None:
    schema = HardwareProfile.model_json_schema(by_alias=True)["$defs"]
    kube = schema["KubernetesResources"]["properties"]
    assert kube["runtimeClassName"]["anyOf"][0]["pattern"] == base.DNS1123_SUBDOMAIN
    assert list(kube["nodeSelector"]["patternProperties"]) == [base.QUALIFIED_NAME]
    assert "DNS-1123 subdomain" in kube["runtimeClassName"]["anyOf"][0]["description"]
    assert schema["HardwareProfileSpec"]["properties"]["memoryGB"]["anyOf"][0]["maximum"] == base.MAX_MEMORY_GB
    pool = Fleet.model_json_schema(by_alias=True)["$defs"]["Pool"]["properties"]
    assert pool["nodes"]["maximum"] == base.MAX_NODES_PER_POOL


FLEET = "apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: f}}\nspec:\n  pools:\n    - {}\n"


@pytest.mark.parametrize("pool,price", [
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 2}", 2.0),  # an integer for a float
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 2.5e0}", 2.5),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 25e-1}", 2.5),  # YAML 1.2 exponent
])
def test_yaml_numbers_fill_float_fields(write, pool: str, price: float) -> None:
    [fleet] = load_documents([write("f.yaml", FLEET.format(pool))])
    assert fleet.doc.spec.pools[0].usd_per_device_hour == price


@pytest.mark.parametrize("pool,fragment", [
    ("{name: a, hardware: nvidia-h100-sxm, nodes: '1'}", "valid integer (got '1')"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: yes}", "valid integer (got True)"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1.0}", "valid integer (got 1.0)"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: '2'}", "valid number (got '2')"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 1e999}", "finite number"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 1e9}", "at most 10000"),
    ("{name: a, hardware: nvidia-h100-sxm, nodes: 1, emulate: cpu, labels: {zone: 1}}", "valid string"),
])
def test_numbers_and_strings_are_strict(write, pool: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_documents([write("f.yaml", FLEET.format(pool))])
    [problem] = info.value.problems
    assert problem.line == 6 and problem.path.startswith("spec.pools[0].") and fragment in problem.message
