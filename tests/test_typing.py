"""The package is typed (py.typed ships): mypy --strict must stay clean on greentrack/ and
integrations/, as STYLE asks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

#: mypy --strict over the package (~45 s): out of `make test-fast`
pytestmark = pytest.mark.slow


def test_mypy_strict_is_clean() -> None:
    """One mypy process for both trees: integrations/ follows torch, Lightning and transformers
    (42 CPU-s alone), and greentrack/ then costs nothing more (17 CPU-s in a second process)."""
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "greentrack", "integrations/"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "Success: no issues found in" in out.stdout, out.stdout[-3000:]
    checked = int(out.stdout.split("no issues found in ")[1].split()[0])
    assert checked > 100, out.stdout  # both trees, not one
