"""Fit vLLM calibration entries to published serving figures, and show how far the estimator is from each.

    python benchmarks/calibration.py

For every figure in ``orchestrator.estimate.calibration.MEASUREMENTS`` it runs ``estimate()`` at the
figure's conditions (model, variant, hardware, tensor parallelism, batch = the benchmark's concurrency,
context = mean prompt + half the mean output) and prints: the roofline (every efficiency 1.0), the
published figure, the efficiency the estimator needs to reproduce it, and the estimator's error before
(the old uncalibrated vLLM default, bandwidth 0.6 and compute 0.5) and after (the calibration table as it
is now). Then, per fitted entry, the geometric mean of the efficiencies its figures need next to the
value in the table, and the published figures left out of the fit with the reason. Prints the machine.
Pure arithmetic: no engine, no GPU.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import describe

from orchestrator.estimate.calibration import MEASUREMENTS, TABLE, Calibration, Measurement
from orchestrator.estimate.estimator import Estimate, estimate
from orchestrator.spec import load_catalog
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.engine import ENGINE_DEFAULTS

OFF_CATALOG = Path(__file__).resolve().parent.parent / "tests" / "data" / "calibration"
OLD_DEFAULT = Calibration("vllm/*/* (before)", "vllm", "*", "*", 0.6, 0.5, False, "the default before calibration")


def at(catalog: Catalog, m: Measurement, calibration: Calibration | None = None) -> Estimate:
    """``estimate()`` at the conditions ``m`` was measured under (the table's entry unless one is given)."""
    model = catalog.model(m.model)
    if m.prefill_tokens_per_second is not None:
        settings = ENGINE_DEFAULTS.model_copy(update={"default_context_tokens": m.prompt_tokens})
        return estimate(model, model.spec.variant(m.variant), catalog.profile(m.hardware), tp=m.tensor_parallel,
                        pp=1, context=m.prompt_tokens, batch=1, settings=settings, calibration=calibration)
    return estimate(model, model.spec.variant(m.variant), catalog.profile(m.hardware), tp=m.tensor_parallel, pp=1,
                    context=m.context_tokens, batch=m.batch, calibration=calibration)


def with_efficiency(base: Calibration, bandwidth: float | None = None, compute: float | None = None) -> Calibration:
    return Calibration(f"{base.key} (fit)", base.engine, base.family, base.format_class,
                       base.bandwidth_efficiency if bandwidth is None else bandwidth,
                       base.compute_efficiency if compute is None else compute, False, "fit")


@dataclass(frozen=True)
class Row:
    m: Measurement
    kind: str
    """'decode' (figure: seconds per output token) or 'prefill' (figure: prompt tokens per second)."""
    roofline: float
    published: float
    implied: float
    before: float
    after: float
    entry: str

    def error(self, predicted: float) -> float:
        """The estimator's speed against the published one: + too fast, - too slow."""
        return self.published / predicted - 1 if self.kind == "decode" else predicted / self.published - 1


def implied_bandwidth(catalog: Catalog, m: Measurement, entry: Calibration) -> float:
    """The bandwidth efficiency at which ``estimate()`` gives the published step time (bisection in log)."""
    lo, hi = 1e-3, 1.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        step = at(catalog, m, with_efficiency(entry, bandwidth=mid)).decode_step_seconds
        assert step is not None
        lo, hi = (mid, hi) if step > m.decode_step_seconds else (lo, mid)
    return math.sqrt(lo * hi)


def fit_row(catalog: Catalog, m: Measurement) -> Row:
    now = at(catalog, m)
    assert now.calibration is not None
    entry = next(c for c in TABLE if c.key == now.calibration["key"])
    ideal = at(catalog, m, with_efficiency(entry, 1.0, 1.0))
    before = at(catalog, m, OLD_DEFAULT)
    if m.prefill_tokens_per_second is not None:
        assert ideal.prefill_tokens_per_second and before.prefill_tokens_per_second and now.prefill_tokens_per_second
        return Row(m, "prefill", ideal.prefill_tokens_per_second, m.prefill_tokens_per_second,
                   m.prefill_tokens_per_second / ideal.prefill_tokens_per_second, before.prefill_tokens_per_second,
                   now.prefill_tokens_per_second, entry.key)
    assert m.decode_step_seconds and ideal.decode_step_seconds and before.decode_step_seconds and now.decode_step_seconds
    return Row(m, "decode", ideal.decode_step_seconds, m.decode_step_seconds, implied_bandwidth(catalog, m, entry),
               before.decode_step_seconds, now.decode_step_seconds, entry.key)


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass(frozen=True)
class Saturated:
    """A run that sent every prompt at once: a consistency check at a large batch, not a fit."""

    name: str
    model: str
    variant: str
    hardware: str
    tensor_parallel: int
    peak_output_tokens_per_second: float
    median_tpot_seconds: float
    source: str
    batch: int = 1000
    """vLLM's default max_num_seqs on an H100/H200 API server is 1,024 (vllm/engine/arg_utils.py,
    get_batch_defaults), so all 1,000 prompts can be in flight; how many were is not published."""
    context_tokens: int = 314
    """ShareGPT's mean prompt (214.5) + half its mean output (199.9 / 2) in these runs."""


SATURATED = (
    Saturated("glm-4.5-air/h100x4/sharegpt", "glm-4.5-air", "bf16", "nvidia-h100-sxm", 4, 10558, 105.53e-3,
              "docs.gpustack.ai/latest/performance-lab/glm-4.5-air/h100 (vLLM 0.11.0, 1,000 ShareGPT prompts)"),
    Saturated("glm-4.6/h200x8/sharegpt", "glm-4.6", "bf16", "nvidia-h200", 8, 7158, 145.75e-3,
              "docs.gpustack.ai/latest/performance-lab/glm-4.x/h200 (vLLM 0.11.0, 1,000 ShareGPT prompts)"),
)


def saturated_check(catalog: Catalog, s: Saturated, calibration: Calibration | None) -> Estimate:
    model = catalog.model(s.model)
    settings = ENGINE_DEFAULTS.model_copy(update={"max_num_seqs": 1024})
    return estimate(model, model.spec.variant(s.variant), catalog.profile(s.hardware), tp=s.tensor_parallel, pp=1,
                    context=s.context_tokens, batch=s.batch, settings=settings, calibration=calibration)


@dataclass(frozen=True)
class Excluded:
    """A published figure left out of the fit, and why."""

    what: str
    where: str
    why: str


EXCLUDED = (
    Excluded(what=("GLM-4.5-Air BF16, 4x H100 TP4, vLLM 0.11.0: 1,000 ShareGPT prompts sent at once, 7,909.5 total / "
                   "3,815.7 output tok/s, mean TPOT 134.47 ms"),
             where="docs.gpustack.ai/latest/performance-lab/glm-4.5-air/h100",
             why=("saturated: the batch in flight is not published (up to 1,000 queued, KV-limited) and every TPOT "
                  "mixes decode with chunked prefill of the queue (checked above at batch 1,000 instead); the page's "
                  "32K-prompt block repeats its A100 sibling's numbers, so no prefill figure either")),
    Excluded(what=("GLM-4.6 BF16, 8x H200 TP8, vLLM 0.11.0: 1,000 ShareGPT prompts sent at once, 6,030.9 total / "
                   "2,908.0 output tok/s, mean TPOT 197.85 ms"),
             where="docs.gpustack.ai/latest/performance-lab/glm-4.x/h200",
             why=("saturated (as above, checked at batch 1,000); the same page's concurrency-4 and 32K-prompt runs "
                  "are fitted")),
    Excluded(what=("Qwen3-8B on 1x H100, vLLM 0.9.2: 1,000 ShareGPT prompts at once, BF16 13,305 tok/s, FP8 static "
                   "16,453, FP8 dynamic 15,276"),
             where=("docs.gpustack.ai/latest/performance-lab/references/"
                    "the-impact-of-quantization-on-vllm-inference-performance"),
             why="saturated; an FP8/BF16 ratio only, no batch or step time"),
    Excluded(what="GLM-4.6 BF16 on Ascend A3, 8 cards / 16 dies TP16, xLLM, concurrency 1: 58.99 output tok/s",
             where="zai-org/GLM-4.5 example/Ascend_NPU/result.md",
             why="xLLM is not an engine moxin runs; no vLLM-Ascend A3 figure found"),
    Excluded(what="GLM-4.5-Air MLX 3-bit on M2 Max 64 GB, mlx-lm: 25.564 tok/s",
             where="facts/models.md (the seed's run)",
             why="already the mlx-lm/apple/mlx-affine entry (tests/unit/estimate/test_estimator.py)"),
)


def main() -> None:
    catalog = load_catalog([OFF_CATALOG])
    rows = [fit_row(catalog, m) for m in MEASUREMENTS]
    print(f"machine: {describe()}\n")
    print("decode: ms per output token at the figure's batch and context; prefill: prompt tokens per second")
    print("implied: the efficiency (bandwidth for decode, compute for prefill) that reproduces the figure")
    print("err: the estimator's speed against the published speed (+ too fast, - too slow)")
    print(f"{'figure':26s} {'kind':7s} {'tp':>2s} {'b':>2s} {'roofline':>9s} {'published':>9s} {'implied':>7s} "
          f"{'before':>9s} {'err':>6s} {'after':>9s} {'err':>6s}  entry")
    for r in rows:
        scale = 1e3 if r.kind == "decode" else 1.0
        fmt = "{:9.2f}" if r.kind == "decode" else "{:9.0f}"
        print(f"{r.m.id:26s} {r.kind:7s} {r.m.tensor_parallel:2d} {r.m.batch:2d} {fmt.format(r.roofline * scale)} "
              f"{fmt.format(r.published * scale)} {r.implied:7.4f} {fmt.format(r.before * scale)} "
              f"{r.error(r.before):+6.0%} {fmt.format(r.after * scale)} {r.error(r.after):+6.0%}  {r.entry}")
    print("\nfitted entries (geometric mean of what their figures need; the table holds it rounded):")
    for c in TABLE:
        if not c.fitted_to:
            continue
        mine = [r for r in rows if r.m.id in c.fitted_to]
        bw = [r.implied for r in mine if r.kind == "decode"]
        cp = [r.implied for r in mine if r.kind == "prefill"]
        fit_bw = f"{geometric_mean(bw):.4f}" if bw else "-"
        fit_cp = f"{geometric_mean(cp):.4f}" if cp else "-"
        print(f"  {c.key:34s} bandwidth {c.bandwidth_efficiency:<6g} (fit {fit_bw})  "
              f"compute {c.compute_efficiency:<6g} (fit {fit_cp})")
    print("\nsaturated runs (1,000 prompts at once), a check at batch 1,000, not fitted: published peak output "
          "tok/s (one-second window) and median TPOT (steps mix decode with chunked prefill) against the "
          "estimator's decode-only step at batch 1,000")
    print(f"{'run':28s} {'peak tok/s':>10s} {'before':>8s} {'after':>8s}   {'median TPOT ms':>14s} {'before':>7s} "
          f"{'after':>7s}")
    for sat in SATURATED:
        old, new = saturated_check(catalog, sat, OLD_DEFAULT), saturated_check(catalog, sat, None)
        assert old.aggregate_decode_tokens_per_second and new.aggregate_decode_tokens_per_second
        assert old.decode_step_seconds and new.decode_step_seconds
        print(f"{sat.name:28s} {sat.peak_output_tokens_per_second:10.0f} {old.aggregate_decode_tokens_per_second:8.0f} "
              f"{new.aggregate_decode_tokens_per_second:8.0f}   {sat.median_tpot_seconds * 1e3:14.1f} "
              f"{old.decode_step_seconds * 1e3:7.1f} {new.decode_step_seconds * 1e3:7.1f}")
    print("\nleft out of the fit:")
    for x in EXCLUDED:
        print(f"  - {x.what} [{x.where}]\n      {x.why}")


if __name__ == "__main__":
    main()
