"""Property-based bad input: every invalid setting, argument or store gets one clear line and a
non-zero exit, never a traceback; nothing already recorded is lost."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import greentrack
from greentrack.cli import main
from greentrack.common.config import RANGES, Config
from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.store import store_paths

values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.integers(-2, 9), max_size=3))
FIELDS = ["interval_s", "counter_interval_s", "flush_interval_s", "resolution_s", "mode", "gpus",
          "cpu_tdp_w", "dram_w_per_gb", "rank", "prometheus_port", "push_interval_s", "pue",
          "carbon_intensity_g_per_kwh", "electricity_price"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=3))
def test_config_accepts_or_explains_in_one_line(changes: dict) -> None:
    try:
        cfg = Config(**changes)
    except ConfigError as e:
        text = str(e)
        assert "\n" not in text and text.startswith(f"{e.setting}=") and "is invalid:" in text
        return
    for name, (low, high) in RANGES.items():  # every numeric setting accepted is in its range
        value = getattr(cfg, name)
        assert value is None or (math.isfinite(value) and low <= value <= high)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([f"GREENTRACK_{f.upper()}" for f in FIELDS]),
                       st.text(max_size=10), max_size=3))
def test_environment_settings_accept_or_explain(env: dict) -> None:
    try:
        Config.from_env(env)
    except ConfigError as e:
        assert "\n" not in str(e)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exits
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


OPTS = ["--interval", "--counter-interval", "--resolution", "--mode", "--gpus", "--cpu-tdp",
        "--dram-w-per-gb", "--flush-interval"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=st.lists(st.tuples(st.sampled_from(OPTS), st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8)),
    max_size=3))
def test_cli_run_options_never_traceback(opts: list, tmp_path: Path) -> None:
    argv = ["run", "--run-dir", str(tmp_path / "r"), "--quiet"]
    for name, value in opts:
        argv += [f"{name}={value}"]
    argv += ["--", "true"]
    code, _, err = run_cli(argv)
    assert "Traceback" not in err
    if code != 0:
        assert code == 2 and err.count("\n") == 1 and err.startswith("greentrack:"), err


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
