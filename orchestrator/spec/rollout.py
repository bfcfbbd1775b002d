"""``Rollout``: a change of variant or pool for one deployment, canary or blue-green, gated on metrics and quality.

The vocabulary is Argo Rollouts' (``setWeight``, ``pause``, ``analysis``, ``prePromotionAnalysis``,
``scaleDownDelaySeconds``, ``failureLimit``) with Flagger's thresholds, extended for LLM serving: latency gates on
TTFT/TPOT, a quality gate comparing greedy outputs of both sides, too-little-traffic as *inconclusive* (pause or
fail, never a silent pass or rollback), and a progress deadline that leaves room for loading weights.

Plain data: the machine that runs it is ``orchestrator/rollout/machine.py``; the catalog checks the deployment,
variants and pools it names (``spec/catalog.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from orchestrator.spec.base import MAX_SECONDS, Document, FieldError, FiniteFloat, Name, Strict

GateMetric = Literal["ttftP95", "tpotP95", "e2eP95", "errorRatio", "outputTokensPerSecondPerReplica", "quality"]
"""What a gate measures on each side (``orchestrator/rollout/gates.py`` says how)."""

LOWER_IS_BETTER: dict[str, bool] = {"ttftP95": True, "tpotP95": True, "e2eP95": True, "errorRatio": True,
                                    "outputTokensPerSecondPerReplica": False, "quality": False}
"""Which way each metric is good (the status shows it; a threshold may go either way)."""

MAX_GATE_COUNT = 10_000
"""Measurements of one gate in one analysis."""
MAX_PROMPT_TOKENS = 4096
"""Tokens generated per golden prompt."""
_ONE_FIELD = ConfigDict(**Strict.model_config, json_schema_extra={"minProperties": 1, "maxProperties": 1})
"""Models that hold exactly one of their fields: the JSON Schema says so, for editors."""


class Target(Strict):
    variant: Name | None = None
    """Variant to move from / to; null keeps the current one."""
    pool: Name | None = None
    """Pool to move from / to; null keeps the current one."""


class Threshold(Strict):
    """Exactly one bound: absolute (max, min) or relative to the stable side measured over the same interval."""

    model_config = _ONE_FIELD

    max: FiniteFloat | None = Field(None, ge=0)
    """The canary passes when its value is at most this (in the metric's unit: seconds, a ratio, tokens/s)."""
    min: FiniteFloat | None = Field(None, ge=0)
    """The canary passes when its value is at least this."""
    max_ratio_to_stable: FiniteFloat | None = Field(None, gt=0, le=1000)
    """The canary passes when its value is at most this times the stable side's (1.2: 'at most 20% worse')."""
    min_ratio_to_stable: FiniteFloat | None = Field(None, gt=0, le=1000)
    """The canary passes when its value is at least this times the stable side's (0.9: 'at most 10% fewer')."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Threshold:
        given = [f for f in ("max", "min", "max_ratio_to_stable", "min_ratio_to_stable") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("a threshold has exactly one of max, min, maxRatioToStable, minRatioToStable "
                             f"({len(given)} given)")
        return self

    @property
    def relative(self) -> bool:
        return self.max_ratio_to_stable is not None or self.min_ratio_to_stable is not None


class Gate(Strict):
    """One metric checked ``count`` times, every ``intervalSeconds``, on the canary (and the stable side)."""

    metric: GateMetric
    """What is measured: TTFT/TPOT/end-to-end p95 (seconds), error ratio (5xx answers / all), output tokens/s per
    replica, or 'quality' (golden prompts on both sides, thresholds in spec.quality)."""
    threshold: Threshold | None = None
    """The bound the canary must meet; required for every metric but 'quality'."""
    interval_seconds: FiniteFloat = Field(60, gt=0, le=MAX_SECONDS)
    """Time between measurements, and the window each one covers."""
    count: int = Field(1, ge=1, le=MAX_GATE_COUNT)
    """Conclusive measurements (pass or fail) the gate takes before it is done."""
    failure_limit: int = Field(0, ge=0, le=MAX_GATE_COUNT)
    """Failed measurements tolerated; one more fails the analysis (0: the first failure does, as in Argo)."""
    min_requests: int = Field(20, ge=0, le=10_000_000)
    """Requests a side must have answered in the interval for its value to count; fewer is inconclusive."""
    inconclusive_limit: int = Field(0, ge=0, le=MAX_GATE_COUNT)
    """Inconclusive measurements (too little traffic, no data) retried at the next interval; one more triggers
    'inconclusive'."""
    inconclusive: Literal["pause", "fail"] = "pause"
    """What an inconclusive gate does past its limit: pause the rollout for a person (resume retries it), or fail
    it (and roll back when rollbackOnFailure)."""

    @model_validator(mode="after")
    def _threshold_given(self) -> Gate:
        if self.metric != "quality" and self.threshold is None:
            raise FieldError(f"a {self.metric} gate needs a threshold (max, min, maxRatioToStable or "
                             "minRatioToStable)", "metric")
        if self.metric == "quality" and self.threshold is not None:
            raise FieldError("a quality gate takes its thresholds from spec.quality", "threshold")
        return self


class Analysis(Strict):
    gates: list[Gate] = Field(min_length=1, max_length=32)
    """Gates checked together; the analysis passes when every gate has its count of measurements within its
    failure limit, and fails as soon as one gate exceeds it."""


class Pause(Strict):
    duration_seconds: FiniteFloat | None = Field(None, ge=0, le=MAX_SECONDS)
    """How long to hold; null holds until `moxin rollout promote` (or resume)."""


class Step(Strict):
    """One canary step: exactly one of setWeight, pause, analysis."""

    model_config = _ONE_FIELD

    set_weight: int | None = Field(None, ge=1, le=100)
    """Percent of the deployment's traffic sent to the new side from this step on (once its replicas are ready)."""
    pause: Pause | None = None
    """Hold here for a duration, or until promoted."""
    analysis: Analysis | None = None
    """Check gates here; the next step starts when they pass."""

    @model_validator(mode="after")
    def _one_of(self) -> Step:
        given = [f for f in ("set_weight", "pause", "analysis") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has exactly one of setWeight, pause, analysis ({len(given)} given)")
        return self


class BlueGreen(Strict):
    pre_promotion_analysis: Analysis | None = None
    """Gates checked on the new side, at full size and before any user traffic reaches it (quality gates send
    their golden prompts to it directly)."""
    auto_promote: bool = True
    """Switch traffic as soon as the new side is ready and the analysis passed; false waits for promote."""
    scale_down_delay_seconds: FiniteFloat = Field(30, ge=0, le=MAX_SECONDS)
    """How long the old side stays up after the switch (an abort in that time switches back instantly)."""


class Quality(Strict):
    """Golden prompts sent with greedy decoding to both sides; outputs compared token by token
    (``orchestrator/rollout/quality.py``)."""

    prompts: str = Field("builtin", min_length=1, max_length=4096)
    """'builtin' (a dozen short, varied prompts shipped with moxin), or a file relative to this document: one
    prompt per line, or JSON Lines with a 'prompt' field."""
    max_tokens: int = Field(64, ge=1, le=MAX_PROMPT_TOKENS)
    """Tokens generated per prompt on each side."""
    top_logprobs: int = Field(5, ge=1, le=20)
    """Top log-probabilities asked for per position (engines that return none skip the KL and overlap checks)."""
    min_exact_match: FiniteFloat = Field(0.9, ge=0, le=1)
    """Share of prompts whose outputs must be identical on both sides."""
    min_first_divergence: int | None = Field(None, ge=0, le=MAX_PROMPT_TOKENS)
    """Tokens every differing pair of outputs must share before they diverge; null: not checked."""
    max_kl: FiniteFloat | None = Field(None, ge=0)
    """Largest mean KL divergence (stable || canary, nats per position, over the top log-probabilities); null: not
    checked."""
    min_top_k_overlap: FiniteFloat | None = Field(None, ge=0, le=1)
    """Smallest mean share of the stable side's top-k tokens also in the canary's top-k; null: not checked."""


class RolloutSpec(Strict):
    deployment: Name
    """The ModelDeployment to change."""
    strategy: Literal["canary", "blueGreen"] = "canary"
    """Canary: traffic moves in steps; blue-green: all at once after the new side is ready."""
    from_: Target = Field(default_factory=Target, alias="from")
    """What runs now."""
    to: Target
    """What should run afterwards."""
    steps: list[Step] = Field(default_factory=list, max_length=100)
    """Canary steps, in order; after the last one the new side takes all traffic (promotion)."""
    blue_green: BlueGreen | None = None
    """Blue-green settings (strategy blueGreen only; defaults apply when left out)."""
    quality: Quality | None = None
    """Golden-prompt comparison used by gates on the 'quality' metric."""
    progress_deadline_seconds: FiniteFloat | None = Field(None, gt=0, le=MAX_SECONDS)
    """Longest wait for the new side's replicas to become ready at a step before the rollout fails. Null: the new
    side's readiness budget from its plan (engine start-up plus weight loading, readinessTimeoutSeconds) plus 600 s,
    so a large model is not rolled back while it loads. Pauses and analyses do not count."""
    rollback_on_failure: bool = True
    """Return all traffic to the old side and remove the new one when a gate fails or the deadline passes; false
    leaves both as they are (phase Failed) for a person to decide."""

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSpec:
        if self.to.variant is None and self.to.pool is None:
            raise ValueError("'to' must name a variant, a pool, or both")
        variant = self.to.variant if self.to.variant is not None else self.from_.variant
        pool = self.to.pool if self.to.pool is not None else self.from_.pool
        if (variant, pool) == (self.from_.variant, self.from_.pool):
            raise FieldError(f"'to' is the same as 'from' (variant {variant!r}, pool {pool!r}): the rollout changes "
                             "nothing", "to")
        if self.strategy == "canary":
            if self.blue_green is not None:
                raise FieldError("blueGreen settings belong to strategy blueGreen", "blueGreen")
            last = 0
            for i, step in enumerate(self.steps):
                if step.set_weight is not None:
                    if step.set_weight <= last:
                        raise FieldError(f"weights must increase: {step.set_weight} after {last}",
                                         "steps", i, "setWeight")
                    last = step.set_weight
            if last == 0:
                raise FieldError("a canary needs at least one setWeight step", "steps")
        elif self.steps:
            raise FieldError("steps belong to strategy canary; blue-green uses blueGreen.prePromotionAnalysis",
                             "steps")
        for path, analysis in self._analyses():
            for j, gate in enumerate(analysis.gates):
                if gate.metric == "quality" and self.quality is None:
                    raise FieldError("a quality gate needs spec.quality (golden prompts and thresholds)",
                                     *path, "gates", j, "metric")
        return self

    def _analyses(self) -> list[tuple[tuple[str | int, ...], Analysis]]:
        out: list[tuple[tuple[str | int, ...], Analysis]] = [
            (("steps", i, "analysis"), s.analysis) for i, s in enumerate(self.steps) if s.analysis is not None]
        if self.blue_green is not None and self.blue_green.pre_promotion_analysis is not None:
            out.append((("blueGreen", "prePromotionAnalysis"), self.blue_green.pre_promotion_analysis))
        return out


class Rollout(Document[RolloutSpec]):
    kind: Literal["Rollout"]
    """'Rollout'."""
    spec: RolloutSpec
