"""The import layers hold (pyproject.toml, [tool.importlinter]): a pytest run alone catches an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator

pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(orchestrator.__file__).resolve().parent


def lint_imports(package_parent: Path, workdir: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contracts on the orchestrator package under package_parent. It runs
    in workdir, which gets a copy of pyproject.toml: lint-imports reads its config from, and puts first on
    sys.path, the directory it runs in."""
    shutil.copy(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    script = Path(sys.executable).with_name("lint-imports")
    command = str(script) if script.exists() else shutil.which("lint-imports") or "lint-imports"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([command, "--no-cache"], env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_are_kept(tmp_path: Path) -> None:
    done = lint_imports(PACKAGE.parent, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_them(tmp_path: Path) -> None:
    """The check bites: spec importing the planner (two layers up) is reported."""
    shutil.copytree(PACKAGE, tmp_path / "orchestrator", ignore=shutil.ignore_patterns("__pycache__", "_builtin"))
    formats = tmp_path / "orchestrator" / "spec" / "formats.py"
    formats.write_text(formats.read_text() + "\nimport orchestrator.planner  # noqa: E402,F401\n")
    done = lint_imports(tmp_path, tmp_path)
    assert done.returncode != 0
    assert "orchestrator.spec.formats -> orchestrator.planner" in done.stdout, done.stdout
