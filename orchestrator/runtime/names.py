"""The names moxin's Ray objects go by: the namespace, the controller actor, the prefixes of replica actors,
placement groups and router actors, the GCS key-value keys the controller keeps its state under, and the
resource that pins an actor to the head node. Constants only (no Ray import): the controller, the router
actor and the CLI's client all read them from here.
"""

from __future__ import annotations

NAMESPACE = "moxin"
CONTROLLER = "moxin-controller"
REPLICA_PREFIX = "moxin-replica:"
PG_PREFIX = "moxin-pg:"
ROUTER_PREFIX = "moxin-router-"
KV_PLAN = b"desired-plan"
KV_OPTIONS = b"options"
KV_COUNTERS = b"replica-counters"
"""Per replica id, the restarts and replacements of its actors that no longer run (they survive the controller)."""
KV_ROLLOUTS = b"rollouts"
"""The rollouts (``runtime.rollouts.Run``) by name: spec, new side, machine state, commands."""
HEAD = {"node:__internal_head__": 0.001}
KV_ENGINE_KEY = b"engine-key"
