"""`moxin estimate`, `matrix` and `plan` with `-f bench.yaml`: the measured figures, and which Benchmark gave them.
The Benchmark used is a hand-written test fixture (tests/data/measured), not a measurement."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

ROOT = Path(__file__).resolve().parents[3]
CAMBRICON = str(ROOT / "manifests" / "examples" / "cambricon")
FIXTURE = str(ROOT / "tests" / "data" / "measured" / "glm-46-my-mlu590.fixture.yaml")
NAME = "glm-46-fp8-int4-my-mlu590-fixture"


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_estimate_shows_the_measured_figures_at_its_batch() -> None:
    args = ["estimate", "-m", "glm-4.6", "-v", "fp8-int4", "-H", "my-mlu590", "--tp", "4", "--pp", "1", "--context",
            "6600", "--batch", "2", "-f", CAMBRICON]
    before = run(*args)
    assert "speed from           unknown" in before and "measured" not in before.split("- ")[0]
    table = run(*args, "-f", FIXTURE)
    assert f"speed from           measured (Benchmark {NAME})" in table
    assert f"measured             Benchmark {NAME} at concurrency 2 (measured)" in table
    assert "measured TPOT        p50 45.0 ms, p95 52.0 ms" in table
    assert f"- Benchmark {NAME} was measured at a context of 200000 tokens, the replica's is 6600" in table
    assert f"- Benchmark {NAME} calibrates nothing: my-mlu590 has no datasheet memory bandwidth" in table
    data = json.loads(run(*args, "-f", FIXTURE, "-o", "json"))
    assert data["speedSource"] == "measured" and data["measured"]["benchmark"] == NAME
    assert data["measured"]["tpotSeconds"] == {"p50": 0.045, "p95": 0.052}


def test_matrix_marks_the_measured_cell_and_names_its_benchmark() -> None:
    args = ["matrix", "-m", "glm-4.6", "-H", "my-mlu590", "-H", "nvidia-h200", "--context", "200000", "-f", CAMBRICON]
    table = run(*args, "-f", FIXTURE)
    row = next(line for line in table.splitlines() if line.startswith("fp8-int4") and " my-mlu590 " in line)
    # DECODE TOK/S 1 / 40 ms (the median TPOT at one sequence), SPEED measured
    assert row.split()[7:9] == ["25", "measured"]
    h200 = next(line for line in table.splitlines() if line.startswith("fp8-int4") and " nvidia-h200 " in line)
    assert " roofline " in h200
    assert f"- my-mlu590: fp8-int4 decode speed measured by Benchmark {NAME} (median TPOT at one sequence)" in table
    cells = {(c["variant"], c["hardware"]): c for c in json.loads(run(*args, "-f", FIXTURE, "-o", "json"))["cells"]}
    assert cells[("fp8-int4", "my-mlu590")]["measuredBy"] == NAME
    assert cells[("fp8-int4", "my-mlu590")]["speedSource"] == "measured"
    assert cells[("fp8-int4", "nvidia-h200")]["speedSource"] == "roofline"
    assert cells[("bf16", "my-mlu590")]["speedSource"] is None
    unmeasured = run(*args)
    row = next(line for line in unmeasured.splitlines() if line.startswith("fp8-int4") and " my-mlu590 " in line)
    assert "measured" not in row


def test_plan_with_the_benchmark_file_places_the_deployment_and_says_what_was_measured() -> None:
    printed = run("plan", "-f", CAMBRICON, "-f", FIXTURE)
    assert "glm-46-mlu  fp8-int4  mlu590" in printed and "UNPLACED" not in printed
    assert f"capacity measured by Benchmark {NAME}" in printed
