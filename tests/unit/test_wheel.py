"""The built-in catalog travels inside the wheel: a wheel unpacked away from the checkout still finds it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_and_uses_the_builtin_catalog(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("moxin-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    profiles = [n for n in names if n.startswith("orchestrator/_builtin/hardware_profiles/")]
    models = [n for n in names if n.startswith("orchestrator/_builtin/models/")]
    assert len(profiles) == len(list((ROOT / "hardware_profiles").glob("*.yaml")))
    assert len(models) == len(list((ROOT / "manifests" / "models").glob("*.yaml")))

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import orchestrator.spec.catalog as c; "
            "from orchestrator.spec import load_catalog; cat = load_catalog(); "
            "import json; print(json.dumps([str(c.builtin_dirs()[0]), len(cat.profiles), len(cat.models)]))")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, check=True)
    where, n_profiles, n_models = json.loads(out.stdout)
    assert where.startswith(str(site)), "the catalog must come from inside the installed package"
    assert n_profiles == len(profiles) and n_models == len(models)
