"""place_beside: new replicas packed around running ones, which never move."""

from __future__ import annotations

from orchestrator.planner.place import Placement, Stage, place_beside
from orchestrator.spec.fleet import Pool

POOL = Pool(name="p", hardware="nvidia-h100-sxm", nodes=2, devices_per_node=4)


def test_new_replicas_take_only_the_free_aligned_blocks() -> None:
    kept = {("old",): [Placement(0, (Stage("p-0", (0,)),)), Placement(1, (Stage("p-1", (2,)),))]}
    # a tp=2 replica needs an aligned pair: p-0 has [2,3] free, p-1 has [0,1]; a third pair does not exist
    got = place_beside(POOL, 4, kept, [(("new",), 2, 1, 2)])
    assert got is not None
    assert sorted(s.devices for p in got[("new",)] for s in p.stages) == [(0, 1), (2, 3)]
    assert place_beside(POOL, 4, kept, [(("new",), 2, 1, 3)]) is None


def test_a_pool_whose_running_replicas_would_have_to_move_is_full() -> None:
    # one tp=1 replica on device 1 of each node: two free tp=2 blocks exist ([2,3] on each), not three,
    # although six devices are free; a fresh packing would fit three, but the running replicas stay put
    kept = {("old",): [Placement(0, (Stage("p-0", (1,)),)), Placement(1, (Stage("p-1", (1,)),))]}
    assert place_beside(POOL, 4, kept, [(("new",), 2, 1, 2)]) is not None
    assert place_beside(POOL, 4, kept, [(("new",), 2, 1, 3)]) is None
