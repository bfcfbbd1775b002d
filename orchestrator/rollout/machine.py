"""The rollout state machine: (spec, state, observation) -> (new state, actions). Pure, like ``reconcile.decide``.

The controller calls ``due`` to learn which gates to measure now, measures them, then calls ``step`` and saves the
returned state *before* applying the actions; after a restart it loads the state and converges on ``desired``
(absolute replica counts and a weight, so applying them twice starts nothing twice). Feeding ``step`` the same
observation again changes nothing and returns no action: commands carry ids, and a gate counts a reading only
once per interval.

Phases: Pending -> Progressing (step i) <-> Paused -> Promoting -> Succeeded, or RolledBack / Failed.

Steps (``plan_steps``): a canary's ``setWeight``/``pause``/``analysis`` as written; a blue-green brings the whole
new side up at weight 0, runs its pre-promotion analysis, waits for promote unless ``autoPromote``, then promotes.
Promoting scales the new side to full size, sends it all traffic, waits (blue-green: ``scaleDownDelaySeconds``) and
removes the old side.

Capacity (``capacity.py``): in *surge* mode the new side runs beside the whole old side. In *replace* mode it does
not fit, so each new replica first frees room by scaling the old side down (``fits_beside[k]``: new replicas that
fit beside the old side less k replicas); a blue-green then moves replica by replica, its analysis after each.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, Literal

from orchestrator.rollout.gates import GateResult, Reading, evaluate
from orchestrator.spec.rollout import Gate, RolloutSpec

LOG_LIMIT = 200
"""Decision-log entries kept in the state (the oldest go first); the controller also logs each one."""
DEADLINE_MARGIN_S = 600.0
"""Added to the new side's readiness budget when the Rollout sets no progressDeadlineSeconds."""


class Phase(str, Enum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)


Mode = Literal["surge", "replace"]
SideName = Literal["canary", "stable"]
Verb = Literal["promote", "promoteFull", "pause", "resume", "abort"]


# --- Steps -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Weight:
    """Scale the new side for ``scale`` percent of the traffic, wait until it is ready, then send it ``weight``."""

    weight: int
    scale: int


@dataclass(frozen=True)
class Hold:
    seconds: float | None
    """None: until promote or resume."""


@dataclass(frozen=True)
class Check:
    gates: tuple[Gate, ...]
    where: str
    """The analysis in the document: 'steps[2].analysis' or 'blueGreen.prePromotionAnalysis'."""


PlanStep = Weight | Hold | Check


# --- State -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Fixed when the rollout starts and saved with it, so a restarted controller resumes on the same numbers."""

    stable_replicas: int
    """Replicas of the old side when the rollout began."""
    canary_replicas: int
    """Replicas the new side needs to take all the traffic (the planner's count)."""
    mode: Mode = "surge"
    fits_beside: tuple[int, ...] = ()
    """Replace mode: ``fits_beside[k]`` new replicas fit beside the old side scaled down by k (k = 0..stable)."""
    deadline_s: float = 1200.0
    """Longest wait for the new side's replicas at one step (``resolve_deadline``)."""
    scale_down_delay_s: float = 0.0
    """How long the old side stays after the switch (blue-green's scaleDownDelaySeconds)."""


def resolve_deadline(spec: RolloutSpec, readiness_budget_s: float) -> float:
    """progressDeadlineSeconds, or the new side's readiness budget (engine start-up plus loading) + 600 s."""
    if spec.progress_deadline_seconds is not None:
        return spec.progress_deadline_seconds
    return readiness_budget_s + DEADLINE_MARGIN_S


def config_for(spec: RolloutSpec, stable_replicas: int, canary_replicas: int, readiness_budget_s: float,
               fits_beside: Sequence[int] | None = None) -> Config:
    """The Config of a rollout; ``fits_beside`` from ``capacity.check`` (None or reaching canary_replicas at k=0:
    surge mode)."""
    mode: Mode = "surge" if fits_beside is None or fits_beside[0] >= canary_replicas else "replace"
    if mode == "replace" and max(fits_beside or (0,)) < canary_replicas:
        raise ValueError(f"{canary_replicas} new replicas do not fit even with the old side removed")
    delay = 0.0
    if spec.strategy == "blueGreen":
        delay = spec.blue_green.scale_down_delay_seconds if spec.blue_green else 30.0
    return Config(stable_replicas, canary_replicas, mode, tuple(fits_beside or ()),
                  resolve_deadline(spec, readiness_budget_s), delay)


@dataclass(frozen=True)
class GateRun:
    """One gate of the running analysis."""

    taken: int = 0
    """Conclusive measurements so far."""
    failures: int = 0
    inconclusive: int = 0
    """Inconclusive measurements since the gate last counted one or was resumed."""
    last_at: float | None = None
    last: GateResult | None = None


@dataclass(frozen=True)
class Decision:
    at: float
    phase: str
    step: int
    message: str


@dataclass(frozen=True)
class State:
    """Everything a controller saves (``to_json``) before acting, and a restarted one resumes from."""

    name: str
    digest: str
    """Digest of the spec the rollout runs; another spec mid-rollout pauses it."""
    config: Config
    phase: Phase = Phase.PENDING
    step: int = 0
    weight: int = 0
    """Traffic percent the router sends to the new side."""
    canary_replicas: int = 0
    stable_replicas: int = 0
    step_started_at: float | None = None
    waiting_since: float | None = None
    """When the current wait for new replicas began (the progress deadline counts from it)."""
    analysis_started_at: float | None = None
    gates: tuple[GateRun, ...] = ()
    paused_reason: str | None = None
    promoted_at: float | None = None
    """When all traffic moved to the new side (the scale-down delay counts from it)."""
    last_command: int = 0
    message: str = ""
    log: tuple[Decision, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["phase"] = self.phase.value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        d = dict(data)
        d["config"] = Config(**{**d["config"], "fits_beside": tuple(d["config"]["fits_beside"])})
        d["phase"] = Phase(d["phase"])
        d["gates"] = tuple(GateRun(**{**g, "last": GateResult.from_json(g["last"]) if g["last"] else None})
                           for g in d["gates"])
        d["log"] = tuple(Decision(**x) for x in d["log"])
        return cls(**d)


def spec_digest(spec: RolloutSpec) -> str:
    text = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start(name: str, spec: RolloutSpec, config: Config) -> State:
    """A rollout not yet begun: the old side at its size, no traffic on the new one."""
    return State(name, spec_digest(spec), config, stable_replicas=config.stable_replicas)


# --- Observations and actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """An operator's command (`moxin rollout promote|pause|resume|abort`); ids increase, each is applied once."""

    id: int
    verb: Verb


@dataclass(frozen=True)
class Observation:
    now: float
    canary_ready: int
    """New-side replicas serving."""
    readings: Mapping[int, Reading] = field(default_factory=dict)
    """Measurements of the current analysis' gates (by index), over the interval ending now (see ``due``)."""
    commands: tuple[Command, ...] = ()
    digest: str | None = None
    """Digest of the spec the controller holds now (``spec_digest``); None: unchanged."""


@dataclass(frozen=True)
class ScaleSide:
    side: SideName
    replicas: int
    reason: str


@dataclass(frozen=True)
class SetWeight:
    canary_percent: int
    reason: str


@dataclass(frozen=True)
class RemoveSide:
    side: SideName
    reason: str


@dataclass(frozen=True)
class Record:
    message: str


Action = ScaleSide | SetWeight | RemoveSide | Record


@dataclass(frozen=True)
class Desired:
    """What the executor converges on, whatever actions were or were not applied before a restart."""

    canary_replicas: int
    stable_replicas: int
    canary_percent: int


def desired(state: State) -> Desired:
    return Desired(state.canary_replicas, state.stable_replicas, state.weight)


@dataclass(frozen=True)
class Due:
    """A gate to measure now, over the last ``window_s`` seconds."""

    index: int
    gate: Gate
    window_s: float


# --- Planning the steps ----------------------------------------------------------------------------------------

def plan_steps(spec: RolloutSpec, config: Config) -> list[PlanStep]:
    if spec.strategy == "canary":
        out: list[PlanStep] = []
        for i, s in enumerate(spec.steps):
            if s.set_weight is not None:
                out.append(Weight(s.set_weight, s.set_weight))
            elif s.pause is not None:
                out.append(Hold(s.pause.duration_seconds))
            elif s.analysis is not None:
                out.append(Check(tuple(s.analysis.gates), f"steps[{i}].analysis"))
        return out
    bg = spec.blue_green
    pre = [Check(tuple(bg.pre_promotion_analysis.gates), "blueGreen.prePromotionAnalysis")] if (
        bg and bg.pre_promotion_analysis) else []
    hold: list[PlanStep] = [] if bg is None or bg.auto_promote else [Hold(None)]
    # Replace mode: one more new replica per step (the old side shrinking to make room), each checked; the last
    # replicas come up before the traffic moves, so the analysis sees the new side at full size, as in surge mode.
    steps: list[PlanStep] = []
    weight = 0
    n = config.canary_replicas if config.mode == "replace" else 1
    for i in range(1, n):
        weight = math.floor(100 * i / n)
        steps += [Weight(weight, weight), *pre]
    return [*steps, Weight(weight, 100), *pre, *hold]


def canary_for(config: Config, scale: int) -> int:
    """New replicas for ``scale`` percent of the traffic: at least one once scale > 0."""
    if scale <= 0:
        return 0
    return max(1, math.ceil(config.canary_replicas * scale / 100 - 1e-9))


def stable_beside(config: Config, canary: int) -> int:
    """Old replicas that stay while ``canary`` new ones run (surge: all of them)."""
    if config.mode == "surge":
        return config.stable_replicas
    for k, fits in enumerate(config.fits_beside):
        if fits >= canary:
            return config.stable_replicas - k
    raise ValueError(f"{canary} new replicas do not fit even with the old side removed")


# --- The step function -----------------------------------------------------------------------------------------

class _Step:
    """Builds the next state and its actions; every change goes through ``set``/``log``/``scale``/``weigh``."""

    def __init__(self, spec: RolloutSpec, state: State, obs: Observation) -> None:
        self.spec = spec
        self.s = state
        self.obs = obs
        self.actions: list[Action] = []
        self.steps = plan_steps(spec, state.config)

    def set(self, **changes: Any) -> None:
        self.s = replace(self.s, **changes)

    def log(self, message: str) -> None:
        entry = Decision(self.obs.now, self.s.phase.value, self.s.step, message)
        self.set(log=(*self.s.log, entry)[-LOG_LIMIT:], message=message)
        self.actions.append(Record(message))

    def scale(self, side: SideName, replicas: int, reason: str) -> None:
        current = self.s.canary_replicas if side == "canary" else self.s.stable_replicas
        if current == replicas:
            return
        self.set(**{f"{side}_replicas": replicas})
        self.actions.append(ScaleSide(side, replicas, reason))

    def weigh(self, percent: int, reason: str) -> None:
        if self.s.weight == percent:
            return
        self.set(weight=percent)
        self.actions.append(SetWeight(percent, reason))

    # -- ends --
    def fail(self, why: str) -> None:
        if self.spec.rollback_on_failure:
            self.roll_back(f"{why}: rolling back")
        else:
            self.set(phase=Phase.FAILED)
            self.log(f"{why}: failed, traffic left at {self.s.weight}% (rollbackOnFailure is false)")

    def roll_back(self, why: str) -> None:
        self.weigh(0, why)
        if self.s.canary_replicas:  # first, so that in replace mode the old side has room to come back
            self.set(canary_replicas=0)
            self.actions.append(RemoveSide("canary", why))
        self.scale("stable", self.s.config.stable_replicas, why)
        self.set(phase=Phase.ROLLED_BACK)
        self.log(why)

    # -- commands --
    def commands(self) -> None:
        for cmd in sorted(self.obs.commands, key=lambda c: c.id):
            if cmd.id <= self.s.last_command:
                continue
            self.set(last_command=cmd.id)
            decided = self.s.phase == Phase.FAILED and cmd.verb in ("abort", "promoteFull")  # what Failed waits for
            if self.s.phase.terminal and not decided:
                self.log(f"{cmd.verb} ignored: the rollout is {self.s.phase.value}")
            elif cmd.verb == "abort":
                self.roll_back("aborted by the operator")
            elif cmd.verb == "pause":
                if self.s.phase != Phase.PAUSED:
                    self.set(phase=Phase.PAUSED, paused_reason="paused by the operator")
                    self.log("paused by the operator")
            elif cmd.verb == "resume":
                self.resume("resumed by the operator")
            elif cmd.verb == "promote" and self.s.phase == Phase.PROMOTING:
                self.log("promote ignored: already promoting")
            elif cmd.verb == "promote":
                held = self.s.phase == Phase.PAUSED and self.current() == Hold(None)
                skipped = self.s.step
                self.resume(None)  # past an indefinite pause, resuming is the promotion
                if self.s.phase == Phase.PROGRESSING and not held:
                    self.next_step()
                if self.s.phase in (Phase.PROGRESSING, Phase.PROMOTING):
                    self.log(f"promoted by the operator: step {skipped} done")
            elif cmd.verb == "promoteFull" and self.s.phase != Phase.PROMOTING:
                self.set(phase=Phase.PROMOTING, step=len(self.steps), paused_reason=None,
                         waiting_since=self.obs.now, analysis_started_at=None, gates=())
                self.log("fully promoted by the operator: remaining steps skipped")

    def resume(self, message: str | None) -> None:
        if self.s.phase != Phase.PAUSED:
            return
        runs = tuple(replace(g, inconclusive=0) for g in self.s.gates)
        phase = Phase.PROMOTING if self.s.step >= len(self.steps) else Phase.PROGRESSING
        self.set(phase=phase, paused_reason=None, gates=runs,
                 waiting_since=self.obs.now if self.s.waiting_since is not None else None)
        if message:
            self.log(message)
        if self.current() == Hold(None):
            self.next_step()

    def current(self) -> PlanStep | None:
        return self.steps[self.s.step] if self.s.step < len(self.steps) else None

    # -- steps --
    def next_step(self) -> None:
        self.set(step=self.s.step + 1, step_started_at=self.obs.now, waiting_since=None,
                 analysis_started_at=None, gates=())
        if self.s.step >= len(self.steps):
            self.set(phase=Phase.PROMOTING, waiting_since=self.obs.now)
            self.log("all steps done: promoting")

    def run(self) -> None:
        if self.obs.digest is not None and self.obs.digest != self.s.digest and not self.s.phase.terminal and (
                self.s.phase != Phase.PAUSED):
            self.set(phase=Phase.PAUSED, paused_reason="the Rollout document changed during the rollout")
            self.log("the Rollout document changed during the rollout: paused (abort, then apply it again)")
        if self.s.phase == Phase.PENDING:
            self.begin()
        self.commands()
        for _ in range(len(self.steps) + 3):  # finished steps fall through to the next in the same call
            before = (self.s.phase, self.s.step)
            if self.s.phase == Phase.PROGRESSING:
                self.progress()
            elif self.s.phase == Phase.PROMOTING:
                self.promote()
            if (self.s.phase, self.s.step) == before:
                break

    def begin(self) -> None:
        c = self.s.config
        self.set(phase=Phase.PROGRESSING, step=0, step_started_at=self.obs.now)
        if c.mode == "surge":
            self.log(f"started: the new side ({c.canary_replicas} replicas) fits beside the old "
                     f"({c.stable_replicas}); {len(self.steps)} steps")
        else:
            self.log(f"started: the new side ({c.canary_replicas} replicas) does not fit beside the old "
                     f"({c.stable_replicas}): replacing replica by replica; {len(self.steps)} steps")
        if not self.steps:
            self.next_step()

    def progress(self) -> None:
        step = self.steps[self.s.step]
        if isinstance(step, Weight):
            self.weight_step(step)
        elif isinstance(step, Hold):
            self.hold_step(step)
        else:
            self.check_step(step)

    def wait_for(self, canary: int, why: str) -> bool:
        """Scale the sides for ``canary`` new replicas; True once that many are ready. Fails past the deadline."""
        c = self.s.config
        self.scale("stable", stable_beside(c, canary), f"{why}: room for {canary} new replicas")
        self.scale("canary", canary, why)
        if self.obs.canary_ready >= canary:
            self.set(waiting_since=None)
            return True
        if self.s.waiting_since is None:
            self.set(waiting_since=self.obs.now)
        elif self.obs.now - self.s.waiting_since > c.deadline_s:
            self.fail(f"progress deadline: {self.obs.canary_ready} of {canary} new replicas ready after "
                      f"{c.deadline_s:g} s")
        return False

    def weight_step(self, step: Weight) -> None:
        if not self.wait_for(canary_for(self.s.config, step.scale), f"step {self.s.step}"):
            return
        self.weigh(step.weight, f"step {self.s.step}: setWeight {step.weight}")
        self.log(f"step {self.s.step}: {step.weight}% of traffic on the new side "
                 f"({self.s.canary_replicas} new, {self.s.stable_replicas} old replicas)")
        self.next_step()

    def hold_step(self, step: Hold) -> None:
        if step.seconds is None:
            self.set(phase=Phase.PAUSED, paused_reason=f"step {self.s.step}: pause until promoted")
            self.log(f"step {self.s.step}: paused until promoted")
            return
        started = self.s.step_started_at if self.s.step_started_at is not None else self.obs.now
        if self.obs.now - started >= step.seconds:
            self.log(f"step {self.s.step}: paused {step.seconds:g} s")
            self.next_step()

    def check_step(self, step: Check) -> None:
        if self.s.analysis_started_at is None:
            self.set(analysis_started_at=self.obs.now, gates=tuple(GateRun() for _ in step.gates))
        runs = list(self.s.gates)
        for i, gate in enumerate(step.gates):
            reading = self.obs.readings.get(i)
            if reading is None or runs[i].taken >= gate.count or not _is_due(gate, runs[i],
                                                                               self.s.analysis_started_at,
                                                                               self.obs.now):
                continue  # not asked for (``due``): a gate that has its count is not measured again
            result = evaluate(gate, reading)
            run = runs[i]
            if result.outcome == "inconclusive":
                run = replace(run, inconclusive=run.inconclusive + 1, last_at=self.obs.now, last=result)
            else:
                run = replace(run, taken=run.taken + 1, failures=run.failures + (result.outcome == "fail"),
                              inconclusive=0, last_at=self.obs.now, last=result)
            runs[i] = run
            self.set(gates=tuple(runs))
            where = f"step {self.s.step} ({step.where}) gate {gate.metric}"
            if result.outcome == "fail" and run.failures > gate.failure_limit:
                self.fail(f"{where} failed {run.failures} time(s), limit {gate.failure_limit}: {result.reason}")
                return
            if result.outcome == "inconclusive" and run.inconclusive > gate.inconclusive_limit:
                if gate.inconclusive == "fail":
                    self.fail(f"{where} inconclusive: {result.reason}")
                else:
                    self.set(phase=Phase.PAUSED, paused_reason=f"{where} inconclusive: {result.reason}")
                    self.log(f"{where} inconclusive: {result.reason}; paused (resume to measure again, promote to "
                             "skip, abort to roll back)")
                return
        if all(r.taken >= g.count for r, g in zip(runs, step.gates, strict=True)):
            summary = ", ".join(f"{g.metric} {r.taken - r.failures}/{r.taken}" for r, g in
                                zip(runs, step.gates, strict=True))
            self.log(f"step {self.s.step} ({step.where}) passed: {summary}")
            self.next_step()

    def promote(self) -> None:
        c = self.s.config
        if self.s.promoted_at is None:
            if not self.wait_for(c.canary_replicas, "promoting"):
                return
            self.weigh(100, "promoting: all traffic to the new side")
            self.set(promoted_at=self.obs.now)
            self.log(f"all traffic on the new side ({c.canary_replicas} replicas)")
        if self.obs.now - self.s.promoted_at < c.scale_down_delay_s:
            return
        if self.s.stable_replicas:
            self.set(stable_replicas=0)
            self.actions.append(RemoveSide("stable", "promoted"))
        self.set(phase=Phase.SUCCEEDED)
        self.log("succeeded: the old side is removed")


def _is_due(gate: Gate, run: GateRun, started: float | None, now: float) -> bool:
    since = run.last_at if run.last_at is not None else started
    return since is not None and now - since >= gate.interval_seconds


def due(spec: RolloutSpec, state: State, now: float) -> list[Due]:
    """The gates of the current analysis to measure now (their interval has passed since the last measurement, or
    since the analysis began)."""
    if state.phase != Phase.PROGRESSING:
        return []
    steps = plan_steps(spec, state.config)
    if state.step >= len(steps) or not isinstance(steps[state.step], Check):
        return []
    check = steps[state.step]
    assert isinstance(check, Check)
    started = state.analysis_started_at if state.analysis_started_at is not None else now
    runs = state.gates or tuple(GateRun() for _ in check.gates)
    return [Due(i, g, g.interval_seconds) for i, (g, r) in enumerate(zip(check.gates, runs, strict=True))
            if r.taken < g.count and _is_due(g, r, started, now)]


def step(spec: RolloutSpec, state: State, obs: Observation) -> tuple[State, list[Action]]:
    """The next state and the actions that bring the sides to it. Succeeded and RolledBack only answer commands;
    Failed waits for abort or promoteFull, then goes on from there in the same call."""
    if state.phase in (Phase.SUCCEEDED, Phase.ROLLED_BACK):
        run = _Step(spec, state, obs)
        run.commands()
        return run.s, run.actions
    run = _Step(spec, state, obs)
    run.run()
    return run.s, run.actions


def status(spec: RolloutSpec, state: State) -> dict[str, Any]:
    """What `moxin rollout status` shows (and the Kubernetes object's status holds): phase, step, weight, each side's
    replicas, every gate of the current analysis against its threshold, and the decision log."""
    steps = plan_steps(spec, state.config)
    current = steps[state.step] if state.step < len(steps) else None
    gates = []
    if isinstance(current, Check):
        runs = state.gates or tuple(GateRun() for _ in current.gates)
        for gate, run in zip(current.gates, runs, strict=True):
            last = run.last
            gates.append({"metric": gate.metric, "measurements": f"{run.taken}/{gate.count}",
                          "failures": f"{run.failures}/{gate.failure_limit}",
                          "inconclusive": f"{run.inconclusive}/{gate.inconclusive_limit}",
                          "canary": last.canary if last else None, "stable": last.stable if last else None,
                          "limit": last.limit if last else None,
                          "threshold": last.threshold if last else None, "outcome": last.outcome if last else None,
                          "reason": last.reason if last else "not measured yet",
                          **({"details": last.details} if last and last.details else {})})
    return {"phase": state.phase.value, "step": state.step, "steps": len(steps),
            "stepKind": type(current).__name__.lower() if current is not None else None,
            "mode": state.config.mode, "weight": state.weight,
            "replicas": {"canary": state.canary_replicas, "stable": state.stable_replicas},
            "pausedReason": state.paused_reason, "message": state.message, "gates": gates,
            "log": [{"at": d.at, "phase": d.phase, "step": d.step, "message": d.message} for d in state.log]}
