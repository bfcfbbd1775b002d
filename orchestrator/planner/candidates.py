"""Candidates: every way one replica of a deployment can run on one pool, with its capacity under the SLO.

Pure. A candidate is (variant, pool, tp, pp) that the compatibility matrix supports and whose replica
holds at least one sequence at the deployment's full context. Its capacity comes from the estimator's
batch model (see ``capacity``); rejected combinations keep their reason, for the plan's explanations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.compat import check, pp_choices, tp_choices
from orchestrator.estimate.estimator import Estimate, estimate
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
    ttft_s: float
    tpot_s: float
    decode_tokens_per_second: float
    binding: str
    """What stops a larger batch: 'tpot-slo', 'ttft-slo', 'kv-memory' or 'max-num-seqs'."""


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

    @property
    def devices(self) -> int:
        return self.tp * self.pp

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
    """Estimates keyed by names and numbers (the planner asks the same questions many times)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Estimate] = {}

    def __call__(self, model: Model, variant: Variant, profile: HardwareProfile, tp: int, pp: int, ctx: int,
                 batch: int, kv: str) -> Estimate:
        key = (model.name, variant.name, profile.name, tp, pp, ctx, batch, kv)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = estimate(model, variant, profile, tp=tp, pp=pp, context=ctx, batch=batch,
                                              kv_dtype=kv, settings=ENGINE_DEFAULTS)
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
    return Capacity(requests_per_second=best[2], batch=lo, ttft_s=best[0], tpot_s=best[1],
                    decode_tokens_per_second=1 / best[1], binding=binding)


def candidates_for(deployment: ModelDeployment, pools: list[Pool], catalog: Catalog,
                   cache: EstimateCache) -> DeploymentCandidates:
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
            verdict = check(variant, profile)
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
                    cap = capacity(lambda b, tp=tp, pp=pp, v=variant, h=profile: cache(model, v, h, tp, pp, length,
                                                                                    b, spec.kv_cache_dtype),
                                   deployment, max_batch, binding)
                    if isinstance(cap, str):
                        kind = "unknown-speed" if cap.startswith("speed unknown") else "slo"
                        out.rejections.append(Rejection(variant.name, pool.name, f"tp={tp} pp={pp}: {cap}", kind))
                    else:
                        price = None if pool.usd_per_device_hour is None else pool.usd_per_device_hour * tp * pp
                        out.candidates.append(Candidate(deployment.name, model.name, variant.name, pool.name,
                                                        profile.name, engine.engine, tp, pp, cap, price))
                    found = True
                    break  # the smallest pipeline that fits at this tp; deeper ones only add devices
            if not found:
                said = [r for r in (last_no_fit.reasons if last_no_fit else []) if r.startswith(("needs", "context"))]
                reason = said[0] if said else f"no parallelism up to {total} devices (the whole pool) fits"
                out.rejections.append(Rejection(variant.name, pool.name, reason, "no-fit"))
    return out


def prune_dominated(cands: list[Candidate], keep: frozenset = frozenset()) -> list[Candidate]:
    """Drop a candidate when another on the same pool uses no more devices and serves at least as much
    (ties broken by the stable order). Exact: swapping a dominated replica for its dominator never costs
    more, never uses more devices and never serves less. ``keep``: keys never dropped (previous plan)."""
    out = []
    for c in cands:
        dominated = any(o is not c and o.pool == c.pool and o.devices <= c.devices
                        and o.capacity.requests_per_second >= c.capacity.requests_per_second
                        and (o.devices, -o.capacity.requests_per_second, o.key)
                        < (c.devices, -c.capacity.requests_per_second, c.key) for o in cands)
        if not dominated or c.key in keep:
            out.append(c)
    return out


def replicas_needed(c: Candidate, demand: float) -> int:
    return max(1, math.ceil(demand / c.capacity.requests_per_second - 1e-9)) if demand > 0 else 0
