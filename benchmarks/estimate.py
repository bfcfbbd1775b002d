"""Benchmark: `moxin matrix` over every catalog model x every profile — time per cell.

    python benchmarks/estimate.py [--repeat 5]

Prints a table (median and p90 milliseconds per cell per model, over repeats) and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe  # noqa: E402

from orchestrator.estimate.matrix import matrix  # noqa: E402
from orchestrator.spec import load_catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--context", type=int, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    catalog = load_catalog()
    load_ms = (time.perf_counter() - t0) * 1e3
    profiles = list(catalog.profiles.values())
    print(f"machine: {describe()}")
    print(f"catalog load: {load_ms:.0f} ms ({len(profiles)} profiles, {len(catalog.models)} models)\n")
    print(f"{'model':18s} {'cells':>5s} {'median ms/cell':>15s} {'p90 ms/cell':>12s} {'fits':>5s}")
    all_cells = []
    for name, model in catalog.models.items():
        per_cell = []
        fits = 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            cells = matrix(model, profiles, args.context)
            per_cell.append((time.perf_counter() - start) * 1e3 / len(cells))
            fits = sum(c.fits for c in cells)
        all_cells += per_cell
        q = statistics.quantiles(per_cell, n=10)[-1] if len(per_cell) > 1 else per_cell[0]
        print(f"{name:18s} {len(cells):5d} {statistics.median(per_cell):15.2f} {q:12.2f} {fits:5d}")
    print(f"\nall models: median {statistics.median(all_cells):.2f} ms per cell")


if __name__ == "__main__":
    main()
