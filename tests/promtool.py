"""PromQL evaluated by Prometheus's own rule-test runner (``promtool test rules``) over made-up series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml


def promql_cases(tmp_path: Path, input_series: list[dict[str, str]],
                 cases: list[tuple[str, list[tuple[str, float]]]]) -> None:
    """Each (expr, [(labels, value), ...]) evaluated at 10m over ``input_series`` scraped every minute must give
    exactly those samples (``labels`` as promtool writes them, "{}" for none); skips without promtool."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: prometheus)")
    tests = [{"expr": expr, "eval_time": "10m",
              "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}
             for expr, samples in cases]
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": input_series, "promql_expr_test": tests}]}))
    done = subprocess.run(["promtool", "test", "rules", str(path)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
