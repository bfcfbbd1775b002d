"""The Benchmark kind: what it accepts and refuses, and a recorded sweep read back through the loader unchanged."""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.bench.load import sweep
from orchestrator.bench.record import Context, Replica, benchmark_document, default_name, from_labels, missing
from orchestrator.bench.workload import Level, Stop, Synthetic, Target
from orchestrator.errors import SpecError
from orchestrator.output import to_yaml
from orchestrator.spec import load_catalog
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.catalog import local_example_dir

POINT = {"concurrency": 1, "requests": 8, "ttftSeconds": {"p50": 0.05, "p95": 0.06},
         "outputTokensPerSecond": 80.0, "requestsPerSecond": 5.0, "errorRate": 0.0}
DOC: dict[str, Any] = {
    "apiVersion": "moxin.dev/v1alpha1", "kind": "Benchmark", "metadata": {"name": "b"},
    "spec": {"model": "tiny-llama", "variant": "bf16", "hardware": "nvidia-h100-sxm", "engine": "vllm",
             "tensorParallel": 1, "pipelineParallel": 1, "load": {"promptTokens": 128, "outputTokens": 64},
             "curve": [POINT], "measuredAt": "2026-12-01T10:00:00Z",
             "where": {"endpoint": "http://127.0.0.1:8000", "host": "h", "emulated": True},
             "source": {"tool": "moxin bench 0.1.0", "command": "moxin bench --url http://127.0.0.1:8000"}}}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["spec"].update(changes)
    return doc


def test_a_minimal_document_validates() -> None:
    doc = Benchmark.model_validate(DOC)
    assert doc.spec.curve[0].ttft_seconds.p95 == 0.06 and doc.spec.curve[0].tpot_seconds is None
    assert doc.spec.measured_at.tzinfo is not None and doc.spec.where.emulated


@pytest.mark.parametrize("change, fragment", [
    ({"curve": []}, "at least 1"),
    ({"curve": [{**POINT, "ttftSeconds": {"p50": float("nan"), "p95": 0.1}}]}, "finite"),
    ({"curve": [{**POINT, "outputTokensPerSecond": float("inf")}]}, "finite"),
    ({"curve": [{**POINT, "requestsPerSecond": -1}]}, "greater than or equal to 0"),
    ({"curve": [{**POINT, "ttftSeconds": {"p50": 0.2, "p95": 0.1}}]}, "percentiles must not decrease"),
    ({"curve": [{**POINT, "errorRate": 1.5}]}, "less than or equal to 1"),
    ({"curve": [{**POINT, "rateRequestsPerSecond": 2.0}]}, "exactly one of concurrency and rateRequestsPerSecond"),
    ({"curve": [POINT, {**POINT, "concurrency": 1}]}, "strictly increasing concurrency"),
    ({"curve": [{**POINT, "concurrency": None, "rateRequestsPerSecond": 4}, {**POINT, "concurrency": None,
                                                                          "rateRequestsPerSecond": 2}]},
     "strictly increasing rateRequestsPerSecond"),
    ({"measuredAt": "2026-12-01T10:00:00"}, "timezone"),
    ({"engine": "sglang"}, "'vllm', 'mlx-lm' or 'vllm-metal'"),
    ({"tensorParallel": 0}, "greater than or equal to 1"),
])
def test_bad_figures_are_refused(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Benchmark.model_validate(with_spec(**change))


def test_concurrency_and_rate_points_may_share_a_curve_each_increasing() -> None:
    rate = {**POINT, "concurrency": None, "rateRequestsPerSecond": 0.5}
    doc = Benchmark.model_validate(with_spec(curve=[POINT, {**POINT, "concurrency": 4}, rate]))
    assert [(p.concurrency, p.rate_requests_per_second) for p in doc.spec.curve] == [(1, None), (4, None), (None, 0.5)]


def test_every_field_of_the_schema_has_a_description() -> None:
    schema = Benchmark.model_json_schema(by_alias=True)
    for name, definition in schema["$defs"].items():
        for field, prop in definition.get("properties", {}).items():
            assert "description" in prop, f"{name}.{field}"
    assert "e2eSeconds" in schema["$defs"]["CurvePoint"]["properties"]


def test_the_catalog_checks_references(write) -> None:
    path = write("b.yaml", to_yaml(with_spec(model="tiny-lama", hardware="apple-m2-max-64g")))
    with pytest.raises(SpecError) as info:
        load_catalog([local_example_dir(), path])
    text = str(info.value)
    assert "spec.model: unknown model 'tiny-lama'" in text and "did you mean 'tiny-llama'" in text
    path = write("c.yaml", to_yaml(with_spec(hardware="apple-m2-max-64g")))
    with pytest.raises(SpecError, match="hardware profile 'apple-m2-max-64g' has no engine 'vllm'"):
        load_catalog([local_example_dir(), path])
    ok = write("d.yaml", to_yaml(DOC))
    assert list(load_catalog([local_example_dir(), ok]).benchmarks) == ["b"]


def test_labels_come_from_flags_then_the_router_and_mlx_lm_needs_no_parallelism() -> None:
    labels = {"deployment": "tiny-chat", "model": "tiny-llama", "variant": "mlx-3bit", "pool": "mac-emu",
              "hardware": "apple-m2-max-64g", "engine": "mlx-lm", "emulated": "true"}
    replica = from_labels(labels, Replica(variant="bf16"))
    assert (replica.model, replica.variant, replica.hardware, replica.engine) == ("tiny-llama", "bf16",
                                                                                  "apple-m2-max-64g", "mlx-lm")
    assert replica.emulated and replica.deployment == "tiny-chat" and missing(replica) == []
    assert missing(from_labels({**labels, "engine": "vllm"}, Replica())) == ["--tp", "--pp"]
    assert missing(Replica(engine="vllm", tensor_parallel=2)) == ["--model-name", "--variant", "--hardware", "--pp"]
    name = default_name(Replica(model="glm-4.5-air", variant="fp8", hardware="x" * 60), datetime(2026, 1, 2, 3, 4, 5))
    assert len(name) <= 63 and name.startswith("glm-4-5-air-fp8-x") and name.endswith("-20260102-030405")


def test_a_recorded_sweep_loads_back_equal(static_server, write) -> None:
    server = static_server(ttft_s=0.02, itl_s=0.002)
    target = Target(url=server.url, model="tiny-chat")
    result = asyncio.run(sweep(target, [Level(concurrency=1), Level(concurrency=2), Level(rate=20.0)],
                               Stop(requests=5), Synthetic(48), 8))
    replica = Replica(model="tiny-llama", variant="mlx-3bit", hardware="apple-m2-max-64g", engine="mlx-lm",
                      emulated=True, deployment="tiny-chat", context_tokens=2048)
    doc = benchmark_document(result, replica, Context(command="moxin bench ...", tool="moxin bench 0.1.0", host="h"),
                             name="tiny-run")
    spec = doc.spec
    assert (spec.tensor_parallel, spec.pipeline_parallel, spec.load.prompt_tokens, spec.load.output_tokens) == (
        1, 1, 48, 8)
    assert [p.concurrency for p in spec.curve] == [1, 2, None] and spec.curve[2].rate_requests_per_second == 20
    assert spec.curve[0].ttft_seconds.p50 >= 0.02 and spec.measured_at == result.started_at
    path = write("bench.yaml", to_yaml(doc.model_dump(mode="json", by_alias=True, exclude_none=True)))
    loaded = load_catalog([local_example_dir(), path]).benchmarks["tiny-run"]
    assert loaded == doc


def test_a_sweep_without_labels_is_not_recorded() -> None:
    with pytest.raises(ValueError, match="--model-name, --variant, --hardware, --engine, --tp, --pp"):
        benchmark_document(None, Replica(), Context(command="c", tool="t", host="h"))  # type: ignore[arg-type]
