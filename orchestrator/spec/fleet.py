"""``Fleet``: pools of nodes of one hardware profile each, with counts, prices and labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import (
    MAX_DEVICES_PER_NODE,
    MAX_NODES_PER_POOL,
    MAX_USD_PER_DEVICE_HOUR,
    Document,
    FiniteFloat,
    HostAddress,
    LabelKey,
    LabelValue,
    Name,
    Strict,
)


class Pool(Strict):
    name: Name
    """Pool name, unique in the fleet."""
    hardware: Name
    """The HardwareProfile its nodes are."""
    nodes: int = Field(ge=0, le=MAX_NODES_PER_POOL)
    """Number of nodes in the pool."""
    devices_per_node: int | None = Field(None, gt=0, le=MAX_DEVICES_PER_NODE)
    """Devices per node; defaults to the profile's devicesPerNode."""
    usd_per_device_hour: FiniteFloat | None = Field(None, ge=0, le=MAX_USD_PER_DEVICE_HOUR)
    """Price of one device for one hour in USD; unknown prices leave cost out of the plan."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Labels of the pool's nodes (node selectors on Kubernetes, node labels on Ray): Kubernetes label keys
    and values."""
    emulate: Literal["cpu"] | None = None
    """'cpu': place and account the nodes as the declared hardware, but run the engines on CPU."""
    addresses: list[HostAddress] | None = None
    """Host names or IPs of the nodes, one per node, no port (Apple pools reached from Kubernetes need them)."""

    @model_validator(mode="after")
    def _addresses_match_nodes(self) -> Pool:
        if self.addresses is not None and len(self.addresses) != self.nodes:
            raise ValueError(f"addresses lists {len(self.addresses)} hosts but nodes is {self.nodes}; "
                             "give one address per node")
        return self


class FleetSpec(Strict):
    pools: list[Pool] = Field(min_length=1)
    """The pools of the fleet."""

    @model_validator(mode="after")
    def _unique_pool_names(self) -> FleetSpec:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate pool names: {', '.join(dupes)}")
        return self


class Fleet(Document[FleetSpec]):
    kind: Literal["Fleet"]
    """'Fleet'."""
    spec: FleetSpec
