"""Plan -> Kubernetes objects, by rendering the ``helm/moxin`` chart with the plan's values.

One source of truth: the objects are exactly what ``helm install`` would create from the values
``render/helm.py`` derives (rendered in-process by helm-python-sdk, no helm binary, no cluster). Reading the
chart and values files, and writing the objects out, are the only effects here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import MoxinError, Problem, SpecError
from orchestrator.output import to_yaml, write_atomic
from orchestrator.render.helm import RenderError, deep_merge, helm_values
from orchestrator.render.values import ChartValues
from orchestrator.spec.catalog import Catalog
from orchestrator.spec.fleet import Fleet
from orchestrator.spec.plan import Plan

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
RELEASE = "moxin"
# The order kubectl/helm create kinds in: what others reference first.
KIND_ORDER = ["Namespace", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding",
              "NetworkPolicy", "Service", "EndpointSlice", "Deployment", "LeaderWorkerSet", "RayCluster", "Job",
              "PodDisruptionBudget", "PodMonitor", "ServiceMonitor", "PrometheusRule"]


def chart_dir() -> Path:
    """The chart: inside the wheel (orchestrator/_builtin/helm/moxin), or at the top of a checkout."""
    inside = _PACKAGE_DIR / "_builtin" / "helm" / "moxin"
    return inside if (inside / "Chart.yaml").is_file() else _PACKAGE_DIR.parent / "helm" / "moxin"


def _helm() -> Any:
    try:
        import helm_python
    except ImportError:
        raise MoxinError("helm-python-sdk is not installed: install the k8s extra "
                         "(pip install 'moxin[k8s]')") from None
    return helm_python


def render_chart(values: Mapping[str, Any] | None, *, namespace: str = "moxin", release: str = RELEASE,
                 chart: Path | None = None, check: bool = True) -> list[dict[str, Any]]:
    """Render the chart with ``values`` (over its defaults) into objects, in creation order. Values the
    chart's models reject (``check``, for moxin's own chart) become RenderError naming every bad field;
    values its schema rejects, and template failures, become RenderError (exit 2) with Helm's message.
    ``check=False`` leaves the values to the chart's schema alone, as ``helm install`` does."""
    if check and chart is None:
        check_values(values)
    helm = _helm()
    try:
        with helm.Chart.load(str(chart or chart_dir())) as loaded:
            manifests = loaded.render(dict(values or {}), name=release, namespace=namespace)
    except helm.HelmError as exc:
        raise RenderError(f"the moxin chart refused these values: {_clean(str(exc))}") from None
    objects = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects += [doc for doc in yaml.safe_load_all(manifests[path]) if doc]
    return sorted(objects, key=_creation_order)


def check_values(values: Mapping[str, Any] | None) -> None:
    """Refuse values that the chart's typed values (render/values.py, from which values.schema.json is
    generated) reject, over the chart's defaults as Helm merges them, naming every bad field and what it
    holds: Helm checks the same schema but reports a bad map key (an env name, a label key) without its path."""
    merged = _without_nulls(deep_merge(_chart_defaults(), values or {}))
    try:
        ChartValues.model_validate(merged)
    except ValidationError as exc:
        problems = "\n".join(f"  {_field(e['loc'])}: {e['msg']}{_shown(e)}" for e in exc.errors())
        raise RenderError(f"the moxin chart refused these values:\n{problems}\n  To fix: correct the field in the "
                          "spec it came from (hardware profile, deployment, fleet) or in your --values "
                          "file") from None


@functools.cache
def _chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((chart_dir() / "values.yaml").read_text(encoding="utf-8")) or {}


def _without_nulls(value: Any) -> Any:
    """Helm deletes the keys a user sets to null (and so uses no value there at all)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (the key)"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(the values)"


def _shown(error: Any) -> str:
    """What the field holds, escaped (a newline shows as \\n), when it is a plain value."""
    value = error.get("input")
    if error["loc"][-1:] == ("[key]",) or error.get("type") == "missing":
        return ""  # the key is in the field's name; a missing field holds nothing
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f" (got {text[:80] + '...' if len(text) > 80 else text})"
    return ""


def render_objects(plan: Plan, values_overrides: dict[str, Any] | None = None, namespace: str = "moxin",
                   *, catalog: Catalog | None = None, fleet: Fleet | None = None,
                   images: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every object the plan needs in ``namespace``: the chart rendered with the plan's values (plus
    ``values_overrides``). Without a catalog the built-in one resolves the plan's hardware profiles."""
    if catalog is None:
        from orchestrator.spec import load_catalog

        catalog = load_catalog()
    values = helm_values(plan, catalog, fleet=fleet, namespace=namespace, images=images,
                         overrides=values_overrides)
    return render_chart(values.values, namespace=namespace)


def read_values(files: Iterable[Path]) -> dict[str, Any]:
    """Extra chart values from YAML files, merged in order (Helm's -f)."""
    merged: dict[str, Any] = {}
    for f in files:
        extra = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        if not isinstance(extra, dict):
            raise SpecError([Problem("chart values must be a YAML mapping", str(f), 1)])
        merged = deep_merge(merged, extra)
    return merged


def write_objects(objects: list[dict[str, Any]], out_dir: Path) -> None:
    """One file per object in ``out_dir`` (atomically), and the files of an earlier render that this one no longer
    writes removed (only files named like ours)."""
    names = [object_filename(o, i) for i, o in enumerate(objects)]
    for name, obj in zip(names, objects, strict=True):
        write_atomic(out_dir / name, to_yaml(obj))
    for old in out_dir.glob("*.yaml"):
        if _OURS.fullmatch(old.name) and old.name not in names:
            old.unlink()


def object_filename(obj: dict[str, Any], index: int) -> str:
    """A stable file name for one object: NN-kind-name.yaml (NN keeps creation order in `kubectl apply -f`)."""
    return f"{index:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


_OURS = re.compile(r"\d{3}-[a-z]+-.+\.yaml")


def _creation_order(obj: dict[str, Any]) -> tuple[int, str, str]:
    kind = obj.get("kind", "")
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, kind, obj.get("metadata", {}).get("name", "")


def _clean(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()
