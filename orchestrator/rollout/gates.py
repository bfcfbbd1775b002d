"""Gate evaluation: one measurement of one gate, per side, -> pass, fail or inconclusive, with what was compared.

Pure. The runtime measures each side over the gate's interval (through Prometheus with ``promql``, or from the
router's own histograms) and hands the readings here; the machine (``machine.py``) counts the outcomes. A side is
the label set deployment + variant + pool of moxin's metric schema (``spec/metrics.py``).

Too little traffic is never a pass and never a failure: it is *inconclusive* (Flagger counts a metric without
data as a failed check, so low-traffic rollouts roll back for nothing; Argo pauses). The Rollout says what an
inconclusive gate does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from orchestrator.observe import queries
from orchestrator.observe.queries import Filter
from orchestrator.rollout.quality import QualityReport
from orchestrator.spec import metrics
from orchestrator.spec.rollout import LOWER_IS_BETTER, Gate, Threshold

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Side:
    """The label set that selects one side of a rollout in moxin's series."""

    deployment: str
    variant: str
    pool: str

    def labels(self) -> dict[str, str]:
        return {"deployment": self.deployment, "variant": self.variant, "pool": self.pool}

    def filter(self) -> Filter:
        """Exact matchers on this side's labels, for ``observe.queries``."""
        return Filter.equal(**self.labels())


@dataclass(frozen=True)
class SideReading:
    """One side over one interval: requests answered, and the metric's value (None: no data)."""

    requests: int
    value: float | None


@dataclass(frozen=True)
class Readings:
    """A latency/error/throughput gate's measurement: the canary, and the stable side over the same window."""

    canary: SideReading
    stable: SideReading | None = None


Reading = Readings | QualityReport
"""What the runtime measured for one gate: side readings, or the golden-prompt comparison for 'quality'."""


@dataclass(frozen=True)
class GateResult:
    """One gate measurement as the status shows it: each side's value against the bound it was held to."""

    metric: str
    outcome: Outcome
    canary: float | None
    stable: float | None
    limit: float | None
    """The absolute bound the canary was held to (a relative threshold times the stable value); None when
    inconclusive before it could be computed."""
    threshold: str
    """The threshold as written: 'max 2', 'maxRatioToStable 1.2', 'quality: minExactMatch 0.9'."""
    reason: str
    details: dict[str, Any] | None = None
    """The quality gate's whole comparison (exact match, first divergence, KL, top-k overlap), for the status."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateResult:
        return cls(**data)


def describe(threshold: Threshold) -> str:
    for name, value in (("max", threshold.max), ("min", threshold.min),
                        ("maxRatioToStable", threshold.max_ratio_to_stable),
                        ("minRatioToStable", threshold.min_ratio_to_stable)):
        if value is not None:
            return f"{name} {value:g}"
    raise AssertionError("a Threshold holds one bound")  # the schema guarantees it


def evaluate(gate: Gate, reading: Reading) -> GateResult:
    """One measurement of ``gate``."""
    if isinstance(reading, QualityReport):
        return _evaluate_quality(gate, reading)
    assert gate.threshold is not None  # the schema requires one for every metric but quality
    th = gate.threshold
    canary, stable = reading.canary, reading.stable
    stable_value = stable.value if stable is not None else None

    def result(outcome: Outcome, limit: float | None, reason: str) -> GateResult:
        return GateResult(gate.metric, outcome, canary.value, stable_value, limit, describe(th), reason)

    if canary.requests < gate.min_requests:
        return result("inconclusive", None, f"too little traffic on the canary: {canary.requests} requests in "
                      f"{gate.interval_seconds:g} s, {gate.min_requests} needed")
    if canary.value is None:
        return result("inconclusive", None, "no data for the canary")
    if th.relative:
        if stable is None or stable.requests < gate.min_requests:
            got = 0 if stable is None else stable.requests
            return result("inconclusive", None, f"too little traffic on the stable side to compare with: {got} "
                          f"requests, {gate.min_requests} needed")
        if stable.value is None:
            return result("inconclusive", None, "no data for the stable side to compare with")
    upper = th.max if th.max is not None else (
        th.max_ratio_to_stable * stable_value if th.max_ratio_to_stable is not None and stable_value is not None
        else None)
    lower = th.min if th.min is not None else (
        th.min_ratio_to_stable * stable_value if th.min_ratio_to_stable is not None and stable_value is not None
        else None)
    if upper is not None:
        ok = canary.value <= upper
        return result("pass" if ok else "fail", upper,
                      f"{gate.metric} {canary.value:.4g} {'<=' if ok else '>'} {upper:.4g}")
    assert lower is not None
    ok = canary.value >= lower
    return result("pass" if ok else "fail", lower, f"{gate.metric} {canary.value:.4g} {'>=' if ok else '<'} {lower:.4g}")


def _evaluate_quality(gate: Gate, report: QualityReport) -> GateResult:
    threshold = f"quality: minExactMatch {report.min_exact_match:g}"
    if report.compared == 0:
        return GateResult(gate.metric, "inconclusive", None, None, report.min_exact_match, threshold,
                          "no golden prompt was answered by both sides", report.to_json())
    outcome: Outcome = "pass" if report.passed else "fail"
    reason = "; ".join(report.failures) if report.failures else (
        f"{report.exact} of {report.compared} golden prompts identical")
    return GateResult(gate.metric, outcome, report.exact_match_rate, 1.0, report.min_exact_match, threshold, reason,
                      report.to_json())


def better(metric: str) -> str:
    """'lower' or 'higher': which way the metric is good (status tables show it)."""
    return "lower" if LOWER_IS_BETTER[metric] else "higher"


# --- PromQL by side --------------------------------------------------------------------------------------------
# Spelled by observe/queries.py, as the dashboards' and the alerts' are, over one side's labels.

_HISTOGRAMS = {"ttftP95": metrics.ROUTER["ttft"], "tpotP95": metrics.ROUTER["tpot"], "e2eP95": metrics.ROUTER["e2e"]}
_GATE_QUANTILE = 0.95
"""The quantile of every latency gate (``...P95``)."""


def requests_query(side: Side, window_s: float) -> str:
    """Requests the router answered for ``side`` in the window (the minRequests check)."""
    return queries.sum_by((), queries.increase(metrics.ROUTER["requests"], side.filter(), queries.duration(window_s)))


def promql(metric: str, side: Side, window_s: float) -> str | None:
    """The query for one gate metric on one side over the window; None for 'quality' (not a series). No sample
    where the side answered nothing (or, per replica, has no ready replica): the gate is inconclusive."""
    window, flt = queries.duration(window_s), side.filter()
    if metric in _HISTOGRAMS:
        return queries.quantile(_GATE_QUANTILE, _HISTOGRAMS[metric], (), flt, window)
    if metric == "errorRatio":
        return queries.error_ratio((), flt, window)
    if metric == "outputTokensPerSecondPerReplica":
        ready = queries.sum_by((), queries.series(metrics.CONTROLLER["ready"], flt))
        return queries.ratio(queries.token_rate("generation_tokens", (), flt, window), ready)
    if metric == "quality":
        return None
    raise ValueError(f"unknown gate metric {metric!r}")
