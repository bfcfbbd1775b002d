"""Benchmark: the planner on synthetic fleets — solve time, optimality gap, cost growth.

    python benchmarks/plan.py [--sizes 10,100,1000,5000] [--deployments 5,50,200] [--repeat 3]

Fleets of N nodes over 10 pools (NVIDIA, Moore Threads, Ascend, MetaX, Kunlunxin, Apple); deployments
cycle through the catalog's models at a few context/traffic shapes, with demand of 3 req/s per node
of fleet, so the cheap pools fill and the solver has to trade. Prints a table (medians over repeats) and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402

from orchestrator.planner import PlanOptions, plan  # noqa: E402
from orchestrator.spec import load_catalog  # noqa: E402

POOLS = [("h100", "nvidia-h100-sxm", 2.5), ("h200", "nvidia-h200", 3.6), ("a100", "nvidia-a100-80g", 1.6),
         ("l40s", "nvidia-l40s", 0.9), ("rtx4090", "nvidia-rtx4090", 0.4), ("s5000", "moorethreads-s5000", 1.0),
         ("ascend", "huawei-ascend-910b", 1.3), ("metax", "metax-c500", 0.9), ("kunlun", "kunlunxin-p800", 1.0),
         ("studio", "apple-m3-ultra-512g", 0.9)]
MODELS = [("qwen3-30b-a3b", 16384, 1000, 300, 0.05), ("llama-3.1-8b", 8192, 800, 200, 0.03),
          ("glm-4.5-air", 32768, 2000, 400, 0.06), ("llama-3.1-70b", 16384, 1000, 300, 0.06),
          ("glm-4.6", 131072, 4000, 500, 0.08), ("qwen3-235b-a22b", 32768, 2000, 400, 0.08)]


def write_instance(nodes: int, deployments: int, out: Path) -> Path:
    per_pool = max(1, nodes // len(POOLS))
    text = "apiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\nspec:\n  pools:\n"
    for name, hw, price in POOLS:
        text += f"    - {{name: {name}, hardware: {hw}, nodes: {per_pool}, usdPerDeviceHour: {price}}}\n"
    # Demand: 3 req/s per node of fleet, spread over the deployments (a busy fleet: the cheap pools fill).
    rps = 3.0 * per_pool * len(POOLS) / deployments
    for i in range(deployments):
        model, ctx, prompt, output, tpot = MODELS[i % len(MODELS)]
        scale = 0.5 + (i * 7919 % 100) / 100  # 0.5x .. 1.5x, deterministic
        text += (f"---\napiVersion: moxin.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: d{i}}}\n"
                 f"spec: {{model: {model}, contextTokens: {ctx}, traffic: {{requestsPerSecond: {rps * scale:.3f}, "
                 f"promptTokens: {prompt}, outputTokens: {output}}}, slo: {{tpotSeconds: {tpot}}}, "
                 f"replicas: {{min: 1}}}}\n")
    path = out / f"bench-{nodes}-{deployments}.yaml"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--deployments", default="5,50,200")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gap", type=float, default=PlanOptions().gap)
    args = parser.parse_args()
    print(f"machine: {describe()}\n")
    print(f"{'nodes':>6s} {'deploy':>6s} {'cands':>6s} {'total s':>8s} {'solve s':>8s} {'gap':>7s} "
          f"{'status':>10s} {'served':>7s} {'USD/h':>10s} {'USD/h/rps':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in [int(x) for x in args.sizes.split(",")]:
            for deps in [int(x) for x in args.deployments.split(",")]:
                path = write_instance(nodes, deps, Path(tmp))
                catalog = load_catalog([path])
                fleet, deployments = catalog.fleets["bench"], list(catalog.deployments.values())
                totals, solves, doc = [], [], None
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    doc = plan(fleet, deployments, catalog, options=PlanOptions(gap=args.gap))
                    totals.append(time.perf_counter() - t0)
                    solves.append(doc.status.solve_seconds)
                st = doc.status
                served = st.served_requests_per_second / max(st.demand_requests_per_second, 1e-9)
                per_rps = st.cost_usd_per_hour / max(st.served_requests_per_second, 1e-9)
                print(f"{nodes:6d} {deps:6d} {st.candidates:6d} {statistics.median(totals):8.2f} "
                      f"{statistics.median(solves):8.2f} {st.optimality_gap:7.4f} {st.solver_status:>10s} "
                      f"{served:7.1%} {st.cost_usd_per_hour:10.1f} {per_rps:9.2f}", flush=True)


if __name__ == "__main__":
    main()
