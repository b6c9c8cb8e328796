"""What a normal (non-editable) install ships: every package, its data, and nothing stray."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO


def test_every_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "greentrack").rglob("__init__.py")}
    assert on_disk - {"greentrack.integrations"} <= listed, on_disk - listed
    assert config["package-dir"]["greentrack.integrations"] == "integrations"


@pytest.mark.slow  # a wheel built and installed: out of `make test-fast`
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


def test_dir_shows_the_public_api() -> None:
    """``dir(greentrack)`` (and completion) lists the API, not typing helpers or the lazy table;
    every name listed resolves."""
    import greentrack
    names = dir(greentrack)
    assert {"Tracker", "Config", "track", "summarize", "ConfigError"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "_LAZY"} & set(names)
    assert all(getattr(greentrack, n) is not None for n in names)


def test_requires_python_is_what_the_code_needs() -> None:
    """The code imports ``tomllib`` (3.11): the declared minimum must not promise 3.10."""
    import tomllib
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"].replace(" ", "") == ">=3.11"
