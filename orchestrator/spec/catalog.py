"""The catalog: every loaded document by kind and name, with references resolved and checked.

``load_catalog(paths)`` = built-in profiles and models + the user's documents. A user document may
replace a built-in of the same kind and name; two user documents of the same kind and name are an
error. Overlays (a HardwareProfile with ``spec.extends``) are merged onto their bases first
(``spec/overlay.py``). ``resolve`` checks every reference (fleet -> profile, deployment -> model/variant/pool,
rollout -> deployment/variant/pool, benchmark -> model/variant/hardware/engine) and reports each bad one at
its line with a did-you-mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.benchmark import Benchmark
from orchestrator.spec.deployment import ModelDeployment
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.hardware import HardwareProfile
from orchestrator.spec.loader import Loaded, load_documents
from orchestrator.spec.model import Model
from orchestrator.spec.overlay import resolve_overlays
from orchestrator.spec.plan import Plan
from orchestrator.spec.rollout import Rollout
from orchestrator.spec.suggest import did_you_mean

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def builtin_dirs() -> tuple[Path, Path]:
    """(hardware profiles, model catalog): inside the wheel, or at the top of a source checkout."""
    inside = _PACKAGE_DIR / "_builtin"
    if (inside / "hardware_profiles").is_dir():
        return inside / "hardware_profiles", inside / "models"
    root = _PACKAGE_DIR.parent
    return root / "hardware_profiles", root / "manifests" / "models"


def local_example_dir() -> Path:
    """The embedded default's fleet, model and deployment (``moxin up`` with no arguments)."""
    inside = _PACKAGE_DIR / "_builtin" / "local"
    return inside if inside.is_dir() else _PACKAGE_DIR.parent / "manifests" / "local"


@dataclass(frozen=True)
class Catalog:
    """Immutable view of every document, by kind and name."""

    entries: Mapping[tuple[str, str], Loaded] = field(default_factory=dict)

    def _of(self, kind: str) -> dict[str, Any]:
        return {name: e.doc for (k, name), e in sorted(self.entries.items()) if k == kind}

    @property
    def profiles(self) -> dict[str, HardwareProfile]:
        return self._of("HardwareProfile")

    @property
    def models(self) -> dict[str, Model]:
        return self._of("Model")

    @property
    def fleets(self) -> dict[str, Fleet]:
        return self._of("Fleet")

    @property
    def deployments(self) -> dict[str, ModelDeployment]:
        return self._of("ModelDeployment")

    @property
    def rollouts(self) -> dict[str, Rollout]:
        return self._of("Rollout")

    @property
    def plans(self) -> dict[str, Plan]:
        return self._of("Plan")

    @property
    def benchmarks(self) -> dict[str, Benchmark]:
        return self._of("Benchmark")

    def entry(self, kind: str, name: str) -> Loaded:
        return self.entries[(kind, name)]

    def profile(self, name: str) -> HardwareProfile:
        return self._get("HardwareProfile", name)  # type: ignore[return-value]

    def model(self, name: str) -> Model:
        return self._get("Model", name)  # type: ignore[return-value]

    def _get(self, kind: str, name: str) -> Any:
        found = self.entries.get((kind, name))
        if found is None:
            names = [n for k, n in self.entries if k == kind]
            raise SpecError([Problem(f"unknown {kind} {name!r}", hint=did_you_mean(name, names))])
        return found.doc


def build_catalog(builtin: Iterable[Loaded], user: Iterable[Loaded]) -> Catalog:
    entries: dict[tuple[str, str], Loaded] = {}
    for item in builtin:
        entries[(item.kind, item.name)] = item
    builtin_entries = dict(entries)
    seen: dict[tuple[str, str], Loaded] = {}
    problems = []
    for item in user:
        key = (item.kind, item.name)
        if key in seen:
            file, line = seen[key].where("metadata", "name")
            problems.append(item.problem(("metadata", "name"), f"{item.kind} {item.name!r} is defined twice "
                                         f"(first at {file}:{line})", "rename one of them"))
            continue
        seen[key] = item
        entries[key] = item
    problems += resolve_overlays(entries, builtin_entries)
    if problems:
        raise SpecError(problems)
    catalog = Catalog(MappingProxyType(entries))
    resolve(catalog)
    return catalog


@lru_cache(maxsize=1)
def builtin_documents() -> tuple[Loaded, ...]:
    profiles, models = builtin_dirs()
    return tuple(load_documents([profiles, models]))


def load_catalog(paths: Iterable[Path] = (), *, builtin: bool = True) -> Catalog:
    """The built-in catalog plus the documents under ``paths``, resolved."""
    user = load_documents(list(paths)) if paths else []
    return build_catalog(builtin_documents() if builtin else (), user)


def resolve(catalog: Catalog) -> None:
    """Check every reference between documents; raise one SpecError listing each broken one."""
    problems: list[Problem] = []
    profiles = catalog.profiles
    models = catalog.models
    pools = {p.name for f in catalog.fleets.values() for p in f.spec.pools}
    for (kind, _), entry in sorted(catalog.entries.items()):
        if kind == "Fleet":
            problems += _check_fleet(entry, profiles)
        elif kind == "ModelDeployment":
            problems += _check_deployment(entry, models, pools)
        elif kind == "Rollout":
            problems += _check_rollout(entry, catalog, pools)
        elif kind == "Benchmark":
            problems += _check_benchmark(entry, models, profiles)
    if problems:
        raise SpecError(problems)


def _check_fleet(entry: Loaded, profiles: dict[str, HardwareProfile]) -> list[Problem]:
    out = []
    for i, pool in enumerate(entry.doc.spec.pools):
        profile = profiles.get(pool.hardware)
        if profile is None:
            out.append(entry.problem(("spec", "pools", i, "hardware"), f"unknown hardware profile {pool.hardware!r}",
                                     did_you_mean(pool.hardware, profiles)))
            continue
        most = profile.spec.devices_per_node
        if pool.devices_per_node is not None and pool.devices_per_node > most:
            # The profile's interconnect and the estimator's parallelism are per node of that size.
            out.append(entry.problem(("spec", "pools", i, "devicesPerNode"),
                                     f"{pool.devices_per_node} devices per node, but a {pool.hardware} node has {most}",
                                     f"use at most {most}, or write a HardwareProfile of your own for the larger "
                                     "node (its interconnect differs)"))
    return out


def _check_deployment(entry: Loaded, models: dict[str, Model], pools: set[str]) -> list[Problem]:
    spec = entry.doc.spec
    model = models.get(spec.model)
    if model is None:
        return [entry.problem(("spec", "model"), f"unknown model {spec.model!r}", did_you_mean(spec.model, models))]
    out = []
    variants = [v.name for v in model.spec.variants]
    for i, v in enumerate(spec.variants):
        if v not in variants:
            out.append(entry.problem(("spec", "variants", i), f"model {spec.model!r} has no variant {v!r}",
                                     did_you_mean(v, variants)))
    if pools:
        for i, p in enumerate(spec.pools):
            if p not in pools:
                out.append(entry.problem(("spec", "pools", i), f"no fleet has a pool {p!r}", did_you_mean(p, pools)))
    arch = model.spec.architecture
    if arch is not None and spec.context_tokens > arch.max_position_embeddings:
        out.append(entry.problem(("spec", "contextTokens"),
                                 f"{spec.context_tokens} tokens exceeds {spec.model}'s maximum context of "
                                 f"{arch.max_position_embeddings}", f"use at most {arch.max_position_embeddings}"))
    return out


def _check_rollout(entry: Loaded, catalog: Catalog, pools: set[str]) -> list[Problem]:
    spec = entry.doc.spec
    deployments = catalog.deployments
    dep = deployments.get(spec.deployment)
    if dep is None:
        return [entry.problem(("spec", "deployment"), f"unknown deployment {spec.deployment!r}",
                              did_you_mean(spec.deployment, deployments))]
    out = []
    model = catalog.models.get(dep.spec.model)
    variants = [v.name for v in model.spec.variants] if model else []
    for side, target in (("from", spec.from_), ("to", spec.to)):
        if target.variant is not None and model and target.variant not in variants:
            out.append(entry.problem(("spec", side, "variant"), f"model {dep.spec.model!r} has no variant "
                                     f"{target.variant!r}", did_you_mean(target.variant, variants)))
        if target.pool is not None and pools and target.pool not in pools:
            out.append(entry.problem(("spec", side, "pool"), f"no fleet has a pool {target.pool!r}",
                                     did_you_mean(target.pool, pools)))
    # The planner keeps a deployment to its variants and pools: a target outside them would be planned away again.
    if spec.to.variant is not None and dep.spec.variants and spec.to.variant in variants and (
            spec.to.variant not in dep.spec.variants):
        out.append(entry.problem(("spec", "to", "variant"), f"deployment {spec.deployment!r} allows only variants "
                                 f"{', '.join(dep.spec.variants)}", f"add {spec.to.variant!r} to its spec.variants"))
    if spec.to.pool is not None and dep.spec.pools and spec.to.pool in pools and spec.to.pool not in dep.spec.pools:
        out.append(entry.problem(("spec", "to", "pool"), f"deployment {spec.deployment!r} allows only pools "
                                 f"{', '.join(dep.spec.pools)}", f"add {spec.to.pool!r} to its spec.pools"))
    return out


def _check_benchmark(entry: Loaded, models: dict[str, Model],
                     profiles: dict[str, HardwareProfile]) -> list[Problem]:
    spec = entry.doc.spec
    out = []
    model = models.get(spec.model)
    if model is None:
        out.append(entry.problem(("spec", "model"), f"unknown model {spec.model!r}",
                                 did_you_mean(spec.model, models)))
    else:
        variants = [v.name for v in model.spec.variants]
        if spec.variant not in variants:
            out.append(entry.problem(("spec", "variant"), f"model {spec.model!r} has no variant "
                                     f"{spec.variant!r}", did_you_mean(spec.variant, variants)))
    profile = profiles.get(spec.hardware)
    if profile is None:
        out.append(entry.problem(("spec", "hardware"), f"unknown hardware profile {spec.hardware!r}",
                                 did_you_mean(spec.hardware, profiles)))
    elif profile.spec.engine(spec.engine) is None:
        engines = [e.engine for e in profile.spec.engines]
        out.append(entry.problem(("spec", "engine"), f"hardware profile {spec.hardware!r} has no engine "
                                 f"{spec.engine!r}", f"its engines: {', '.join(engines)}"))
    return out
