"""The `moxin` command as the integration tests run it: a subprocess of this interpreter, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

MOXIN = [sys.executable, "-m", "orchestrator"]


def moxin(env: dict[str, str], *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*MOXIN, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"moxin {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def status(env: dict[str, str]) -> dict:
    return json.loads(moxin(env, "status", "-o", "json").stdout)
