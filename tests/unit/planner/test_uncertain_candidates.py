"""The planner with uncertain figures and declared support: used, ranked below certain ones at equal cost, and said."""

from __future__ import annotations

import pytest

from orchestrator.estimate.datasheet import UncertainFigure
from orchestrator.planner import PlanOptions, plan
from orchestrator.planner.candidates import Candidate, Capacity, prune_dominated
from orchestrator.spec import load_catalog

# An H100 whose bandwidth comes from a second-hand report: the same numbers, one of them uncertain.
UNSURE_H100 = """apiVersion: moxin.dev/v1alpha1
kind: HardwareProfile
metadata: {name: h100-unsure}
spec:
  extends: nvidia-h100-sxm
  sources:
    - fields: [memoryBandwidthGBps]
      uncertain: true
      ref: a second-hand report of the H100 bandwidth
"""
DEPLOYMENT = """---
apiVersion: moxin.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec: {model: llama-3.1-8b, variants: [bf16], contextTokens: 8192,
       traffic: {requestsPerSecond: 1, promptTokens: 500, outputTokens: 200}, slo: {tpotSeconds: 0.05}}
"""


def _instance(write, pools: list[tuple[str, str]]):
    fleet = ("---\napiVersion: moxin.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec:\n  pools:\n"
             + "".join(f"    - {{name: {name}, hardware: {hw}, nodes: 1, devicesPerNode: 1, usdPerDeviceHour: 2.5}}\n"
                       for name, hw in pools))
    catalog = load_catalog([write("instance.yaml", UNSURE_H100 + fleet + DEPLOYMENT)])
    return catalog.fleets["f"], list(catalog.deployments.values()), catalog


@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
@pytest.mark.parametrize("unsure_first", [True, False])
@pytest.mark.parametrize("options", [PlanOptions(), PlanOptions(gap=0.0)], ids=["default-gap", "exact"])
def test_at_equal_price_and_speed_the_certain_pool_is_chosen(write, names, unsure_first, options) -> None:
    unsure, sure = names  # neither the pools' names nor their order in the fleet may decide
    pools = [(unsure, "h100-unsure"), (sure, "nvidia-h100-sxm")]
    fleet, deployments, catalog = _instance(write, pools if unsure_first else pools[::-1])
    doc = plan(fleet, deployments, catalog, options=options)
    (chosen,) = doc.spec.assignments
    assert chosen.pool == sure and chosen.hardware == "nvidia-h100-sxm" and chosen.replicas == 1
    assert "uncertain" not in chosen.why.summary
    (alternative,) = chosen.why.alternatives
    assert alternative.candidate.startswith(f"bf16 on {unsure} ")
    assert alternative.cost_usd_per_hour == chosen.cost_usd_per_hour
    assert alternative.note == "costs the same, but rests on uncertain datasheet figures"


def test_an_uncertain_pool_still_serves_and_its_summary_says_so(write) -> None:
    fleet, deployments, catalog = _instance(write, [("only", "h100-unsure")])
    doc = plan(fleet, deployments, catalog)
    (chosen,) = doc.spec.assignments
    assert chosen.pool == "only" and not doc.spec.unplaced
    assert chosen.why.summary.endswith("; uncertain datasheet figure: memoryBandwidthGBps (a second-hand report of "
                                       "the H100 bandwidth)")


def _candidate(tp: int, rps: float, uncertain: tuple[UncertainFigure, ...]) -> Candidate:
    cap = Capacity(requests_per_second=rps, batch=1, ttft_s=0.1, tpot_s=0.01, decode_tokens_per_second=100,
                   binding="tpot-slo")
    return Candidate("d", "m", "v", "p", "hw", "vllm", tp, 1, cap, 1.0 * tp, uncertain)


def test_an_uncertain_candidate_does_not_prune_a_certain_one() -> None:
    link = (UncertainFigure("hw", "interconnect.bandwidthGBps", "a report"),)
    sure, unsure = _candidate(2, 1.0, ()), _candidate(2, 2.0, link)
    assert prune_dominated([sure, unsure]) == [sure, unsure]  # faster, but less sure: both stay
    faster_and_sure = _candidate(2, 3.0, ())
    assert prune_dominated([unsure, faster_and_sure]) == [faster_and_sure]


DECLARED_S4000 = """apiVersion: moxin.dev/v1alpha1
kind: HardwareProfile
metadata: {name: my-s4000}
spec:
  extends: moorethreads-s4000
  engines:
    - engine: vllm
      declaredSupport:
        - formats: {default: int4-g128-asym, embedding: bf16, lmHead: bf16}
          source: declared by the operator
---
apiVersion: moxin.dev/v1alpha1
kind: Fleet
metadata: {name: f}
spec:
  pools: [{name: s4000, hardware: my-s4000, nodes: 1, usdPerDeviceHour: 0.6}]
---
apiVersion: moxin.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec: {model: llama-3.1-8b, variants: [w4a16], contextTokens: 8192,
       traffic: {requestsPerSecond: 1, promptTokens: 500, outputTokens: 200}, slo: {tpotSeconds: 0.05}}
"""


def test_a_plan_on_declared_support_says_so(write) -> None:
    catalog = load_catalog([write("declared.yaml", DECLARED_S4000)])
    doc = plan(catalog.fleets["f"], list(catalog.deployments.values()), catalog)
    (chosen,) = doc.spec.assignments
    assert chosen.variant == "w4a16" and chosen.pool == "s4000"
    assert chosen.why.summary.endswith("; supported as declared by my-s4000 (declared by the operator), not checked "
                                       "by moxin")
    assert chosen.launch.notes[0] == ("supported as declared, not by moxin's rules: declared by my-s4000: declared by "
                                      "the operator")
