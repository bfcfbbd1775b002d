"""The planner: all deployments onto a heterogeneous fleet, exactly (``plan``), and what moves (``diff``)."""

from orchestrator.planner.plan import PlanOptions, diff, plan

__all__ = ["PlanOptions", "diff", "plan"]
