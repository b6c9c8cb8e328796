"""The package is typed (py.typed ships): mypy --strict must stay clean on greentrack/ and
integrations/, as STYLE asks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

#: mypy --strict over the package (half a minute each): out of `make test-fast`
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("target", [[], ["--strict", "integrations/"]])
def test_mypy_strict_is_clean(target: list[str]) -> None:
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", *target], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
