"""Whether the new side fits beside the old, asked of the planner on a small fleet (tests/data/rollout): one
4-GPU node where llama-3.1-8b runs in bf16 on one GPU per replica, and one spare GPU in another pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InfeasibleError
from orchestrator.planner import plan_catalog
from orchestrator.rollout.capacity import check
from orchestrator.rollout.machine import config_for
from orchestrator.spec import load_catalog
from orchestrator.spec.rollout import RolloutSpec

FLEET = Path(__file__).resolve().parents[2] / "data" / "rollout" / "fleet.yaml"


def _setup(tmp_path: Path, replicas_min: int):
    text = FLEET.read_text().replace("replicas: {min: 2, max: 4}", f"replicas: {{min: {replicas_min}, max: 4}}")
    (tmp_path / "fleet.yaml").write_text(text)
    catalog = load_catalog([tmp_path])
    return plan_catalog(catalog), catalog.fleets["small"], catalog


def _rollout(to: dict, frm: dict | None = None) -> RolloutSpec:
    return RolloutSpec.model_validate({"deployment": "chat", "from": frm or {}, "to": to,
                                       "steps": [{"setWeight": 50}]})


def test_two_replicas_on_four_gpus_leave_room_for_two_new_ones(tmp_path: Path) -> None:
    plan, fleet, catalog = _setup(tmp_path, 2)
    [old] = plan.spec.assignments
    assert (old.variant, old.pool, old.replicas, old.devices_per_replica) == ("bf16", "four", 2, 1)
    got = check(plan, fleet, catalog, _rollout({"variant": "fp8"}))
    assert (got.variant, got.pool, got.tensor_parallel, got.canary_replicas) == ("fp8", "four", 1, 2)
    assert got.mode == "surge" and got.fits_beside[0] == 2
    assert config_for(_rollout({"variant": "fp8"}), got.stable_replicas, got.canary_replicas, 600,
                      got.fits_beside).mode == "surge"


def test_a_full_node_is_replaced_replica_by_replica(tmp_path: Path) -> None:
    plan, fleet, catalog = _setup(tmp_path, 4)
    got = check(plan, fleet, catalog, _rollout({"variant": "fp8"}, {"variant": "bf16"}))
    # four GPUs, four old replicas of one GPU each: every new replica needs one old one gone
    assert got.mode == "replace" and got.canary_replicas == 4 and got.stable_replicas == 4
    assert got.fits_beside == (0, 1, 2, 3, 4)
    assert [r for _, r in got.removal_order] == [3, 2, 1, 0]
    assert "replacing replica by replica, the old side shrinking by 4 in all" in got.reasons[0]
    config = config_for(_rollout({"variant": "fp8"}), 4, 4, 600, got.fits_beside)
    assert config.mode == "replace"


def test_another_pool_too_small_for_the_new_side_is_no_rollout(tmp_path: Path) -> None:
    plan, fleet, catalog = _setup(tmp_path, 2)
    got = check(plan, fleet, catalog, _rollout({"variant": "fp8", "pool": "spare"}))
    assert got.mode == "none" and got.fits_beside == (1, 1, 1)
    assert "removing it frees nothing on spare" in got.reasons[0]


def test_a_from_that_matches_nothing_running_is_refused(tmp_path: Path) -> None:
    plan, fleet, catalog = _setup(tmp_path, 2)
    with pytest.raises(InfeasibleError, match="runs no replica of 'chat' matching 'from'"):
        check(plan, fleet, catalog, _rollout({"variant": "bf16"}, {"variant": "fp8"}))
