"""Which Benchmark answers for a replica (estimate/benchmarks.py), the bandwidth efficiency fitted to one
(estimate/fit.py), and estimate()/matrix() with measurements: what is measured, what is a roofline, and by
which Benchmark. Every Benchmark here is a hand-written test document, not a measurement."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from orchestrator.estimate.benchmarks import Replica, emulated_only, exact_match
from orchestrator.estimate.calibration import lookup
from orchestrator.estimate.estimator import estimate
from orchestrator.estimate.fit import fit_bandwidth, fit_benchmarks
from orchestrator.estimate.matrix import matrix
from orchestrator.spec.benchmark import Benchmark

LEVELS = [
    {"concurrency": 1, "requests": 20, "ttftSeconds": {"p50": 0.03, "p95": 0.04},
     "tpotSeconds": {"p50": 0.008, "p95": 0.009}, "outputTokensPerSecond": 120.0, "requestsPerSecond": 0.6,
     "errorRate": 0.0},
    {"concurrency": 4, "requests": 40, "ttftSeconds": {"p50": 0.05, "p95": 0.07},
     "tpotSeconds": {"p50": 0.010, "p95": 0.012}, "outputTokensPerSecond": 400.0, "requestsPerSecond": 2.0,
     "errorRate": 0.0},
]
DOC: dict[str, Any] = {
    "apiVersion": "moxin.dev/v1alpha1", "kind": "Benchmark", "metadata": {"name": "llama-h100"},
    "spec": {"model": "llama-3.1-8b", "variant": "bf16", "hardware": "nvidia-h100-sxm", "engine": "vllm",
             "tensorParallel": 1, "pipelineParallel": 1, "contextTokens": 8192,
             "load": {"promptTokens": 200, "outputTokens": 200}, "curve": LEVELS,
             "measuredAt": "2026-01-10T10:00:00Z", "where": {"endpoint": "http://h:8000", "host": "h"},
             "source": {"tool": "test fixture, not a measurement", "command": "none"}}}


def bench(name: str = "llama-h100", *, emulated: bool = False, at: str = "2026-01-10T10:00:00Z",
          **spec: Any) -> Benchmark:
    doc = copy.deepcopy(DOC)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec, measuredAt=at)
    doc["spec"]["where"]["emulated"] = emulated
    return Benchmark.model_validate(doc)


def replica(**changes: Any) -> Replica:
    base = {"model": "llama-3.1-8b", "variant": "bf16", "hardware": "nvidia-h100-sxm", "engine": "vllm", "tp": 1,
            "pp": 1, "ep": False, "context_tokens": 8192, "kv_cache_dtype": "bf16", "emulated": False}
    return Replica(**{**base, **changes})


@pytest.fixture(scope="module")
def llama(catalog):
    model = catalog.model("llama-3.1-8b")
    return model, model.spec.variant("bf16")


# -- matching -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [{"variant": "fp8"}, {"hardware": "nvidia-h200"}, {"tp": 2}, {"pp": 2},
                                    {"ep": True}, {"model": "qwen3-8b"}, {"engine": "mlx-lm"}])
def test_an_exact_match_needs_the_same_replica(llama, change) -> None:
    assert exact_match([bench()], replica(), llama[1]) is not None
    assert exact_match([bench()], replica(**change), llama[1]) is None


def test_an_overlay_is_its_own_hardware(llama) -> None:
    assert exact_match([bench()], replica(hardware="my-h100"), llama[1]) is None


def test_a_measurement_on_cpu_answers_only_for_an_emulated_pool(llama) -> None:
    cpu = bench("on-cpu", emulated=True)
    assert exact_match([cpu], replica(), llama[1]) is None
    assert emulated_only([cpu], replica()) == ["on-cpu"]
    found = exact_match([cpu], replica(emulated=True), llama[1])
    assert found is not None and found.name == "on-cpu" and "measured on an emulated pool" in found.notes[0]
    # A measurement of the real hardware answers for an emulated pool too, but the CPU one is preferred there.
    assert exact_match([bench("real"), cpu], replica(emulated=True), llama[1]).name == "on-cpu"
    assert exact_match([bench("real"), cpu], replica(), llama[1]).name == "real"


def test_the_same_context_then_kv_dtype_then_the_latest_is_preferred_and_differences_are_said(llama) -> None:
    other_ctx = bench("ctx-4k", at="2026-03-01T00:00:00Z", contextTokens=4096)
    same = bench("ctx-8k")
    newer = bench("ctx-8k-newer", at="2026-02-01T00:00:00Z")
    fp8_kv = bench("kv-fp8", at="2026-04-01T00:00:00Z", kvCacheDtype="fp8")
    assert exact_match([other_ctx, same], replica(), llama[1]).name == "ctx-8k"
    assert exact_match([other_ctx, same, newer], replica(), llama[1]).name == "ctx-8k-newer"
    assert exact_match([fp8_kv, same], replica(), llama[1]).name == "ctx-8k"
    only = exact_match([other_ctx], replica(), llama[1])
    assert only.notes == ("Benchmark ctx-4k was measured at a context of 4096 tokens, the replica's is 8192",)
    assert exact_match([fp8_kv], replica(), llama[1]).notes == (
        "Benchmark kv-fp8 was measured with a fp8 KV cache, the replica's is bf16",)


# -- estimate() with a Benchmark of its replica ---------------------------------------------------------------------

def test_an_estimate_reads_the_measured_curve_at_its_batch_beside_the_roofline(catalog, llama) -> None:
    model, variant = llama
    plain = estimate(model, variant, catalog.profile("nvidia-h100-sxm"), context=8192, batch=2)
    e = estimate(model, variant, catalog.profile("nvidia-h100-sxm"), context=8192, batch=2, benchmarks=[bench()])
    assert plain.speed_source == "roofline" and plain.measured is None and plain.speed_label == "datasheet roofline"
    assert e.speed_source == "measured" and e.speed_label == "measured (Benchmark llama-h100)"
    assert e.decode_step_seconds == plain.decode_step_seconds  # the roofline stays the roofline
    r = e.measured.reading
    assert r.concurrency == 2 and r.how == "interpolated"
    assert math.isclose(r.tpot_p50_s, 0.008 + (0.010 - 0.008) / 3) and math.isclose(r.requests_per_second, 0.6 + (2.0 - 0.6) / 3)
    assert "speed measured by Benchmark llama-h100 at concurrency 2 (interpolated)" in e.reasons
    assert e.to_json()["measured"]["benchmark"] == "llama-h100"


def test_an_estimate_beyond_the_measured_range_reads_nothing_and_says_so(catalog, llama) -> None:
    e = estimate(*llama, catalog.profile("nvidia-h100-sxm"), context=8192, batch=16, benchmarks=[bench()])
    assert e.measured is not None and e.measured.reading is None and e.speed_source == "roofline"
    assert ("batch 16 is beyond the measured range (max concurrency 4) of Benchmark llama-h100: no measured figure "
            "is read there") in e.reasons


def test_a_cpu_measurement_is_not_used_for_the_hardware_and_the_estimate_says_so(catalog, llama) -> None:
    e = estimate(*llama, catalog.profile("nvidia-h100-sxm"), context=8192, benchmarks=[bench("cpu", emulated=True)])
    assert e.measured is None and e.speed_source == "roofline"
    assert any(r.startswith("Benchmark cpu measured this replica on an emulated pool (on CPU)") for r in e.reasons)


# -- the bandwidth efficiency fitted to a Benchmark -----------------------------------------------------------------

def test_the_fitted_efficiency_gives_the_measured_tpot_back_through_the_estimator(catalog, llama) -> None:
    model, variant = llama
    h100 = catalog.profile("nvidia-h100-sxm")
    fitted = fit_bandwidth(bench(), model, h100)
    assert not isinstance(fitted, str)
    table = lookup("vllm", "nvidia-hopper", "float", "dense")
    assert fitted.key == "benchmark/llama-h100" and fitted.benchmark == "llama-h100" and fitted.hardware == h100.name
    assert fitted.compute_efficiency == table.compute_efficiency  # compute kept from the table
    # At the Benchmark's conditions (concurrency 1, context 200 + 200/2), the step is the measured TPOT p50 (8 ms),
    # slower than the table's prediction (0.657 of the bandwidth gives about 6.3 ms).
    again = estimate(model, variant, h100, tp=1, pp=1, context=300, batch=1, calibration=fitted)
    assert math.isclose(again.decode_step_seconds, 0.008, rel_tol=1e-3)
    assert 0.4 < fitted.bandwidth_efficiency < table.bandwidth_efficiency


def test_a_fitted_entry_holds_for_that_hardware_engine_format_and_architecture_class_only(catalog, llama) -> None:
    fits = fit_benchmarks([bench()], catalog.models, catalog.profiles)
    (entry,) = fits.calibrations
    other_dense = catalog.model("llama-3.1-70b")  # another dense model at another parallelism (tp=4)
    e = estimate(other_dense, other_dense.spec.variant("bf16"), catalog.profile("nvidia-h100-sxm"), context=8192,
                 calibrations=fits.calibrations)
    assert e.tensor_parallel == 4 and e.speed_source == "calibrated" and e.calibration["key"] == entry.key
    assert e.speed_label == "datasheet roofline, calibrated from Benchmark llama-h100"
    # Same family, another profile: the table's entry.
    h200 = estimate(*llama, catalog.profile("nvidia-h200"), context=8192, calibrations=fits.calibrations)
    assert h200.calibration["key"] == "vllm/nvidia-hopper/float/dense" and h200.speed_source == "roofline"
    # Another architecture class (MoE) or format class (fp8) on the same profile: the table's entry.
    moe = catalog.model("qwen3-30b-a3b")
    assert estimate(moe, moe.spec.variant("bf16"), catalog.profile("nvidia-h100-sxm"), context=8192,
                    calibrations=fits.calibrations).calibration["benchmark"] is None
    assert estimate(llama[0], llama[0].spec.variant("fp8"), catalog.profile("nvidia-h100-sxm"), context=8192,
                    calibrations=fits.calibrations).calibration["benchmark"] is None


def test_the_latest_benchmark_fits_and_the_older_says_it_was_superseded(catalog) -> None:
    old, new = bench("old"), bench("new", at="2026-02-01T00:00:00Z")
    fits = fit_benchmarks([new, old], catalog.models, catalog.profiles)
    assert [c.benchmark for c in fits.calibrations] == ["new"]
    superseded = "superseded by the later Benchmark new of the same hardware, engine, format class and architecture class"
    assert fits.not_fitted == (("old", superseded),)


def test_what_cannot_be_fitted_says_why(catalog, llama, write) -> None:
    model = llama[0]
    assert fit_bandwidth(bench(emulated=True), model, catalog.profile("nvidia-h100-sxm")).startswith(
        "measured on an emulated pool")
    fast = copy.deepcopy(LEVELS)
    fast[0]["tpotSeconds"] = {"p50": 0.001, "p95": 0.001}
    assert "faster than the whole datasheet bandwidth allows" in fit_bandwidth(bench(curve=fast), model,
                                                                               catalog.profile("nvidia-h100-sxm"))
    mlu = catalog.profile("cambricon-mlu590")
    assert fit_bandwidth(bench(hardware="cambricon-mlu590"), model, mlu) == (
        "cambricon-mlu590 has no datasheet memory bandwidth to take a share of: only a Benchmark of exactly the "
        "replica planned makes it plannable")


# -- matrix() ------------------------------------------------------------------------------------------------------

def test_a_matrix_cell_says_where_its_speed_comes_from(catalog, llama) -> None:
    model = llama[0]
    profiles = [catalog.profile("nvidia-h100-sxm"), catalog.profile("nvidia-h200"), catalog.profile("cambricon-mlu590")]
    benchmarks = [bench()]
    fits = fit_benchmarks(benchmarks, catalog.models, catalog.profiles)
    cells = {(c.variant, c.hardware): c for c in matrix(model, profiles, 8192, benchmarks=benchmarks,
                                                        calibrations=fits.calibrations)}
    measured = cells[("bf16", "nvidia-h100-sxm")]
    assert measured.speed_source == "measured" and measured.measured_by == "llama-h100"
    assert measured.decode_tokens_per_second == 1 / 0.008  # the measured median TPOT at one sequence
    assert measured.to_json()["measuredBy"] == "llama-h100"
    assert cells[("bf16", "nvidia-h200")].speed_source == "roofline"
    assert cells[("fp8", "nvidia-h100-sxm")].speed_source == "roofline"
    assert cells[("bf16", "cambricon-mlu590")].speed_source is None  # no speed at all
