"""The package is typed (py.typed ships): mypy --strict must stay clean on greentrack/ and
integrations/, as STYLE asks."""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import time
import tomllib
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
    (14 CPU-s with the parts we never name left out), and greentrack/ then costs little more."""
    pytest.importorskip("mypy")
    rc, out = _mypy()
    assert rc == 0, out[-3000:]
    assert "Success: no issues found in" in out, out[-3000:]
    checked = int(out.split("no issues found in ")[1].split()[0])
    assert checked > 100, out  # both trees, not one


def _skipped_modules() -> list[str]:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    return [m for o in conf if o.get("follow_imports") == "skip" for m in o["module"]]


def _imported_modules(tree: Path) -> set[str]:
    names = set()
    for path in tree.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("tree", ["greentrack", "integrations"])
def test_mypy_follows_every_module_our_code_names(tree: str) -> None:
    """mypy leaves out framework parts we never name (pyproject.toml); a module that names one
    would be checked against Any in silence: it must be followed again."""
    skipped = _skipped_modules()
    assert "transformers.models.*" in skipped  # the parse found the override
    named = sorted(m for m in _imported_modules(REPO / tree)
                   if any(fnmatch.fnmatchcase(m, p) or m == p.removesuffix(".*") for p in skipped))
    assert not named, f"{tree} imports {named}: take them out of the follow_imports=skip override"
