"""Bad input to the store layer: a store file with damaged bytes anywhere in it.

The rule: reading a damaged store gives what can still be read, or one line and a non-zero
exit (``RunStoreError``/``ConfigError`` in Python); never a traceback; reading never writes, so
nothing recorded is lost. (Damaged rows in a report: test_reports.py; stores from a newer
greentrack, not SQLite, empty or a dangling link: tests/test_untrusted_files.py.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.store import store_paths
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("rec") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("GREENTRACK_POWERCAP_ROOT", str(run.parent / "none"))
    with greentrack.Tracker(run, interval_s=0.02, counter_interval_s=0.1) as t:
        for _ in range(3):
            with t.step():
                time.sleep(0.05)
    mp.undo()
    return run


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 60_000), junk=st.binary(min_size=1, max_size=64))
def test_damaged_store_bytes_never_traceback(recorded_run: Path, tmp_path_factory: pytest.TempPathFactory,
                                             offset: int, junk: bytes) -> None:
    copy = tmp_path_factory.mktemp("dmg") / "run"
    shutil.copytree(recorded_run, copy)
    path = store_paths(copy)[0]
    data = bytearray(path.read_bytes())
    offset %= len(data)
    data[offset:offset + len(junk)] = junk
    path.write_bytes(bytes(data))
    try:
        s = greentrack.summarize(copy)
        assert s["status"] in ("completed", "incomplete", "failed", "stopped", "running")
    except (ConfigError, RunStoreError):
        pass
    code, _, err = run_cli(["summary", str(copy)])
    assert "Traceback" not in err and code in (0, 1, 2)
    # the original run is untouched: reading never writes
    assert greentrack.summarize(recorded_run)["steps"] == 3
