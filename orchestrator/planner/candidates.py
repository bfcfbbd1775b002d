"""Candidates: every way one replica of a deployment can run on one pool, with its capacity under the SLO.

Pure. A candidate is (variant, pool, tp, pp) that the compatibility matrix supports and whose replica
holds at least one sequence at the deployment's full context. Its capacity comes from a Benchmark of exactly
that replica where one is given (``measured_capacity``: the measured curve, estimate/measured.py; matching rules
in estimate/benchmarks.py), else from the estimator's batch model (see ``capacity``) on the datasheet roofline,
whose bandwidth efficiency a Benchmark of the same hardware may have calibrated (estimate/fit.py); rejected
combinations keep their reason, for the plan's explanations.
A candidate also carries what its numbers rest on that moxin has not checked: uncertain datasheet
figures, and support the operator declared; the solver ranks uncertain candidates below certain ones at
equal cost, and the plan says both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.compat import check, pp_choices, tp_choices
from orchestrator.estimate.benchmarks import ExactMatch, Replica, exact_match, resolved_kv
from orchestrator.estimate.calibration import Calibration
from orchestrator.estimate.datasheet import UncertainFigure, is_speed_figure
from orchestrator.estimate.estimator import Estimate, estimate
from orchestrator.estimate.measured import Target, capacity_from_curve
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.deployment import ModelDeployment
from orchestrator.spec.engine import ENGINE_DEFAULTS
from orchestrator.spec.fleet import Pool
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.model import Model, Variant


@dataclass(frozen=True)
class Capacity:
    requests_per_second: float
    batch: int
    """Concurrent sequences the replica runs at that rate."""
    ttft_s: float | None
    """Predicted TTFT (measured: the p95 read from the curve; None where the curve has none)."""
    tpot_s: float | None
    """Predicted TPOT (measured: the p95 read from the curve)."""
    decode_tokens_per_second: float | None
    binding: str
    """What stops a larger batch: 'tpot-slo', 'ttft-slo', 'kv-memory', 'max-num-seqs' or 'measured-range' (the
    highest measured concurrency meets the SLO; nothing above it is assumed)."""
    measured_by: str | None = None
    """The Benchmark whose curve gave these figures; None: the datasheet roofline."""
    calibration: str | None = None
    """The calibration entry of a roofline capacity."""
    calibrated_from: str | None = None
    """The Benchmark that calibration entry is fitted to, if any."""
    notes: tuple[str, ...] = ()
    """How the measured figures were read, and how the measurement differs from the deployment."""

    @property
    def source(self) -> str:
        """Where these figures come from, as a clause of the plan's why."""
        if self.measured_by:
            return (f"capacity measured by Benchmark {self.measured_by} (TTFT and TPOT are its p95, read linearly in "
                    "concurrency between measured levels); memory fit from the datasheet")
        if self.calibrated_from:
            return (f"capacity from the datasheet roofline, bandwidth efficiency calibrated from Benchmark "
                    f"{self.calibrated_from}")
        return f"capacity from the datasheet roofline (calibration {self.calibration})"


@dataclass(frozen=True)
class Candidate:
    deployment: str
    model: str
    variant: str
    pool: str
    hardware: str
    engine: str
    tp: int
    pp: int
    capacity: Capacity
    usd_per_hour: float | None
    """Cost of one replica; None when the pool has no price."""
    uncertain: tuple[UncertainFigure, ...] = ()
    """The uncertain datasheet figures its fit and capacity rest on."""
    declared_by: str | None = None
    """The profile whose declaredSupport makes the variant supported here (moxin's rules alone would not)."""
    declared_source: str | None = None
    """That declaration's source."""

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def caveats(self) -> list[str]:
        """What a reader of the plan must know about this candidate's numbers, one sentence each."""
        out = [f"supported as declared by {self.declared_by} ({self.declared_source}), not checked by moxin"
               ] if self.declared_by else []
        return out + [str(u) for u in self.uncertain]

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.deployment, self.variant, self.pool, self.tp, self.pp)

    @property
    def label(self) -> str:
        return f"{self.variant} on {self.pool} (tp={self.tp} pp={self.pp})"


@dataclass(frozen=True)
class Rejection:
    variant: str
    pool: str
    reason: str
    kind: str
    """'unsupported', 'no-fit', 'slo' or 'unknown-speed'."""


# The profile an emulated pool's engines actually run on (the pool is planned as its declared hardware).
EMULATION_PROFILE = {"cpu": "cpu-x86"}


@dataclass
class DeploymentCandidates:
    deployment: ModelDeployment
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class EstimateCache:
    """Estimates keyed by names and numbers (the planner asks the same questions many times). ``calibrations``:
    entries fitted to Benchmarks (estimate/fit.py), used before the table's where they match."""

    def __init__(self, calibrations: Sequence[Calibration] = ()) -> None:
        self._cache: dict[tuple, Estimate] = {}
        self._calibrations = tuple(calibrations)

    def __call__(self, model: Model, variant: Variant, profile: HardwareProfile, tp: int, pp: int, ctx: int,
                 batch: int, kv: str) -> Estimate:
        key = (model.name, variant.name, profile.name, tp, pp, ctx, batch, kv)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = estimate(model, variant, profile, tp=tp, pp=pp, context=ctx, batch=batch,
                                              kv_dtype=kv, settings=ENGINE_DEFAULTS, calibrations=self._calibrations)
        return hit


def capacity(est_at, deployment: ModelDeployment, max_batch: int, binding_at_max: str) -> Capacity | str:
    """Requests/s of one replica at the largest batch whose predicted TTFT and TPOT meet the SLO.

    Steady state with batch b: every decode step takes ``step(b)`` and, as b/output sequences finish per
    step and as many start, also prefills b*prompt/output tokens (chunked prefill shares the step):
    tpot = step(b) + b*prompt/(output*prefill_tps); ttft = prompt/prefill_tps + tpot;
    requests/s = b / (ttft + (output-1)*tpot) (Little's law). Returns a reason string when even one
    sequence misses the SLO or the speed cannot be predicted.
    """
    t = deployment.spec.traffic
    slo = deployment.spec.slo

    def at(b: int) -> tuple[float, float, float] | None:
        e = est_at(b)
        if e.decode_step_seconds is None or not e.prefill_tokens_per_second:
            return None
        prefill = t.prompt_tokens / e.prefill_tokens_per_second
        tpot = e.decode_step_seconds + b * prefill / t.output_tokens
        ttft = prefill + tpot
        return ttft, tpot, b / (ttft + (t.output_tokens - 1) * tpot)

    def ok(r: tuple[float, float, float]) -> bool:
        return (slo.ttft_seconds is None or r[0] <= slo.ttft_seconds) and (
            slo.tpot_seconds is None or r[1] <= slo.tpot_seconds)

    one = at(1)
    if one is None:
        return "speed unknown: " + "; ".join(r for r in est_at(1).reasons if "unknown" in r)[:300]
    if not ok(one):
        misses = []
        if slo.ttft_seconds is not None and one[0] > slo.ttft_seconds:
            misses.append(f"TTFT {one[0]:.2f} s > target {slo.ttft_seconds:g} s at {t.prompt_tokens} prompt tokens")
        if slo.tpot_seconds is not None and one[1] > slo.tpot_seconds:
            misses.append(f"TPOT {one[1] * 1000:.0f} ms > target {slo.tpot_seconds * 1000:g} ms")
        return "misses the SLO even at one sequence: " + ", ".join(misses)
    lo, hi = 1, max_batch  # ok(lo) holds; find the largest ok batch
    best = one
    top = at(hi)
    if top is not None and ok(top):
        lo, best = hi, top
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            r = at(mid)
            if r is not None and ok(r):
                lo, best = mid, r
            else:
                hi = mid
    if lo == max_batch:
        binding = binding_at_max
    else:
        nxt = at(lo + 1)
        binding = "ttft-slo" if nxt and slo.ttft_seconds and nxt[0] > slo.ttft_seconds else "tpot-slo"
    cal = est_at(lo).calibration or {}
    return Capacity(requests_per_second=best[2], batch=lo, ttft_s=best[0], tpot_s=best[1],
                    decode_tokens_per_second=1 / best[1], binding=binding, calibration=cal.get("key"),
                    calibrated_from=cal.get("benchmark"))


def measured_capacity(match: ExactMatch, deployment: ModelDeployment, max_batch: int,
                      binding_at_max: str) -> Capacity | str:
    """Requests/s of one replica at the largest concurrency whose measured p95 TTFT and TPOT meet the SLO, read
    from the Benchmark's curve (estimate/measured.py), never above ``max_batch`` (what its KV memory and the
    engine hold at the deployment's lengths). Returns a reason string when no measured level meets the SLO."""
    slo = deployment.spec.slo
    curve = capacity_from_curve(match.benchmark.spec.curve, Target(slo.ttft_seconds, slo.tpot_seconds),
                                limit=max_batch)
    t, load = deployment.spec.traffic, match.benchmark.spec.load
    notes = list(match.notes)
    if (load.prompt_tokens, load.output_tokens) != (t.prompt_tokens, t.output_tokens):
        notes.append(f"Benchmark {match.name} sent {load.prompt_tokens}-token prompts for {load.output_tokens} output "
                     f"tokens, the deployment's traffic is {t.prompt_tokens} and {t.output_tokens}: its curve is used "
                     "as measured")
    r = curve.reading
    if r is None or r.requests_per_second <= 0:
        said = "; ".join(curve.reasons) if r is None else (
            f"no request completed at measured concurrency {r.concurrency}")
        return f"measured by Benchmark {match.name}: {said}"
    binding = binding_at_max if curve.binding == "limit" else curve.binding
    if curve.binding == "limit":
        notes.append(f"{max_batch} concurrent sequences are all the replica holds at the deployment's lengths "
                     f"({'KV-cache memory' if binding_at_max == 'kv-memory' else 'the engine sequence limit'}), "
                     f"read from the curve there ({r.how})")
    tpot = r.tpot_p95_s
    return Capacity(requests_per_second=r.requests_per_second, batch=r.concurrency, ttft_s=r.ttft_p95_s,
                    tpot_s=tpot, decode_tokens_per_second=r.decode_tokens_per_second or (1 / tpot if tpot else None),
                    binding=binding, measured_by=match.name, notes=(*curve.reasons, *notes))


def how_to_measure(deployment: ModelDeployment, variant: Variant, profile: HardwareProfile, tp: int, pp: int) -> str:
    """What to run so that measured speed replaces the missing datasheet figures (a Benchmark document)."""
    return (f"measure it: start one replica (`moxin engine-args -f ... -m {deployment.spec.model} -v {variant.name} "
            f"-H {profile.name} --tp {tp} --pp {pp} --context {deployment.spec.context_tokens}` prints its command), "
            f"then `moxin bench --url http://<replica or router>:PORT --model {deployment.name} "
            "--concurrency 1,2,4,8 --record -o bench.yaml` and plan again with `moxin plan -f ... -f bench.yaml`")


def _uncertain(*estimates: Estimate) -> tuple[UncertainFigure, ...]:
    return tuple(dict.fromkeys(u for e in estimates for u in e.uncertain_inputs))


def candidates_for(deployment: ModelDeployment, pools: list[Pool], catalog: Catalog,
                   cache: EstimateCache, benchmarks: Sequence[Benchmark] = ()) -> DeploymentCandidates:
    spec = deployment.spec
    model = catalog.model(spec.model)
    arch = model.spec.architecture
    assert arch is not None
    variants = [model.spec.variant(v) for v in spec.variants] if spec.variants else list(model.spec.variants)
    allowed = set(spec.pools) if spec.pools else None
    out = DeploymentCandidates(deployment)
    # A sequence's KV at the end of a mean request: what concurrency and decode speed are sized at.
    length = min(spec.traffic.prompt_tokens + spec.traffic.output_tokens, spec.context_tokens)
    for pool in pools:
        if allowed is not None and pool.name not in allowed:
            continue
        profile = catalog.profile(pool.hardware)
        per_node = pool.devices_per_node or profile.spec.devices_per_node
        total = per_node * pool.nodes
        for variant in variants:
            verdict = check(variant, profile, context_tokens=spec.context_tokens)
            if not verdict.supported:
                out.rejections.append(Rejection(variant.name, pool.name, f"{verdict.status}: {verdict.reason}",
                                                "unsupported"))
                continue
            engine = verdict.engine
            assert engine is not None
            if pool.emulate is not None:
                emulation = check(variant, catalog.profile(EMULATION_PROFILE[pool.emulate]), engine.engine)
                if not emulation.supported:
                    out.rejections.append(Rejection(
                        variant.name, pool.name, f"pool is emulated on {pool.emulate}, where {engine.engine} cannot "
                        f"run it: {emulation.reason}", "unsupported"))
                    continue
            found = False
            last_no_fit = None
            unknown: tuple[int, int, str] | None = None
            for tp in tp_choices(per_node, arch.attention_heads, engine.engine):
                for pp in pp_choices(engine.engine):
                    if tp * pp > total:
                        break
                    fit = cache(model, variant, profile, tp, pp, spec.context_tokens, 1, spec.kv_cache_dtype)
                    if not fit.fits:
                        last_no_fit = fit
                        continue
                    mem = cache(model, variant, profile, tp, pp, length, 1, spec.kv_cache_dtype)
                    max_batch = max(1, mem.max_concurrency or 1)
                    limit = ENGINE_DEFAULTS.max_seqs(engine.engine)
                    binding = "max-num-seqs" if max_batch >= limit else "kv-memory"
                    max_batch = min(max_batch, limit)
                    replica = Replica(model.name, variant.name, profile.name, engine.engine, tp, pp, False,
                                      spec.context_tokens, resolved_kv(spec.kv_cache_dtype, variant),
                                      emulated=pool.emulate is not None)
                    match = exact_match(benchmarks, replica, variant)
                    uncertain = _uncertain(fit, mem, cache(model, variant, profile, tp, pp, length, 1,
                                                           spec.kv_cache_dtype))
                    if match is not None:
                        cap = measured_capacity(match, deployment, max_batch, binding)
                        # Measured speed rests on no datasheet speed figure, only the memory fit does.
                        uncertain = tuple(u for u in uncertain if not is_speed_figure(u.field))
                    else:
                        cap = capacity(lambda b, tp=tp, pp=pp, v=variant, h=profile: cache(
                            model, v, h, tp, pp, length, b, spec.kv_cache_dtype), deployment, max_batch, binding)
                    if isinstance(cap, str) and cap.startswith("speed unknown"):
                        # One measurement is enough: of the replicas whose speed is unknown, ask for the one with
                        # the fewest pipeline stages (tensor parallel within a node, as replicas usually run), then
                        # the fewest devices.
                        if unknown is None or (pp, tp * pp) < (unknown[1], unknown[0] * unknown[1]):
                            unknown = (tp, pp, f"tp={tp} pp={pp}: {cap}; "
                                       + how_to_measure(deployment, variant, profile, tp, pp))
                    elif isinstance(cap, str):
                        rests_on = "".join(f"; {u}" for u in uncertain)
                        out.rejections.append(Rejection(variant.name, pool.name, f"tp={tp} pp={pp}: {cap}{rests_on}",
                                                        "slo"))
                    else:
                        price = None if pool.usd_per_device_hour is None else pool.usd_per_device_hour * tp * pp
                        out.candidates.append(Candidate(deployment.name, model.name, variant.name, pool.name,
                                                        profile.name, engine.engine, tp, pp, cap, price, uncertain,
                                                        verdict.declared_by, fit.declared_source))
                    found = True
                    break  # the smallest pipeline that fits at this tp; deeper ones only add devices
            if unknown is not None:
                out.rejections.append(Rejection(variant.name, pool.name, unknown[2], "unknown-speed"))
            if not found:
                said = [r for r in (last_no_fit.reasons if last_no_fit else []) if r.startswith(("needs", "context"))]
                reason = said[0] if said else f"no parallelism up to {total} devices (the whole pool) fits"
                out.rejections.append(Rejection(variant.name, pool.name, reason, "no-fit"))
    return out


def prune_dominated(cands: list[Candidate], keep: frozenset = frozenset()) -> list[Candidate]:
    """Drop a candidate when another on the same pool uses no more devices, serves at least as much and rests on
    no uncertain figure that it does not (ties broken by the stable order). Exact: swapping a dominated replica
    for its dominator never costs more, never uses more devices, never serves less and is never less sure.
    ``keep``: keys never dropped (previous plan)."""
    out = []
    for c in cands:
        dominated = any(o is not c and o.pool == c.pool and o.devices <= c.devices
                        and set(o.uncertain) <= set(c.uncertain)
                        and o.capacity.requests_per_second >= c.capacity.requests_per_second
                        and (o.devices, -o.capacity.requests_per_second, o.key)
                        < (c.devices, -c.capacity.requests_per_second, c.key) for o in cands)
        if not dominated or c.key in keep:
            out.append(c)
    return out


def replicas_needed(c: Candidate, demand: float) -> int:
    return max(1, math.ceil(demand / c.capacity.requests_per_second - 1e-9)) if demand > 0 else 0
