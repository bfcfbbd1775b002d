"""From loaded documents to a Plan: which Fleet, which deployments — or a Plan the user gave, used as it is.

Pure: a resolved ``Catalog`` in, a ``Plan`` out. Every command that needs a plan (``plan``, ``apply``, ``up``,
``render``) comes through here, so the rules for choosing a fleet and for accepting a Plan file live once.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import Problem, SpecError
from orchestrator.planner.plan import PlanOptions, plan
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.plan import Plan


@dataclass(frozen=True)
class PlanInputs:
    plan: Plan
    fleet: Fleet | None
    """The fleet the plan was made for, when the documents hold it (renderers read its node labels)."""
    given: bool
    """The plan was given as a document, not planned now."""


def choose_fleet(catalog: Catalog, name: str | None) -> Fleet:
    """The Fleet named ``name``, or the only one the documents hold."""
    fleets = catalog.fleets
    if name is None and len(fleets) != 1:
        raise SpecError([Problem(f"the files hold {len(fleets)} Fleet documents; the planner needs one",
                                 hint=f"choose with --fleet ({', '.join(sorted(fleets)) or 'none found'})")])
    if name is not None and name not in fleets:
        raise SpecError([Problem(f"no Fleet named {name!r} in the files",
                                 hint=f"one of: {', '.join(sorted(fleets)) or 'none found'}")])
    return fleets[name] if name else next(iter(fleets.values()))


def plan_catalog(catalog: Catalog, fleet_name: str | None = None, previous: Plan | None = None,
                 options: PlanOptions | None = None) -> Plan:
    """Plan every ModelDeployment of the catalog on its (chosen) Fleet."""
    fleet = choose_fleet(catalog, fleet_name)
    deployments = list(catalog.deployments.values())
    if not deployments:
        raise SpecError([Problem("no ModelDeployment documents in the files", hint="add deployments with -f")])
    return plan(fleet, deployments, catalog, previous, options or PlanOptions())


def plan_or_given(catalog: Catalog, fleet_name: str | None = None, previous: Plan | None = None,
                  options: PlanOptions | None = None) -> PlanInputs:
    """The one Plan document among the files, used as it is (the other files add profiles and its fleet), or the
    fleet and deployments planned now (stable against ``previous``)."""
    plans = list(catalog.plans.values())
    if len(plans) > 1:
        raise SpecError([Problem(f"{len(plans)} Plan documents given: {', '.join(sorted(catalog.plans))}",
                                 hint="give one plan at a time")])
    if plans:
        given = plans[0]
        return PlanInputs(given, catalog.fleets.get(fleet_name or given.spec.fleet), given=True)
    planned = plan_catalog(catalog, fleet_name, previous, options)
    return PlanInputs(planned, catalog.fleets[planned.spec.fleet], given=False)
