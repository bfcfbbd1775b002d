"""manifests/examples/cambricon: declared support on an MLU590 overlay, planned before any measurement."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.planner import plan_catalog
from orchestrator.spec import load_catalog

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "manifests" / "examples" / "cambricon"
FIXTURE = ROOT / "tests" / "data" / "measured" / "glm-46-my-mlu590.fixture.yaml"  # a test fixture, not a measurement
MEASURE = ("`moxin bench --url http://<replica or router>:PORT --model glm-46-mlu --concurrency 1,2,4,8 --record "
           "-o bench.yaml` and plan again with `moxin plan -f ... -f bench.yaml`")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_example_validates_and_its_profile_is_the_builtin_plus_a_declaration() -> None:
    result = run("validate", str(EXAMPLE))
    assert result.exit_code == 0 and "1 Fleet, 1 HardwareProfile, 1 ModelDeployment" in result.output
    catalog = load_catalog([EXAMPLE])
    mine, base = catalog.profile("my-mlu590").spec, catalog.profile("cambricon-mlu590").spec
    assert mine.extends == "cambricon-mlu590" and mine.memory_gb == base.memory_gb == 80
    (declared,) = mine.engines[0].declared_support
    assert declared.context_tokens == 200000 and declared.source.startswith("declared by the operator")
    assert declared.formats == catalog.model("glm-4.6").spec.variant("fp8-int4").formats


def test_it_plans_to_unplaced_with_the_command_that_measures_it() -> None:
    doc = plan_catalog(load_catalog([EXAMPLE]), None)
    assert doc.spec.assignments == []
    (unplaced,) = doc.spec.unplaced
    assert unplaced.deployment == "glm-46-mlu" and unplaced.served_requests_per_second == 0.0
    assert unplaced.reasons[0].startswith("no speed can be predicted where a variant fits")
    (rejection,) = unplaced.reasons[1:]
    assert rejection.startswith("fp8-int4 on mlu590: tp=4 pp=1: speed unknown: decode speed unknown: my-mlu590 has "
                                "no published memory bandwidth")
    assert rejection.endswith(MEASURE)
    assert "`moxin engine-args -f ... -m glm-4.6 -v fp8-int4 -H my-mlu590 --tp 4 --pp 1 --context 200000`" in rejection


def _stable(text: str) -> list[str]:  # the solver's time varies
    return [re.sub(r"\d+\.\d+ s over", "_ s over", line.rstrip()) for line in text.splitlines()]


def test_the_readme_shows_the_plan_moxin_prints() -> None:
    printed = run("plan", "-f", str(EXAMPLE)).output
    shown = _stable((EXAMPLE / "README.md").read_text())
    for line in _stable(printed):
        assert line in shown, line


def test_the_readme_shows_the_plan_and_matrix_with_the_fixture_benchmark() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    after = readme[readme.index("## After measurement (with a test fixture, not a real measurement)"):]
    assert "hand-written figures that no engine" in after and f"`{FIXTURE.relative_to(ROOT)}`" in after
    shown = _stable(after)
    printed = run("plan", "-f", str(EXAMPLE), "-f", str(FIXTURE)).output
    matrix = run("matrix", "-m", "glm-4.6", "-f", str(EXAMPLE), "-f", str(FIXTURE), "-H", "my-mlu590", "--context",
                 "200000").output
    for line in _stable(printed) + _stable(matrix):
        assert line in shown, line


def test_the_matrix_shows_the_declared_support() -> None:
    table = run("matrix", "-m", "glm-4.6", "-f", str(EXAMPLE)).output
    row = next(line for line in table.splitlines() if line.startswith("fp8-int4") and " my-mlu590 " in line)
    assert "declared, fits" in row
    assert "- my-mlu590: fp8-int4 is supported as declared by my-mlu590, not by moxin's rules (declared by the " \
           "operator" in table
    builtin = next(line for line in table.splitlines() if line.startswith("fp8-int4") and " cambricon-mlu590 " in line)
    assert "unknown, fits" in builtin
    cells = json.loads(run("matrix", "-m", "glm-4.6", "-f", str(EXAMPLE), "-H", "my-mlu590", "-o", "json").output)
    declared = {c["variant"]: c["declaredBy"] for c in cells["cells"]}
    assert declared == {"bf16": None, "fp8": None, "fp8-int4": "my-mlu590", "w4a16": None, "mlx-3bit": None,
                        "mlx-4bit": None}
