"""Roofline sanity over the whole catalog: no estimate beats bandwidth or peak compute."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.estimate.estimator import estimate
from orchestrator.estimate.parameters import count_parameters
from orchestrator.spec import load_catalog
from orchestrator.spec.formats import FORMATS

CATALOG = load_catalog()
CASES = [(m, v.name, p) for m, model in CATALOG.models.items() for v in model.spec.variants for p in CATALOG.profiles]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.sampled_from([1, 4, 32, 128]), st.sampled_from([512, 4096, 32768]))
def test_no_estimate_exceeds_bandwidth_or_compute(case, batch: int, context: int) -> None:
    model_name, variant_name, hw = case
    model, profile = CATALOG.model(model_name), CATALOG.profile(hw)
    variant = model.spec.variant(variant_name)
    e = estimate(model, variant, profile, batch=batch, context=context)
    if e.decode_tokens_per_second is None:
        return
    spec = profile.spec
    active = count_parameters(model.spec.architecture).active
    # Compute roof: every generated token costs at least 2 FLOPs per active weight, spread over all devices.
    peak = max(v for v in spec.peak_tflops.model_dump().values() if v) * 1e12
    assert e.aggregate_decode_tokens_per_second * 2 * active <= peak * e.devices * 1.0001
    # Bandwidth roof: one decode step reads at least every active weight once (at the variant's smallest
    # bits per weight) for the first token of the batch, split over the tensor-parallel devices of each stage.
    min_bpw = min(FORMATS[f].bits_per_weight for f in variant.formats.values())
    min_step_bytes_per_device = active * min_bpw / 8 / e.devices
    assert e.decode_tokens_per_second <= spec.memory_bandwidth_gbps * 1e9 / min_step_bytes_per_device
    assert e.prefill_tokens_per_second is None or e.prefill_tokens_per_second * 2 * active <= peak * e.devices * 1.0001
