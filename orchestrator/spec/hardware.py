"""``HardwareProfile``: one accelerator (or CPU host) as the estimator, engines and renderers see it.

Every published number names its source (``spec.sources[].fields``); a number nobody published is
left out (null) and whatever needs it says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import (
    MAX_BANDWIDTH_GBPS,
    MAX_DEVICES_PER_NODE,
    MAX_MEMORY_GB,
    MAX_TFLOPS,
    DnsSubdomain,
    Document,
    EnvName,
    FiniteFloat,
    ImageRef,
    LabelKey,
    LabelValue,
    QualifiedName,
    Source,
    Strict,
    require_sources,
)
from orchestrator.spec.engine import EngineName, KvDtype

NumericFormat = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]


class PeakTflops(Strict):
    """Dense peak throughput per device (no sparsity); integer formats in TOPS."""

    fp32: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """FP32 TFLOPS."""
    bf16: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """BF16 TFLOPS (dense, tensor cores / matrix units)."""
    fp16: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """FP16 TFLOPS."""
    fp8: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """FP8 TFLOPS; null when the device has no FP8 arithmetic."""
    int8: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """INT8 TOPS."""
    int4: FiniteFloat | None = Field(None, gt=0, le=MAX_TFLOPS)
    """INT4 TOPS."""


class Interconnect(Strict):
    kind: str = Field(min_length=1)
    """Device-to-device link within a node, e.g. 'nvlink4', 'pcie4', 'hccs', 'thunderbolt5'."""
    bandwidth_gbps: FiniteFloat | None = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS, alias="bandwidthGBps")
    """Per-device bandwidth to its peers in GB/s (decimal, both directions as published)."""


class UsableMemory(Strict):
    rule: Literal["device", "unifiedWorkingSet", "host"] = "device"
    """'device': dedicated device memory; 'unifiedWorkingSet': Apple unified memory, of which the GPU
    may wire a fraction; 'host': a CPU host whose engine takes an explicit KV budget."""
    fraction: FiniteFloat = Field(1.0, gt=0, le=1)
    """Fraction of memoryGB an engine may use before its own utilization setting (Apple: ~0.75)."""


class VllmPlugin(Strict):
    package: str = Field(min_length=1)
    """The Python distribution of the platform plugin, e.g. 'vllm-mlu'."""
    entry_point: str = Field(min_length=1)
    """Its name in the 'vllm.platform_plugins' entry-point group (what VLLM_PLUGINS names)."""
    target: str | None = None
    """The entry point's target, e.g. 'vllm_mlu:register_mlu_platform'."""
    general_plugins: list[str] = Field(default_factory=list)
    """Names of the plugin's 'vllm.general_plugins' entry points that serving needs (VLLM_PLUGINS lists
    them next to the platform plugin), e.g. Moore Threads' 'musa_custom_ops'."""
    env: dict[EnvName, str] = Field(default_factory=dict)
    """Extra environment variables the plugin documents for serving (names are C identifiers)."""


class EngineSupport(Strict):
    engine: EngineName
    """Which engine serves this hardware."""
    platform: LabelValue = Field(min_length=1)
    """vLLM platform ('cuda', 'cpu', 'mlu', 'musa', 'ascend', ...) or 'metal' / 'mlx-cpu' for Apple engines."""
    plugin: VllmPlugin | None = None
    """The out-of-tree vLLM platform plugin; absent for platforms built into vLLM."""
    engine_version: str | None = None
    """The engine release this platform runs (plugins pin older vLLM releases)."""
    quantization_methods: list[str] = Field(default_factory=list)
    """Quantization methods the engine accepts here (vLLM '--quantization' names, or 'mlx')."""
    method_aliases: dict[str, str] = Field(default_factory=dict)
    """The engine's own name for a checkpoint's quantization method, where it differs (a plugin's
    'awq_mlu' for 'awq'); the value must be one of quantizationMethods."""
    kv_cache_dtypes: list[KvDtype] = Field(default_factory=lambda: ["bf16"])
    """KV-cache data types the engine supports here."""
    image: ImageRef | None = None
    """Default container image for this engine on this hardware."""

    @model_validator(mode="after")
    def _aliases_name_declared_methods(self) -> EngineSupport:
        for checkpoint_method, own in self.method_aliases.items():
            if own not in self.quantization_methods:
                raise ValueError(f"methodAliases maps {checkpoint_method!r} to {own!r}, which is not in "
                                 f"quantizationMethods {self.quantization_methods}")
        return self


RAY_BUILTIN_RESOURCES = {"CPU": "num-cpus", "GPU": "num-gpus"}
"""Resources ``ray start`` takes through their own flags (--num-cpus, --num-gpus) and refuses in --resources."""
NODE_RESOURCE_PREFIX = "moxin-node-"
"""A node of a moxin fleet carries ``moxin-node-<name>: 1`` so that replicas can be pinned to the node the
plan chose (placement-group bundles ask for a sliver of it)."""


class RayResources(Strict):
    resource: LabelValue = Field(min_length=1)
    """Ray resource name one device counts as ('GPU', 'NPU', 'MLU', 'mlx', 'CPU')."""
    accelerator_type: LabelValue = Field(min_length=1)
    """Value of Ray's 'accelerator_type:X' resource for this profile."""

    @property
    def accelerator_resource(self) -> str:
        return f"accelerator_type:{self.accelerator_type}"

    def node_resources(self, devices: int, node: str | None = None) -> dict[str, float]:
        """Every resource a Ray node with ``devices`` of these devices declares (GPU and CPU included)."""
        out: dict[str, float] = {self.resource: float(devices), self.accelerator_resource: 1.0}
        if node:
            out[NODE_RESOURCE_PREFIX + node] = 1.0
        return out

    def start_flags(self, devices: int, node: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """What ``ray start`` declares for such a node: the built-in resources by flag name (``{"num-gpus": 8.0}``
        for --num-gpus) and the custom ones for --resources, each sorted by name. The Helm values, `moxin
        node-resources` and `moxin up`'s local nodes are formatted from these two."""
        resources = self.node_resources(devices, node)
        flags = {RAY_BUILTIN_RESOURCES[k]: v for k, v in sorted(resources.items()) if k in RAY_BUILTIN_RESOURCES}
        custom = {k: v for k, v in sorted(resources.items()) if k not in RAY_BUILTIN_RESOURCES}
        return flags, custom

    def bundle(self, devices: int, node: str | None = None) -> dict[str, float]:
        """One placement-group bundle: ``devices`` devices on one node (of the plan's choice, if given)."""
        out: dict[str, float] = {self.resource: float(devices), self.accelerator_resource: 0.001}
        if node:
            out[NODE_RESOURCE_PREFIX + node] = 0.001
        return out


class KubernetesResources(Strict):
    resource: QualifiedName | None = None
    """Extended resource of the vendor's device plugin, e.g. 'nvidia.com/gpu'; null for hosts that are not
    Kubernetes nodes (Apple) or need none (CPU)."""
    visibility_env: EnvName | None = None
    """Variable that selects the devices a process sees, e.g. 'CUDA_VISIBLE_DEVICES'."""
    runtime_class_name: DnsSubdomain | None = None
    """RuntimeClass the vendor's container runtime needs, if any (a DNS-1123 subdomain)."""
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Node labels that identify nodes with this hardware (Kubernetes label keys and values)."""


class HardwareProfileSpec(Strict):
    vendor: str = Field(min_length=1)
    """Manufacturer, e.g. 'nvidia', 'cambricon'."""
    product: str = Field(min_length=1)
    """Product name as the vendor writes it."""
    family: str = Field(min_length=1)
    """Hardware family used to key calibration data, e.g. 'nvidia-hopper', 'apple-m2'."""
    device_type: Literal["gpu", "npu", "mlu", "xpu", "dcu", "apple-soc", "cpu"]
    """What one device is."""
    memory_gb: FiniteFloat | None = Field(None, gt=0, le=MAX_MEMORY_GB, alias="memoryGB")
    """Memory per device in GB (decimal). Apple: unified memory of the configuration."""
    memory_bandwidth_gbps: FiniteFloat | None = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS, alias="memoryBandwidthGBps")
    """Peak memory bandwidth per device in GB/s (decimal)."""
    peak_tflops: PeakTflops = Field(default_factory=PeakTflops)
    """Dense peak compute per numeric format."""
    native_formats: list[NumericFormat] = Field(min_length=1)
    """Numeric formats the matrix units compute in natively."""
    devices_per_node: int = Field(gt=0, le=MAX_DEVICES_PER_NODE)
    """Devices in one standard node (server or machine)."""
    interconnect: Interconnect
    """How devices in one node talk to each other."""
    usable_memory: UsableMemory = Field(default_factory=UsableMemory)
    """How much of memoryGB an engine may use."""
    engines: list[EngineSupport] = Field(min_length=1)
    """Engines that serve this hardware, in order of preference."""
    ray: RayResources
    """How one device appears to Ray."""
    kubernetes: KubernetesResources = Field(default_factory=KubernetesResources)
    """How one device appears to Kubernetes."""
    sources: list[Source] = Field(min_length=1)
    """Where each number comes from."""
    notes: str | None = None
    """Caveats a reader should know."""

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> HardwareProfileSpec:
        require_sources(_numbers(self), self.sources)
        return self

    def engine(self, name: str) -> EngineSupport | None:
        return next((e for e in self.engines if e.engine == name), None)


def _numbers(spec: HardwareProfileSpec) -> list[str]:
    paths = []
    if spec.memory_gb is not None:
        paths.append("memoryGB")
    if spec.memory_bandwidth_gbps is not None:
        paths.append("memoryBandwidthGBps")
    for fmt, value in spec.peak_tflops.model_dump().items():
        if value is not None:
            paths.append(f"peakTflops.{fmt}")
    if spec.interconnect.bandwidth_gbps is not None:
        paths.append("interconnect.bandwidthGBps")
    if spec.usable_memory.fraction != 1.0:
        paths.append("usableMemory.fraction")
    return paths


class HardwareProfile(Document[HardwareProfileSpec]):
    kind: Literal["HardwareProfile"]
    """'HardwareProfile'."""
    spec: HardwareProfileSpec
