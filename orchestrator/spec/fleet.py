"""``Fleet``: pools of nodes of one hardware profile each, with counts, prices and labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import (
    MAX_DEVICES_PER_NODE,
    MAX_NODES_PER_FLEET,
    MAX_NODES_PER_POOL,
    MAX_USD_PER_DEVICE_HOUR,
    Document,
    FieldError,
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
    """Devices per node; defaults to the profile's devicesPerNode, and may not exceed it."""
    usd_per_device_hour: FiniteFloat | None = Field(None, ge=0, le=MAX_USD_PER_DEVICE_HOUR)
    """Price of one device for one hour in USD; unknown prices leave cost out of the plan."""
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    """Labels of the pool's nodes (node selectors on Kubernetes, node labels on Ray): Kubernetes label keys
    and values."""
    emulate: Literal["cpu"] | None = None
    """'cpu': place and account the nodes as the declared hardware, but run the engines on CPU."""
    addresses: list[HostAddress] | None = None
    """Host names or IPs of the nodes, one per node, no port (Apple pools reached from Kubernetes need them);
    each is also the node's name in the plan, so they are distinct."""

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
    def _unique_pool_names_and_addresses(self) -> FleetSpec:
        seen: dict[str, int] = {}
        for i, pool in enumerate(self.pools):
            if pool.name in seen:
                raise FieldError(f"duplicate pool name {pool.name!r} (first at pools[{seen[pool.name]}])",
                                 "pools", i, "name")
            seen[pool.name] = i
        hosts: dict[str, str] = {}  # an address names a node of the plan: one machine, one pool
        for i, pool in enumerate(self.pools):
            for j, address in enumerate(pool.addresses or []):
                if address in hosts:
                    raise FieldError(f"address {address!r} is listed twice (first at {hosts[address]})",
                                     "pools", i, "addresses", j)
                hosts[address] = f"pools[{i}].addresses[{j}]"
        total = sum(p.nodes for p in self.pools)
        if total > MAX_NODES_PER_FLEET:
            raise FieldError(f"{total} nodes in all; a fleet has at most {MAX_NODES_PER_FLEET}", "pools")
        return self


class Fleet(Document[FleetSpec]):
    kind: Literal["Fleet"]
    """'Fleet'."""
    spec: FleetSpec
