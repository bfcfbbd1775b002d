"""Every file in tests/data/bad is refused with the file, line, field path and message its header expects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import load_catalog

BAD = Path(__file__).resolve().parents[2] / "data" / "bad"
EXPECT = re.compile(rb"^# expect: (\*|\d+): (.+)$", re.M)


def _expectations(path: Path) -> list[tuple[str, str]]:
    found = [(m.group(1).decode(), m.group(2).decode()) for m in EXPECT.finditer(path.read_bytes())]
    assert found, f"{path.name} has no '# expect:' header"
    return found


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_document_is_refused_at_its_line(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_catalog([path])
    rendered = [str(p) for p in info.value.problems]
    for line, fragment in _expectations(path):
        prefix = f"{path}:" if line == "*" else f"{path}:{line}: "
        assert any(r.startswith(prefix) and fragment in r for r in rendered), (
            f"expected {prefix}...{fragment!r} among:\n" + "\n".join(rendered))


def test_corpus_covers_every_kind_and_the_hostile_cases() -> None:
    names = {p.stem for p in BAD.glob("*.yaml")}
    for case in ("python-tag", "alias-bomb", "duplicate-key", "not-utf8", "bad-name", "unknown-kind",
                 "hardware-kubernetes-strings", "fleet-limits", "deployment-not-finite", "deployment-huge-traffic",
                 "model-limits", "rollout-limits", "plan-wrong-types", "fleet-duplicate-pool",
                 "fleet-devices-per-node", "fleet-duplicate-address", "fleet-too-many-nodes", "model-duplicate-variant"):
        assert case in names
    kinds = {m.group(1) for p in BAD.glob("*.yaml") for m in re.finditer(rb"^kind: (\w+)", p.read_bytes(), re.M)}
    assert {b"HardwareProfile", b"Model", b"Fleet", b"ModelDeployment", b"Rollout", b"Plan"} <= kinds
