"""Shared pieces of every moxin document: the envelope (apiVersion/kind/metadata/spec) and types.

Specs are plain data: pydantic models with ``extra="forbid"``, camelCase field names in YAML,
units in names, constraints and a description on every field (the JSON Schema is generated from them).
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

API_VERSION = "moxin.dev/v1alpha1"

# Kubernetes object names: DNS-1123 label (lowercase alphanumerics and '-', at most 63 characters).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Model names follow their upstream spelling ("llama-3.1-8b"): a label that may also hold dots.
# Wherever one becomes part of a Kubernetes object name, the renderer replaces the dots.
MODEL_NAME = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"

Name = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, max_length=63)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME, max_length=63)]


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, YAML keys are camelCase, values frozen."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )


class ObjectMeta(Strict):
    name: Name
    """Object name: a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels, as in Kubernetes."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Free-form annotations, as in Kubernetes."""


class ModelObjectMeta(ObjectMeta):
    name: ModelName  # type: ignore[assignment]
    """Model name: lowercase letters, digits, '-' and '.', at most 63 characters (e.g. 'glm-4.5-air')."""


S = TypeVar("S", bound=BaseModel)


class Document(Strict, Generic[S]):
    """The Kubernetes-style envelope shared by every kind."""

    api_version: Literal["moxin.dev/v1alpha1"] = Field(alias="apiVersion")
    """Always 'moxin.dev/v1alpha1'."""
    kind: str
    """The document kind."""
    metadata: ObjectMeta
    """Name, labels and annotations."""
    spec: S
    """The desired state."""

    @property
    def name(self) -> str:
        return self.metadata.name


class Source(Strict):
    """Where published numbers come from. Every number in a profile or model names one."""

    fields: list[str] = Field(min_length=1)
    """Field paths under 'spec' this source supports, e.g. 'memoryGB' or 'peakTflops.fp8'."""
    ref: str = Field(min_length=3)
    """The document: datasheet title, paper, source file, with a URL where there is one."""
    note: str | None = None
    """How the number was read or derived, and how sure it is."""


def require_sources(paths: list[str], sources: list[Source]) -> None:
    """Raise unless every field path in ``paths`` is covered by a source (a source of 'a' covers 'a.b')."""
    missing = [p for p in paths if not any(p == f or p.startswith(f + ".") for s in sources for f in s.fields)]
    if missing:
        raise ValueError(f"numbers without a source: {', '.join(missing)}; add them to a sources[].fields list, "
                         "or leave the number out")
