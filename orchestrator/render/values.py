"""The values of the ``helm/moxin`` chart as typed models: the one source of ``values.schema.json``.

Where it sits: ``render/helm.py`` (engines, router) and ``render/kuberay.py`` (KubeRay mode) derive
values from a plan; the chart checks every value against ``values.schema.json``, which is generated from
these models::

    python -m orchestrator.render.values > helm/moxin/values.schema.json

Tests keep the committed schema equal to the generated one, and the models' defaults equal to the
chart's ``values.yaml``. Optional fields are left out rather than set to null (Helm deletes keys whose
value is null), so the schema never allows null.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from orchestrator.spec.defaults import MODEL_ROOT
from orchestrator.spec.engine import EngineName
from orchestrator.spec.router import RouterLimits

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# --------------------------------------------------------------------------------------- patterns
# Every string the chart writes as a name, label key or value, env name, image, path, resource name or
# selector is constrained with one of these (the templates also quote every string; a pattern makes a
# value that Kubernetes would read otherwise an error naming its field). Argv entries, env values,
# annotations and scripts may hold any text. The patterns are anchored and read alike by Go's regexp (Helm
# checks values.schema.json with it), ECMA-262 (JSON Schema) and pydantic's Rust regex: no lookaround, no
# backreferences, no \u escapes.

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_IMAGE_DOMAIN = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]+)?"
_IMAGE_PATH = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_IMAGE_NAME = rf"({_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(/{_IMAGE_PATH})*"
_IMAGE_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_IMAGE_DIGEST = r"[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NO_CONTROL = r"[^\x00-\x1f\x7f-\x9f]"
_RAY_RESOURCE = r'\\"[-A-Za-z0-9_.:/]+\\": [0-9][0-9.e+-]*'

DNS_LABEL = rf"^{_DNS_LABEL}$"
"""RFC 1123 label (Kubernetes IsDNS1123Label, with max_length 63): namespaces, most object names."""
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
"""RFC 1035 label (Kubernetes IsDNS1035Label): Service names, the names render/helm.py object_name() makes."""
DNS_SUBDOMAIN = rf"^{_DNS_SUBDOMAIN}$"
"""RFC 1123 subdomain (Kubernetes IsDNS1123Subdomain, with max_length 253): Secret, claim, StorageClass and
RuntimeClass names, FQDN addresses."""
QUALIFIED_NAME = rf"^({_DNS_SUBDOMAIN}/)?{_NAME_PART}$"
"""Kubernetes qualified name (IsQualifiedName, with max_length 317): label keys, resource names (cpu,
nvidia.com/gpu), taint keys."""
EXTENDED_RESOURCE = rf"^{_DNS_SUBDOMAIN}/{_NAME_PART}$"
"""A device plugin's extended resource: a qualified name with a domain, e.g. nvidia.com/gpu."""
LABEL_VALUE = rf"^({_NAME_PART})?$"
"""Kubernetes label value (IsValidLabelValue): 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends."""
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""An environment variable name a shell can read (a C identifier)."""
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
"""A key of a Secret's or ConfigMap's data (IsConfigMapKey, with max_length 253)."""
IMAGE = rf"^{_IMAGE_NAME}(:{_IMAGE_TAG})?(@{_IMAGE_DIGEST})?$"
"""A container image reference (the distribution reference grammar): [domain[:port]/]path[:tag][@digest]."""
IMAGE_REPOSITORY = rf"^{_IMAGE_NAME}$"
"""An image reference without tag or digest."""
IMAGE_TAG = rf"^({_IMAGE_TAG})?$"
"""An image tag (or empty)."""
ABSOLUTE_PATH = rf"^/{_NO_CONTROL}*$"
"""An absolute file path: no newline or other control character."""
RELATIVE_PATH = rf"^([^/\x00-\x1f\x7f-\x9f]{_NO_CONTROL}*)?$"
"""A path under a mount (or empty): not absolute, no control character."""
URL_PATH = r"^/[!-~]*$"
"""An HTTP path for probes and scrapes: visible ASCII, no spaces."""
HTTP_URL = r"^https?://[!-~]+$"
"""An http(s) URL: visible ASCII, no spaces."""
ADDRESS = rf"^([0-9A-Fa-f.:]+|{_DNS_SUBDOMAIN})$"
"""An endpoint address: IPv4, IPv6 or a lowercase DNS name."""
CIDR = r"^[0-9A-Fa-f.:]+/[0-9]{1,3}$"
"""An IPv4 or IPv6 CIDR block."""
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
"""A Kubernetes resource quantity with a unit suffix ("32Gi", "500m")."""
DURATION = r"^([0-9]+(ms|s|m|h))+$"
"""A Prometheus duration ("30s", "1m30s")."""
RAY_START_PARAM_KEY = r"^[a-z][-a-z0-9]*$"
"""A ``ray start`` flag name (KubeRay rayStartParams key)."""
RAY_START_PARAM_VALUE = rf'^([0-9][0-9.e+-]*|"\{{({_RAY_RESOURCE}(, {_RAY_RESOURCE})*)?\}}")$'
"""A ``ray start`` flag value: a number, or the --resources JSON quoted for the shell (KubeRay writes
rayStartParams into a shell command line unquoted, so nothing else may pass)."""

# ------------------------------------------------------------------------------------------ types


def _pattern(pattern: str, max_length: int | None = None, min_length: int | None = None) -> StringConstraints:
    return StringConstraints(pattern=pattern, max_length=max_length, min_length=min_length)


def _or_empty(pattern: str) -> str:
    """An anchored pattern that also matches the empty string."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return f"^({pattern[1:-1]})?$"


Quantity = Annotated[int, Field(ge=0)] | Annotated[str, _pattern(QUANTITY)]
"""A Kubernetes resource quantity: a count, or a number with a unit suffix ("32Gi", "500m")."""
LabelValue = Annotated[str, _pattern(LABEL_VALUE, 63)]
LabelKey = Annotated[str, _pattern(QUALIFIED_NAME, 317)]
Labels = dict[LabelKey, LabelValue]
ResourceName = Annotated[str, _pattern(QUALIFIED_NAME, 317)]
DeviceResource = Annotated[str, _pattern(_or_empty(EXTENDED_RESOURCE), 317)]
"""An extended resource, or empty (CPU pods)."""
Image = Annotated[str, _pattern(IMAGE, 512)]
Port = Annotated[int, Field(ge=1, le=65535)]
ObjectName = Annotated[str, _pattern(DNS_1035_LABEL, 52)]
"""An object name made by render/helm.py object_name(): a DNS-1035 label short enough for pod names."""
SubdomainName = Annotated[str, _pattern(DNS_SUBDOMAIN, 253)]
OptionalSubdomainName = Annotated[str, _pattern(_or_empty(DNS_SUBDOMAIN), 253)]
"""A Secret's (or other object's) name, or empty: none."""
DataKey = Annotated[str, _pattern(DATA_KEY, 253)]
EnvName = Annotated[str, _pattern(ENV_NAME)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
RayStartParamKey = Annotated[str, _pattern(RAY_START_PARAM_KEY)]
RayStartParamValue = Annotated[str, _pattern(RAY_START_PARAM_VALUE)]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class Values(BaseModel):
    """Base of the values models: unknown keys are errors, keys are camelCase, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True,
                              use_attribute_docstrings=True, validate_default=True)


# --------------------------------------------------------------------------------- shared pieces

class Resources(Values):
    """Container resources (Kubernetes ResourceRequirements, requests and limits only)."""

    requests: dict[ResourceName, Quantity] | None = None
    """Resource requests, e.g. {cpu: "4", memory: 32Gi}."""
    limits: dict[ResourceName, Quantity] | None = None
    """Resource limits, e.g. {memory: 16Gi}."""


class Toleration(Values):
    """A Kubernetes toleration."""

    key: LabelKey | None = None
    """The taint key tolerated (all keys when left out and operator is Exists)."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists: any value; Equal: the value given."""
    value: LabelValue | None = None
    """The taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect tolerated (all effects when left out)."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction."""


class DevicePod(Values):
    """What a pod holding devices needs (an engine pod, or a KubeRay worker pod): the chart's
    moxin.devicePlacement, moxin.engineResources and moxin.containerSecurityContext helpers read these."""

    emulated: bool
    """Emulated pool: a CPU pod that holds no device."""
    device_resource: DeviceResource
    """The vendor's extended resource; empty for CPU (emulated) pods."""
    devices_per_pod: int = Field(ge=0)
    """Devices one pod requests (and limits) of deviceResource."""
    image: Image
    """The container image."""
    node_selector: Labels = Field(default_factory=dict)
    """The profile's node labels (not for emulated pools) and the pool's own labels."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """A toleration for the device resource's taint (engine.tolerations are added)."""
    runtime_class_name: SubdomainName | None = None
    """The profile's RuntimeClass (not for emulated pools)."""
    labels: Labels = Field(default_factory=dict)
    """Labels of the pod (and, for assignments, of its objects)."""


# ---------------------------------------------------------------------------------- operator choices

class PlanRef(Values):
    """The Plan these values came from."""

    name: Annotated[LabelValue, StringConstraints(min_length=1)]
    """Plan name: every object carries moxin.dev/plan=<name> (moxin prunes by it)."""
    fleet: str = ""
    """The Fleet the plan was made for."""


class LocalObjectReference(Values):
    """A reference to an object in the release's namespace."""

    name: SubdomainName
    """The object's name."""


class ServiceAccount(Values):
    """ServiceAccounts for engines and router."""

    create: bool = True
    """Create one ServiceAccount for engines and one for the router (neither mounts an API token)."""


class Rbac(Values):
    """Kubernetes API access."""

    router_reads_config: bool = False
    """A Role letting the router read only its own ConfigMap (for a router that watches its config)."""


class Pvc(Values):
    """A PersistentVolumeClaim shared by every pod that reads checkpoints."""

    claim_name: SubdomainName = "moxin-models"
    """The claim's name."""
    create: bool = False
    """Create the claim with this chart (kept when the release is uninstalled)."""
    size: Quantity = "2Ti"
    """Requested storage of a created claim."""
    storage_class_name: OptionalSubdomainName = ""
    """StorageClass of a created claim (empty: the cluster's default)."""
    access_modes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]] = \
        Field(default_factory=lambda: ["ReadWriteMany"], min_length=1)
    """Access modes of a created claim."""
    read_only: bool = False
    """Mount the claim read-only."""


class ObjectStore(Values):
    """Checkpoints fetched from object storage by an rclone init container into a per-pod emptyDir."""

    image: Image = "rclone/rclone:1.68.2"
    """The rclone image."""
    remote: str = ""
    """rclone remote path holding <model>/<variant>/ trees, e.g. ":s3:my-bucket/models"."""
    secret_name: OptionalSubdomainName = ""
    """Secret with RCLONE_* variables (credentials, endpoint), mounted as environment."""
    size_limit: Quantity = "500Gi"
    """Size limit of the per-pod emptyDir."""


class ModelStorage(Values):
    """Where checkpoints live."""

    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"properties": {"type": {"const": "objectStore"}}},
        "then": {"properties": {"objectStore": {"required": ["remote"], "properties": {"remote": {"minLength": 1}}}}},
    }]})

    mount_path: Annotated[str, _pattern(ABSOLUTE_PATH)]
    """Where checkpoints are mounted in every pod (launches read <mountPath>/<model>/<variant>)."""
    type: Literal["pvc", "objectStore"]
    """pvc: a shared PersistentVolumeClaim; objectStore: an emptyDir per pod filled from object storage."""
    pvc: Pvc = Pvc()
    """The shared claim (type pvc)."""
    object_store: ObjectStore = ObjectStore()
    """The object storage (type objectStore)."""

    @model_validator(mode="after")
    def _object_store_has_a_remote(self) -> ModelStorage:
        if self.type == "objectStore" and not self.object_store.remote:
            raise ValueError("modelStorage.type objectStore needs modelStorage.objectStore.remote")
        return self


class HubToken(Values):
    """A Hugging Face token for gated checkpoints, from a Secret (never inline)."""

    secret_name: OptionalSubdomainName = ""
    """The Secret holding the token (empty: no token)."""
    key: DataKey = "token"
    """The key of the token in the Secret."""


class Probes(Values):
    """Engine probes' timing (the startup budget comes from each launch's readinessTimeoutSeconds)."""

    period_seconds: int = Field(10, ge=1)
    """Startup probe period."""
    readiness_period_seconds: int = Field(5, ge=1)
    """Readiness probe period."""
    liveness_period_seconds: int = Field(15, ge=1)
    """Liveness probe period."""
    liveness_failure_threshold: int = Field(4, ge=1)
    """Failed liveness probes before a restart."""
    timeout_seconds: int = Field(5, ge=1)
    """Timeout of every probe."""


class Engine(Values):
    """Settings of every pod that runs engines: engine Deployments and LeaderWorkerSets, KubeRay workers."""

    image_pull_policy: PullPolicy = "IfNotPresent"
    """Pull policy of engine images."""
    resources: Resources = Resources(requests={"cpu": "4", "memory": "32Gi"})
    """Host CPU and memory of a pod holding devices (the device resource is added per pod)."""
    emulated_resources: Resources = Resources(requests={"cpu": "2", "memory": "8Gi"}, limits={"memory": "16Gi"})
    """Host CPU and memory of an emulated (CPU) pod."""
    shared_memory_size: Quantity = "16Gi"
    """Size limit of /dev/shm (a memory-backed emptyDir)."""
    termination_grace_period_seconds: int = Field(60, ge=0)
    """Grace period of engine pods (it includes preStopSeconds; more than that, or the engine gets no SIGTERM
    time at all)."""
    pre_stop_seconds: int = Field(5, ge=0, le=300)
    """Seconds a serving engine pod sleeps (preStop) before it gets SIGTERM, so that its Service endpoint is gone
    and routers stop sending it requests before it stops taking them (the image needs `sleep`; 0: none)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Extra tolerations of every pod holding devices (the vendor resource is tolerated already)."""
    affinity: dict[str, Any] = Field(default_factory=dict)
    """Affinity of every pod holding devices (Kubernetes Affinity)."""
    pod_security_context: dict[str, Any] = Field(default_factory=lambda: {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"}})
    """PodSecurityContext of every pod moxin runs (engines, router, Ray nodes, the apply Job)."""
    security_context: dict[str, Any] = Field(default_factory=lambda: {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}})
    """Container SecurityContext of every container moxin runs (Ray nodes keep a writable root)."""
    security_overrides: dict[ResourceName, dict[str, Any]] = Field(default_factory=dict)
    """Per vendor resource, a container SecurityContext that replaces securityContext where the vendor's
    device stack needs more (e.g. "huawei.com/Ascend910": {runAsUser: 0})."""
    probes: Probes = Probes()
    """Probe timing."""

    @model_validator(mode="after")
    def _grace_outlasts_the_pre_stop(self) -> Engine:
        if self.termination_grace_period_seconds <= self.pre_stop_seconds:
            raise ValueError(f"engine.terminationGracePeriodSeconds ({self.termination_grace_period_seconds}) must "
                             f"be more than engine.preStopSeconds ({self.pre_stop_seconds}): the grace period "
                             "includes the preStop sleep, and the engine needs time after SIGTERM")
        return self


class PodDisruptionBudget(Values):
    """A PodDisruptionBudget per assignment."""

    enabled: bool = True
    """Create them."""
    max_unavailable: Annotated[int, Field(ge=1)] | Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]?%$|^100%$")] = 1
    """Pods of an assignment down at once during voluntary disruptions (never 0: drains would block)."""


# ---------------------------------------------------------------------------------- from the plan

class AssignmentBase(Values):
    """What the plan says of one assignment."""

    id: ObjectName
    """Object name of the assignment (DNS-1035 label; short enough for pod names)."""
    deployment: NonEmpty
    """The ModelDeployment."""
    model: NonEmpty
    """The Model."""
    variant: NonEmpty
    """The model's variant."""
    pool: NonEmpty
    """The fleet pool."""
    hardware: NonEmpty
    """The pool's HardwareProfile."""
    engine: EngineName
    """The engine."""
    platform: NonEmpty
    """The engine's platform (cuda, rocm, cpu, ...)."""
    emulated: bool
    """Emulated pool: runs on CPU as the declared hardware."""
    replicas: int = Field(ge=0)
    """Replicas the plan gives the assignment."""
    port: Port
    """The engine's HTTP port."""
    labels: Labels
    """moxin.dev/* labels of the assignment's objects."""


class Assignment(AssignmentBase, DevicePod):
    """An assignment whose engines run as pods: a Deployment (one node per replica) or a LeaderWorkerSet."""

    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"properties": {"kind": {"const": "LeaderWorkerSet"}}},
        "then": {"required": ["leaderScript", "workerScript"], "properties": {"groupSize": {"minimum": 2}}},
    }]})

    kind: Literal["Deployment", "LeaderWorkerSet"]
    """Deployment: each replica on one node; LeaderWorkerSet: a replica spans groupSize nodes."""
    group_size: int = Field(ge=1)
    """Pods (nodes) per replica."""
    argv: list[str] = Field(min_length=1)
    """The engine's command line."""
    env: dict[EnvName, str]
    """The engine's environment."""
    api_key_env: EnvName | None = None
    """The variable the engine reads the key it requires of callers from (set from engineAuth's Secret);
    left out for engines that take no key."""
    health_path: Annotated[str, _pattern(URL_PATH)]
    """Path of the engine's health endpoint (probes)."""
    metrics_path: Annotated[str, _pattern(_or_empty(URL_PATH))]
    """Path of the engine's Prometheus metrics (empty: none, no PodMonitor)."""
    readiness_timeout_seconds: int = Field(ge=1)
    """How long the engine may take to become ready (weights load included): the startup probe's budget."""
    affinity: dict[str, Any] | None = None
    """Affinity of this assignment's pods (instead of engine.affinity)."""
    model_sub_path: Annotated[str, _pattern(RELATIVE_PATH)] | None = None
    """The checkpoint's path under the model mount (empty for a hub id, which the engine downloads)."""
    shared_memory_size: Quantity | None = None
    """Size limit of /dev/shm (instead of engine.sharedMemorySize)."""
    leader_script: str | None = None
    """LeaderWorkerSet leader: starts the Ray head, then execs the engine argv."""
    worker_script: str | None = None
    """LeaderWorkerSet worker: joins the leader's Ray head."""

    @model_validator(mode="after")
    def _groups_have_scripts(self) -> Assignment:
        if self.kind == "LeaderWorkerSet" and (self.group_size < 2 or not self.leader_script
                                               or not self.worker_script):
            raise ValueError("a LeaderWorkerSet assignment needs groupSize >= 2, leaderScript and workerScript")
        return self


class EndpointSlice(Values):
    """Addresses of one type, for one EndpointSlice."""

    address_type: Literal["IPv4", "IPv6", "FQDN"]
    """The addresses' type."""
    addresses: list[Annotated[str, _pattern(ADDRESS, 253)]] = Field(min_length=1, max_length=100)
    """The machines' addresses."""


class ExternalAssignment(AssignmentBase):
    """An assignment on machines that are not Kubernetes nodes (Apple silicon): a selector-less Service
    and EndpointSlices listing the machines."""

    endpoint_slices: list[EndpointSlice] = Field(min_length=1)
    """One per address type."""


class Route(Values):
    """One target of a deployment in the router's table."""

    name: ObjectName
    """The assignment's id."""
    url: Annotated[str, _pattern(HTTP_URL)]
    """The assignment's Service URL."""
    request_model: NonEmpty
    """The model name the engine answers to."""
    weight: float = Field(gt=0)
    """Share of the deployment's requests (proportional to planned capacity)."""
    labels: dict[str, str]
    """Labels of the route's metrics."""
    side: Literal["stable", "canary"] = "stable"
    """During a rollout, the side this route serves (the router sends it the deployment's split; absent:
    stable)."""


class Split(Values):
    """A rollout's traffic split of one deployment between its stable and canary routes."""

    canary_percent: float = Field(ge=0, le=100)
    """Percent of the deployment's requests sent to its canary routes."""


class RouterConfig(Values):
    """router.json."""

    deployments: dict[str, list[Route]]
    """Per deployment, its routes."""
    splits: dict[str, Split] | None = None
    """Per deployment under a rollout (``moxin rollout`` on Kubernetes writes it), its split; absent: none."""


class RouterImage(Values):
    """The router's image (the moxin image)."""

    repository: Annotated[str, _pattern(IMAGE_REPOSITORY, 384)] = "ghcr.io/moxin-dev/moxin"
    """Image repository."""
    tag: Annotated[str, _pattern(IMAGE_TAG)] = ""
    """Image tag (empty: the chart's appVersion)."""
    pull_policy: PullPolicy = "IfNotPresent"
    """Pull policy."""


class RouterService(Values):
    """The router's Service."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Port = 8080
    """Service port."""


class RouterApiKeys(Values):
    """The router's API keys: a file in an existing Secret, mounted read-only (never a value)."""

    secret_name: OptionalSubdomainName = ""
    """The Secret holding the keys file (empty: the router asks callers for no key)."""
    key: DataKey = "keys.yaml"
    """The key of the keys file in the Secret; the router reads it as /etc/moxin/keys/keys.yaml."""


class Router(Values):
    """The moxin router: an OpenAI-compatible front door spreading requests over assignments by weight."""

    enabled: bool = True
    """Run the router Deployment."""
    image: RouterImage = RouterImage()
    """Its image."""
    replicas: int = Field(2, ge=0)
    """Router replicas."""
    port: Port = 8080
    """Container port."""
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    """Router processes per pod sharing its port (moxin router --workers): auto is one per CPU the container may
    use (its cpu limit, else the node's cores), no more than its memory limit holds at 128 MiB each, at most 16;
    1 is a single process. With auto or past 1 the pod's /metrics (every worker's) is on metricsPort."""
    metrics_port: Port = 9091
    """The port of the router pod's /metrics when workers is auto or past 1 (the ServiceMonitor scrapes it)."""
    resources: Resources = Resources(requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "1Gi"})
    """Container resources."""
    service: RouterService = RouterService()
    """Its Service."""
    config: RouterConfig = RouterConfig(deployments={})
    """router.json, written from the plan by moxin render helm."""
    api_keys: RouterApiKeys = RouterApiKeys()
    """API keys callers must present (moxin router --api-keys)."""
    limits: RouterLimits = RouterLimits()
    """Timeouts towards the engines, connections per engine, drain on shutdown: each passed as the moxin router
    flag of the same name (connectTimeoutSeconds: --connect-timeout-seconds). The pod's grace period is
    preStopSeconds + drainSeconds + 5."""
    pre_stop_seconds: int = Field(5, ge=0, le=300)
    """Seconds a router pod sleeps (preStop) before it gets SIGTERM and closes its port, so that its Service
    endpoint and the load balancers in front have stopped sending it new connections (0: none)."""


class EngineAuth(Values):
    """The key engines require of every caller, from an existing Secret (never a value): engines whose
    assignment names an apiKeyEnv read it from there, and the router sends it (MOXIN_ENGINE_KEY)."""

    secret_name: OptionalSubdomainName = ""
    """The Secret holding the key (empty: engines require no key)."""
    key: DataKey = "engine-key"
    """The key of the engine key in the Secret."""


class LabelSelectorRequirement(Values):
    """One requirement of a label selector."""

    key: LabelKey
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the label's value is compared with values."""
    values: list[LabelValue] | None = None
    """The values (In, NotIn)."""


class LabelSelector(Values):
    """A Kubernetes label selector."""

    match_labels: Labels | None = None
    """Labels a selected object carries, all of them."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Requirements a selected object meets, all of them."""


class IpBlock(Values):
    """A range of IP addresses."""

    cidr: Annotated[str, _pattern(CIDR)]
    """The range, e.g. 10.0.0.0/8."""
    except_: list[Annotated[str, _pattern(CIDR)]] | None = Field(None, alias="except")
    """Ranges within cidr that are left out."""


class NetworkPolicyPeer(Values):
    """Who may connect: pods (podSelector, in namespaces chosen by namespaceSelector, else the release's),
    or an IP range (Kubernetes NetworkPolicyPeer)."""

    pod_selector: LabelSelector | None = None
    """Pods selected by their labels."""
    namespace_selector: LabelSelector | None = None
    """Namespaces selected by their labels (kubernetes.io/metadata.name is each one's name)."""
    ip_block: IpBlock | None = None
    """An IP range."""


class NetworkPolicy(Values):
    """NetworkPolicies admitting only the traffic moxin needs to engine and router pods (ingress only)."""

    enabled: bool = True
    """Create them (the cluster's network plugin must enforce NetworkPolicies)."""
    prometheus: list[NetworkPolicyPeer] = Field(default_factory=lambda: [NetworkPolicyPeer(
        namespace_selector=LabelSelector(match_labels={"kubernetes.io/metadata.name": "monitoring"}),
        pod_selector=LabelSelector(match_labels={"app.kubernetes.io/name": "prometheus"}))])
    """The Prometheus pods that scrape engines and router (kube-prometheus-stack's, in namespace monitoring,
    by default)."""
    router_from: list[NetworkPolicyPeer] = Field(default_factory=list)
    """Who may call the router's port (empty: anyone; Prometheus is always admitted)."""
    engine_from: list[NetworkPolicyPeer] = Field(default_factory=list)
    """Who else may call the engines' port, besides the router and Prometheus."""


class Monitoring(Values):
    """prometheus-operator objects (need its CRDs in the cluster)."""

    pod_monitors: bool = True
    """A PodMonitor per assignment whose engine serves metrics."""
    service_monitors: bool = True
    """A ServiceMonitor for the router."""
    prometheus_rules: bool = True
    """moxin's alerting rules."""
    interval: Annotated[str, _pattern(DURATION)] = "30s"
    """Scrape interval."""
    labels: Labels = Field(default_factory=dict)
    """Labels your Prometheus selects monitors by, e.g. {release: kube-prometheus-stack}."""


class Dashboards(Values):
    """Grafana dashboards as ConfigMaps the Grafana sidecar loads."""

    enabled: bool = True
    """Create them."""
    label: LabelKey = "grafana_dashboard"
    """The label the Grafana sidecar looks for."""
    label_value: LabelValue = "1"
    """Its value."""
    folder: str = "moxin"
    """Grafana folder."""


# ---------------------------------------------------------------------------------------- KubeRay

class RayPorts(Values):
    """Ports of the Ray head."""

    gcs: Port
    """Ray GCS (workers join here)."""
    dashboard: Port
    """Ray dashboard."""
    client: Port
    """Ray Client (the apply Job connects here)."""
    router: Port
    """The moxin router (a Ray actor on the head)."""
    metrics: Port
    """The moxin controller's metrics."""


class RayHead(Values):
    """The Ray head pod: runs the moxin controller and router, holds no devices."""

    resources: Resources = Resources(requests={"cpu": "2", "memory": "8Gi"}, limits={"memory": "8Gi"})
    """Container resources of the head."""


class RayWorkerGroup(DevicePod):
    """A worker group: one pod per node of a Kubernetes pool, declaring the node's Ray resources."""

    name: ObjectName
    """Group name (from the pool's name)."""
    pool: NonEmpty
    """The fleet pool."""
    replicas: int = Field(ge=0)
    """Pods: the pool's nodes (fixed: min = max = replicas)."""
    ray_start_params: dict[RayStartParamKey, RayStartParamValue]
    """KubeRay rayStartParams: num-cpus/num-gpus and the custom resources (JSON, quoted for the shell)."""


class KubeRay(Values):
    """KubeRay mode: a RayCluster shaped like the fleet and a Job running `moxin apply` on it."""

    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"required": ["enabled"], "properties": {"enabled": {"const": True}}},
        "then": {"required": ["clusterName", "rayVersion", "image", "planYaml", "ports"]},
    }]})

    enabled: bool = False
    """Render the KubeRay objects (moxin render kuberay turns this on, and engines and router off)."""
    image_pull_policy: PullPolicy = "IfNotPresent"
    """Pull policy of the Ray pods and the Job."""
    head: RayHead = RayHead()
    """The head pod."""
    cluster_name: ObjectName | None = None
    """The RayCluster's name (moxin-<plan>); the other objects are named after it."""
    ray_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")] | None = None
    """The Ray release moxin runs (KubeRay checks the head against it)."""
    image: Image | None = None
    """The moxin image (head and Job)."""
    plan_yaml: NonEmpty | None = None
    """The Plan document (YAML) the Job applies."""
    ports: RayPorts | None = None
    """Ports of the head."""
    worker_groups: list[RayWorkerGroup] = Field(default_factory=list)
    """One worker group per Kubernetes pool of the plan."""

    @model_validator(mode="after")
    def _enabled_is_complete(self) -> KubeRay:
        missing = [k for k in ("cluster_name", "ray_version", "image", "plan_yaml", "ports") if getattr(self, k) is None]
        if self.enabled and missing:
            raise ValueError(f"kuberay.enabled needs {', '.join(to_camel(k) for k in missing)}")
        return self


# ------------------------------------------------------------------------------------------ chart

class ChartValues(Values):
    """moxin chart values: what values.yaml sets, and what moxin render helm / kuberay write from a plan."""

    global_: dict[str, Any] | None = Field(None, alias="global")
    """Helm's global values (unused)."""
    plan: PlanRef = PlanRef(name="none")
    """The Plan these values came from."""
    namespace: Annotated[str, _pattern(_or_empty(DNS_LABEL), 63)] = ""
    """The namespace the plan was rendered for (router URLs name it); the chart refuses another. Empty: not checked."""
    managed_by: LabelValue = ""
    """app.kubernetes.io/managed-by (empty: the Helm release service)."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Image pull secrets of every pod."""
    service_account: ServiceAccount = ServiceAccount()
    """ServiceAccounts."""
    rbac: Rbac = Rbac()
    """Kubernetes API access."""
    model_storage: ModelStorage = ModelStorage(mount_path=MODEL_ROOT, type="pvc")
    """Where checkpoints live."""
    hub_token: HubToken = HubToken()
    """Hugging Face token."""
    images: dict[Annotated[str, StringConstraints(pattern=r"^[a-z-]+/[a-z0-9-]+$")], Image] = \
        Field(default_factory=dict)
    """Images for engines whose hardware profile names none, keyed "<engine>/<platform>"."""
    engine: Engine = Engine()
    """Settings of every pod that runs engines."""
    pod_disruption_budget: PodDisruptionBudget = PodDisruptionBudget()
    """PodDisruptionBudgets of assignments."""
    assignments: list[Assignment] = Field(default_factory=list)
    """One entry per plan assignment that runs in the cluster (moxin render helm writes them)."""
    external_assignments: list[ExternalAssignment] = Field(default_factory=list)
    """Assignments served by machines that are not Kubernetes nodes (Apple pools)."""
    router: Router = Router()
    """The router."""
    engine_auth: EngineAuth = EngineAuth()
    """The key engines require of callers."""
    network_policy: NetworkPolicy = NetworkPolicy()
    """NetworkPolicies of engines and router."""
    monitoring: Monitoring = Monitoring()
    """Monitoring objects."""
    dashboards: Dashboards = Dashboards()
    """Grafana dashboards."""
    kuberay: KubeRay = KubeRay()
    """KubeRay mode."""


# ----------------------------------------------------------------------------------------- schema

class _ValuesSchema(GenerateJsonSchema):
    """JSON Schema as Helm applies it to values: no titles, no defaults (values.yaml holds them), optional
    never nullable (Helm deletes null keys), a key pattern constrains every key."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        out.pop("title", None)
        return out

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        out = super().dict_schema(schema)
        patterns = out.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            out["propertyNames"] = {"pattern": pattern}
            out["additionalProperties"] = values
        return out


def values_schema() -> dict[str, Any]:
    """The chart's values.schema.json, as a document."""
    schema = ChartValues.model_json_schema(by_alias=True, schema_generator=_ValuesSchema)
    schema.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "title": "moxin chart values", **schema}


def values_schema_text() -> str:
    """values.schema.json as committed: indented JSON, one trailing newline."""
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(values_schema_text())
