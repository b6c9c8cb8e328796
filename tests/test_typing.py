"""The package is typed (py.typed ships): mypy --strict must stay clean on greentrack/ and
integrations/, as STYLE asks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import MYPY, MYPY_RESULT, REPO

#: mypy --strict over the package (~45 s): out of `make test-fast`
pytestmark = pytest.mark.slow


def _mypy() -> tuple[int, str]:
    """mypy's exit status and output: from the run tests/conftest.py started with the session
    (at low priority, beside the other tests), else run here."""
    started = os.environ.get(MYPY_RESULT)
    if started:
        rc, deadline = Path(started) / "rc", time.monotonic() + 900
        while not rc.exists():
            assert time.monotonic() < deadline, "the session's mypy run did not finish in 15 min"
            time.sleep(0.5)
        return int(rc.read_text()), (Path(started) / "log").read_text()
    out = subprocess.run(MYPY, cwd=REPO, capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


def test_mypy_strict_is_clean() -> None:
    """One mypy process for both trees: integrations/ follows torch, Lightning and transformers
    (42 CPU-s alone), and greentrack/ then costs nothing more (17 CPU-s in a second process)."""
    pytest.importorskip("mypy")
    rc, out = _mypy()
    assert rc == 0, out[-3000:]
    assert "Success: no issues found in" in out, out[-3000:]
    checked = int(out.split("no issues found in ")[1].split()[0])
    assert checked > 100, out  # both trees, not one
