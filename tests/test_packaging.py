"""What a normal (non-editable) install ships: every package, its data, and nothing stray."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_every_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "greentrack").rglob("__init__.py")}
    assert on_disk - {"greentrack.integrations"} <= listed, on_disk - listed
    assert config["package-dir"]["greentrack.integrations"] == "integrations"


def test_wheel_contents(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "greentrack/integrations/lightning.py" in names
    assert "greentrack/exporters/prometheus.py" in names
    assert "greentrack/py.typed" in names
    assert any(n.startswith("greentrack/data/") and n.endswith(".csv") for n in names)
    assert any(n.startswith("greentrack/schemas/") for n in names)
    assert not [n for n in names if n.startswith(("integrations/", "tests/", "bench/"))]
