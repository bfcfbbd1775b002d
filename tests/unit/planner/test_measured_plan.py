"""Plans from measurements: a Benchmark of exactly a candidate gives its capacity (the measured curve), a Benchmark of
the same hardware calibrates the others, and the plan says which numbers are measured and by which Benchmark.

The Benchmarks under tests/data/measured are hand-written test fixtures, not measurements (their source says so)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.estimate.benchmarks import ExactMatch
from orchestrator.planner import plan, plan_catalog
from orchestrator.planner.candidates import measured_capacity
from orchestrator.spec import load_catalog

ROOT = Path(__file__).resolve().parents[3]
MEASURED = ROOT / "tests" / "data" / "measured"
TINY = ROOT / "manifests" / "local" / "tiny-llama.yaml"
NOSPEED = MEASURED / "nospeed-fleet.yaml"
TINY_BENCH = MEASURED / "tiny-nospeed.fixture.yaml"
CAMBRICON = ROOT / "manifests" / "examples" / "cambricon"
GLM_BENCH = MEASURED / "glm-46-my-mlu590.fixture.yaml"
MEASURE = "--record -o bench.yaml` and plan again with `moxin plan -f ... -f bench.yaml`"


def test_the_fixtures_say_they_are_not_measurements() -> None:
    catalog = load_catalog([TINY, NOSPEED, TINY_BENCH, CAMBRICON, GLM_BENCH])
    assert len(catalog.benchmarks) == 2
    for b in catalog.benchmarks.values():
        assert b.spec.source.tool == "test fixture, not a measurement"


# -- a pool with no datasheet speed, emulated on CPU, serving the tiny model --------------------------------------

def test_a_pool_without_datasheet_speed_is_rejected_with_the_command_that_measures_it() -> None:
    catalog = load_catalog([TINY, NOSPEED])
    profile = catalog.profile("test-nospeed").spec
    assert profile.memory_bandwidth_gbps is None and not any(profile.peak_tflops.model_dump().values())
    doc = plan_catalog(catalog)
    assert doc.spec.assignments == []
    (unplaced,) = doc.spec.unplaced
    assert unplaced.reasons[0].startswith("no speed can be predicted where a variant fits: measure it")
    assert unplaced.reasons[1].startswith("bf16 on nospeed-emu: tp=1 pp=1: speed unknown: decode speed unknown: "
                                          "test-nospeed has no published memory bandwidth")
    assert "-H test-nospeed --tp 1 --pp 1 --context 2048" in unplaced.reasons[1]
    assert unplaced.reasons[1].endswith(MEASURE)


def test_with_a_benchmark_of_the_replica_the_pool_is_planned_from_the_curve() -> None:
    doc = plan_catalog(load_catalog([TINY, NOSPEED, TINY_BENCH]))
    assert doc.spec.unplaced == []
    (a,) = doc.spec.assignments
    assert (a.deployment, a.variant, a.pool, a.hardware, a.emulated, a.replicas) == (
        "tiny-nospeed", "bf16", "nospeed-emu", "test-nospeed", True, 1)
    # Every level meets the SLO (TTFT 2 s, TPOT 100 ms): capacity is the highest measured level, 4 sequences.
    p = a.predicted
    assert (p.capacity_requests_per_second, p.batch, p.ttft_seconds, p.tpot_seconds) == (2.9, 4, 0.2, 0.026)
    assert p.decode_tokens_per_second == 50.0  # 1 / TPOT p50 (20 ms)
    assert p.measured_by == "tiny-bf16-test-nospeed-fixture" and p.calibrated_from is None
    assert a.why.binding == "measured-range"
    summary = a.why.summary
    assert summary.startswith("1 x bf16 on nospeed-emu (tp=1 pp=1): 2.9 req/s per replica at 4 concurrent sequences "
                              "(batch bound by the highest concurrency Benchmark tiny-bf16-test-nospeed-fixture "
                              "measured)")
    assert "capacity measured by Benchmark tiny-bf16-test-nospeed-fixture (TTFT and TPOT are its p95" in summary
    assert "beyond the measured range (max concurrency 4)" in summary
    assert "measured on an emulated pool: its figures describe the CPU it ran on, as this emulated pool does" in summary
    assert a.launch.platform == "cpu"  # the engine runs on the CPU the pool is emulated on
    assert doc.to_json()["spec"]["assignments"][0]["predicted"]["measuredBy"] == "tiny-bf16-test-nospeed-fixture"


def test_a_cpu_measurement_does_not_make_real_hardware_plannable(write) -> None:
    real = NOSPEED.read_text().replace("      emulate: cpu\n", "")
    catalog = load_catalog([TINY, write("real.yaml", real), TINY_BENCH])
    doc = plan_catalog(catalog)
    assert doc.spec.assignments == [] and doc.spec.unplaced[0].reasons[1].endswith(MEASURE)


def test_a_measured_curve_that_misses_the_slo_rejects_the_candidate_with_the_figures(write) -> None:
    strict = NOSPEED.read_text().replace("tpotSeconds: 0.1}", "tpotSeconds: 0.005}")
    doc = plan_catalog(load_catalog([TINY, write("strict.yaml", strict), TINY_BENCH]))
    assert doc.spec.assignments == []
    (unplaced,) = doc.spec.unplaced
    assert unplaced.reasons[1] == (
        "bf16 on nospeed-emu: tp=1 pp=1: measured by Benchmark tiny-bf16-test-nospeed-fixture: misses the SLO at the "
        "lowest measured concurrency (1): TPOT p95 12 ms > target 5 ms")


def test_what_the_replica_holds_caps_the_measured_concurrency() -> None:
    catalog = load_catalog([TINY, NOSPEED, TINY_BENCH])
    deployment = catalog.deployments["tiny-nospeed"]
    match = ExactMatch(catalog.benchmarks["tiny-bf16-test-nospeed-fixture"], ())
    cap = measured_capacity(match, deployment, max_batch=3, binding_at_max="kv-memory")
    assert cap.batch == 3 and cap.binding == "kv-memory"
    assert math.isclose(cap.requests_per_second, 2.25 + (2.9 - 2.25) / 2)  # between the levels at 2 and 4
    assert any(n.startswith("3 concurrent sequences are all the replica holds") for n in cap.notes)


# -- the Cambricon example ---------------------------------------------------------------------------------------------

def test_the_cambricon_deployment_is_unplaced_without_a_benchmark() -> None:
    (unplaced,) = plan_catalog(load_catalog([CAMBRICON])).spec.unplaced
    assert unplaced.deployment == "glm-46-mlu" and unplaced.reasons[1].endswith(MEASURE)


def test_with_the_fixture_the_cambricon_deployment_is_planned_on_the_mlu590_with_the_mlu_plugin() -> None:
    doc = plan_catalog(load_catalog([CAMBRICON, GLM_BENCH]))
    assert doc.spec.unplaced == []
    (a,) = doc.spec.assignments
    assert (a.deployment, a.variant, a.pool, a.hardware, a.engine, a.tensor_parallel, a.pipeline_parallel) == (
        "glm-46-mlu", "fp8-int4", "mlu590", "my-mlu590", "vllm", 4, 1)
    # TPOT p95: 64 ms at 4, 95 ms at 8; the 80 ms target is reached at 4 + 16/31*4 = 6.06 -> 6 sequences, where the
    # curve gives 0.113 + (0.159 - 0.113) / 2 = 0.136 req/s; 0.5 req/s needs 4 replicas (16 devices: both nodes).
    p = a.predicted
    assert (p.batch, p.capacity_requests_per_second, p.tpot_seconds, p.ttft_seconds) == (6, 0.136, 0.0795, 3.95)
    assert a.replicas == 4 and a.why.binding == "tpot-slo" and p.measured_by == "glm-46-fp8-int4-my-mlu590-fixture"
    assert "capacity measured by Benchmark glm-46-fp8-int4-my-mlu590-fixture" in a.why.summary
    assert "TPOT p95 reaches the 80 ms target at concurrency 6.06, between the measured 4 and 8" in a.why.summary
    assert "supported as declared by my-mlu590" in a.why.summary
    assert "uncertain datasheet figure: memoryGB" in a.why.summary  # the memory fit still rests on it
    # FP8 + Int4 through the vllm-mlu plugin.
    assert a.launch.platform == "mlu" and a.launch.env["VLLM_PLUGINS"] == "mlu,mlu_hijack"
    assert a.launch.argv[a.launch.argv.index("--served-model-name") + 1] == "glm-46-mlu"
    # tp=8 was not measured: still unknown, with its own measuring command.
    (rejected,) = a.why.rejected
    assert rejected.kind == "unknown-speed" and rejected.reason.startswith("tp=8 pp=1: speed unknown")


def test_a_benchmark_of_the_base_profile_is_not_one_of_the_overlay(write) -> None:
    base = GLM_BENCH.read_text().replace("hardware: my-mlu590", "hardware: cambricon-mlu590")
    doc = plan_catalog(load_catalog([CAMBRICON, write("base.yaml", base)]))
    assert doc.spec.assignments == [] and doc.spec.unplaced[0].reasons[1].endswith(MEASURE)


# -- calibrated from a Benchmark of the same hardware ------------------------------------------------------------------

CHAT = """---
apiVersion: moxin.dev/v1alpha1
kind: Fleet
metadata: {name: f}
spec:
  pools:
    - {name: h100, hardware: nvidia-h100-sxm, nodes: 1, usdPerDeviceHour: 2.5}
---
apiVersion: moxin.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec: {model: llama-3.1-70b, variants: [bf16], contextTokens: 8192,
       traffic: {requestsPerSecond: 1, promptTokens: 500, outputTokens: 200}, slo: {tpotSeconds: 0.1}}
"""
# A test fixture, not a measurement: Llama-3.1-8B on one H100 at 8 ms per token (the table predicts about 6.3 ms).
LLAMA_8B_H100 = """---
apiVersion: moxin.dev/v1alpha1
kind: Benchmark
metadata: {name: llama-8b-h100-fixture}
spec:
  model: llama-3.1-8b
  variant: bf16
  hardware: nvidia-h100-sxm
  engine: vllm
  tensorParallel: 1
  pipelineParallel: 1
  load: {promptTokens: 200, outputTokens: 200}
  curve:
    - {concurrency: 1, requests: 20, ttftSeconds: {p50: 0.03, p95: 0.04}, tpotSeconds: {p50: 0.008, p95: 0.009},
       outputTokensPerSecond: 120, requestsPerSecond: 0.6, errorRate: 0}
  measuredAt: "2026-01-10T10:00:00Z"
  where: {endpoint: "http://h:8000", host: h}
  source: {tool: "test fixture, not a measurement", command: none}
"""


def test_another_model_on_measured_hardware_uses_the_fitted_efficiency_and_says_so(write) -> None:
    before = plan_catalog(load_catalog([write("chat.yaml", CHAT)]))
    after = plan_catalog(load_catalog([write("chat.yaml", CHAT), write("bench.yaml", LLAMA_8B_H100)]))
    (a0,), (a1,) = before.spec.assignments, after.spec.assignments
    assert a0.predicted.calibrated_from is None and "roofline" not in a0.why.summary
    assert a1.predicted.calibrated_from == "llama-8b-h100-fixture" and a1.predicted.measured_by is None
    assert ("capacity from the datasheet roofline, bandwidth efficiency calibrated from Benchmark "
            "llama-8b-h100-fixture") in a1.why.summary
    # The measurement is slower than the table's efficiency: each replica serves less.
    assert a1.predicted.capacity_requests_per_second < a0.predicted.capacity_requests_per_second


@pytest.mark.parametrize("with_benchmarks", [False, True])
def test_with_benchmarks_given_a_roofline_capacity_says_it_is_one(write, with_benchmarks) -> None:
    other = LLAMA_8B_H100.replace("hardware: nvidia-h100-sxm", "hardware: nvidia-h200")  # another profile
    paths = [write("chat.yaml", CHAT)] + ([write("bench.yaml", other)] if with_benchmarks else [])
    fleet_catalog = load_catalog(paths)
    doc = plan(fleet_catalog.fleets["f"], list(fleet_catalog.deployments.values()), fleet_catalog)
    (a,) = doc.spec.assignments
    said = "capacity from the datasheet roofline (calibration vllm/nvidia-hopper/float/dense)" in a.why.summary
    assert said == with_benchmarks
    assert a.predicted.measured_by is None and a.predicted.calibrated_from is None
