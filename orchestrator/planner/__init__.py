"""The planner: all deployments onto a heterogeneous fleet, exactly (``plan``), and what moves (``diff``)."""

from orchestrator.planner.inputs import PlanInputs, choose_fleet, plan_catalog, plan_or_given
from orchestrator.planner.plan import Change, PlanOptions, diff, plan

__all__ = ["Change", "PlanInputs", "PlanOptions", "choose_fleet", "diff", "plan", "plan_catalog", "plan_or_given"]
