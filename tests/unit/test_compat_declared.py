"""Operator-declared support: a profile's engines[].declaredSupport against compat's own rules."""

from __future__ import annotations

import pytest

from orchestrator.compat import check
from orchestrator.spec import load_catalog

MIX = "{default: fp8-e4m3-block128, routedExperts: int4-g128, embedding: bf16, lmHead: bf16, router: bf16}"


def _overlay(write, declaration: str) -> object:
    text = f"""apiVersion: moxin.dev/v1alpha1
kind: HardwareProfile
metadata: {{name: my-mlu590}}
spec:
  extends: cambricon-mlu590
  engines:
    - engine: vllm
      declaredSupport:
        - {declaration}
"""
    return load_catalog([write("my-mlu590.yaml", text)])


@pytest.fixture
def declared(write):
    return _overlay(write, f"{{formats: {MIX}, contextTokens: 200000, source: declared by the operator}}")


def test_the_declared_mix_is_supported_as_declared(declared) -> None:
    mixed = declared.model("glm-4.6").spec.variant("fp8-int4")
    v = check(mixed, declared.profile("my-mlu590"), context_tokens=200000)
    assert v.status == "supported" and v.declared_by == "my-mlu590"
    assert v.label == "supported (declared by my-mlu590)"
    assert v.reason == "declared by my-mlu590: declared by the operator"
    assert v.engine.engine == "vllm" and v.quantization == "compressed-tensors"
    # the built-in profile, without the declaration, still does not know
    assert check(mixed, declared.profile("cambricon-mlu590")).status == "unknown"


def test_other_mixes_stay_as_the_rules_say(declared) -> None:
    model = declared.model("glm-4.6").spec
    profile = declared.profile("my-mlu590")
    mixed = model.variant("fp8-int4")
    # the same mix but AWQ-style zero points on the experts: not what was declared, so still unknown
    other = mixed.model_copy(update={"formats": {**mixed.formats, "routedExperts": "int4-g128-asym"}})
    v = check(other, profile)
    assert v.status == "unknown" and v.declared_by is None
    # variants the rules already support are supported by the rules, not by the declaration
    fp8 = check(model.variant("fp8"), profile)
    assert fp8.supported and fp8.declared_by is None and fp8.label == "supported"


def test_a_declaration_covers_only_the_context_it_names(declared) -> None:
    mixed = declared.model("glm-4.6").spec.variant("fp8-int4")
    v = check(mixed, declared.profile("my-mlu590"), context_tokens=202752)
    assert v.status == "unknown" and v.declared_by is None
    assert "only up to 200000 tokens of context (202752 asked)" in v.reason


def test_a_declaration_naming_a_method_matches_only_that_method(write) -> None:
    catalog = _overlay(write, f"{{formats: {MIX}, quantizationMethod: fp8-int4-custom, source: operator}}")
    mixed = catalog.model("glm-4.6").spec.variant("fp8-int4")  # compressed-tensors
    assert check(mixed, catalog.profile("my-mlu590")).status == "unknown"


def test_a_declaration_does_not_override_a_rule(write) -> None:
    catalog = _overlay(write, "{formats: {default: mlx-4bit-g64, router: bf16}, source: operator}")
    mlx = catalog.model("glm-4.6").spec.variant("mlx-4bit")
    v = check(mlx, catalog.profile("my-mlu590"))
    assert v.status == "unsupported" and "MLX checkpoint format" in v.reason
    assert "my-mlu590 declares it supported, but the rules above refuse it (operator)" in v.reason


def test_a_declaration_needs_a_default_format(write) -> None:
    with pytest.raises(Exception, match="formats needs a 'default' entry"):
        _overlay(write, "{formats: {routedExperts: int4-g128}, source: operator}")
