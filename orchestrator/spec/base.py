"""Shared pieces of every moxin document: the envelope (apiVersion/kind/metadata/spec) and types.

Specs are plain data: pydantic models with ``extra="forbid"``, camelCase field names in YAML,
units in names, constraints and a description on every field (the JSON Schema is generated from them).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

API_VERSION = "moxin.dev/v1alpha1"

# --- Limits on numbers -------------------------------------------------------------------------------
# Generous: far beyond any real fleet or model, low enough that the planner's arithmetic stays finite
# and its work small (placement keeps one entry per node and device). The loader reports a value past
# one as "at most N".
MAX_REQUESTS_PER_SECOND = 10_000_000
"""Traffic of one deployment, requests/s."""
MAX_TOKENS = 10_000_000
"""Context, prompt and output lengths, and a model's maximum context, in tokens."""
MAX_REPLICAS = 100_000
"""Replicas of one deployment (replicas.min/max) or one assignment."""
MAX_NODES_PER_POOL = 100_000
"""Nodes of one pool."""
MAX_NODES_PER_FLEET = 100_000
"""Nodes of one fleet, all pools together."""
MAX_DEVICES_PER_NODE = 256
"""Devices in one node (a profile's devicesPerNode, a pool's)."""
MAX_USD_PER_DEVICE_HOUR = 10_000
"""Price of one device for one hour."""
MAX_MEMORY_GB = 1_000_000
"""Memory of one device, GB."""
MAX_BANDWIDTH_GBPS = 1_000_000
"""Memory or interconnect bandwidth of one device, GB/s."""
MAX_TFLOPS = 1_000_000
"""Peak compute of one device, TFLOPS (TOPS)."""
MAX_SECONDS = 604_800
"""Any duration in a document (SLO targets, rollout pauses): one week."""
MAX_ARCHITECTURE_SIZE = 10_000_000
"""Any size in a model architecture (layers, widths, heads, experts, vocabulary)."""
MAX_PARAMETERS = 1e15
"""Published parameter counts."""

FiniteFloat = Annotated[float, AllowInfNan(False)]
"""A float that is neither infinite nor NaN (YAML's .inf/.nan are refused). Integers are accepted."""

# --- Named string types ------------------------------------------------------------------------------
# Strings that end up in Kubernetes objects, environments or command lines are checked where they are
# written, with anchored patterns (the JSON Schema shows them). PATTERN_MEANINGS turns a mismatch into words.
PATTERN_MEANINGS: dict[str, str] = {}


def _pattern(pattern: str, max_length: int, meaning: str, min_length: int = 0) -> Any:
    PATTERN_MEANINGS[pattern] = meaning
    return Annotated[str, StringConstraints(pattern=pattern, max_length=max_length, min_length=min_length or None),
                     Field(description=meaning[0].upper() + meaning[1:] + ".")]


# Kubernetes object names: DNS-1123 label (lowercase alphanumerics and '-', at most 63 characters).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Model names follow their upstream spelling ("llama-3.1-8b"): a label that may also hold dots.
# Wherever one becomes part of a Kubernetes object name, the renderer replaces the dots.
MODEL_NAME = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$"
QUALIFIED_NAME = rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_DOMAIN_PART = r"([A-Za-z0-9]|[A-Za-z0-9][-A-Za-z0-9]*[A-Za-z0-9])"
_PATH_PART = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = (rf"^({_DOMAIN_PART}(\.{_DOMAIN_PART})*(:[0-9]+)?/)?{_PATH_PART}(/{_PATH_PART})*"
             r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")

Name = _pattern(DNS1123_LABEL, 63, "a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters")
ModelName = _pattern(MODEL_NAME, 63, "a model name: lowercase letters, digits, '-' and '.', at most 63 characters")
DnsSubdomain = _pattern(DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain: dot-separated lowercase labels of "
                        "letters, digits and '-', at most 253 characters (e.g. 'nvidia')")
QualifiedName = _pattern(QUALIFIED_NAME, 317, "a Kubernetes qualified name: an optional DNS-subdomain prefix and "
                         "'/', then at most 63 letters, digits, '-', '_' and '.' (e.g. 'nvidia.com/gpu')", 1)
LabelKey = QualifiedName
"""A Kubernetes label or annotation key (a qualified name, e.g. 'moxin.dev/pool')."""
LabelValue = _pattern(LABEL_VALUE, 63, "a Kubernetes label value: at most 63 letters, digits, '-', '_' and '.', "
                      "beginning and ending with a letter or digit (or empty)")
EnvName = _pattern(ENV_NAME, 256, "an environment variable name: a C identifier (letters, digits and '_', "
                   "not starting with a digit)", 1)
ImageRef = _pattern(IMAGE_REF, 512, "a container image reference: [registry[:port]/]path[:tag][@digest], "
                    "no spaces or control characters (e.g. 'vllm/vllm-openai:v0.11.0')", 1)


_HOST_NAME = re.compile(DNS1123_SUBDOMAIN.strip("^$"))  # IPv4 addresses match it too


def _host_address(value: str) -> str:
    if _HOST_NAME.fullmatch(value):
        return value
    try:
        if "%" not in value:  # an IPv6 scope ('fe80::1%eth0') names an interface of one machine
            ipaddress.IPv6Address(value)
            return value
    except ValueError:
        pass
    port = " (addresses carry no port)" if ":" in value and value.count(":") == 1 else ""
    raise ValueError(f"{value!r} is neither an IP address nor a lowercase DNS name{port}")


HostAddress = Annotated[str, StringConstraints(max_length=253), AfterValidator(_host_address),
                        WithJsonSchema({"type": "string", "maxLength": 253, "anyOf": [
                            {"format": "ipv4"}, {"format": "ipv6"}, {"pattern": DNS1123_SUBDOMAIN}],
                            "description": "A machine's address: an IPv4 or IPv6 address, or a lowercase DNS "
                                           "name; no port."})]
"""A machine address (an IP, or a lowercase DNS-1123 subdomain), without a port: it becomes an
EndpointSlice address and a Ray node name."""


class FieldError(ValueError):
    """A model validator's error about one field below the model: the loader reports it at ``path``
    (relative to the model), with that field's own line, rather than at the model."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.path = path


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
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Labels, as in Kubernetes (keys are qualified names, values label values)."""
    annotations: dict[LabelKey, str] = Field(default_factory=dict)
    """Annotations, as in Kubernetes (keys are qualified names)."""


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
