"""Issue 15 item 3: ``greentrack run --start-when-greener`` as a real process with real signals,
and the start-time computation it shares with ``greentrack advise`` (carbon/schedule.py)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from greentrack.carbon.schedule import best_start, emissions_at, flat_profile, window_starts
from greentrack.carbon.series import IntensitySeries, read_csv
from greentrack.cli import main
from greentrack.run import Run
from tests.fakes.powercap import PowercapTree
from tests.helpers import python_env

#: real waits for a greener start: out of `make test-fast`
pytestmark = pytest.mark.slow

FAST_ENV = {"GREENTRACK_INTERVAL_S": "0.02", "GREENTRACK_COUNTER_INTERVAL_S": "0.1",
            "GREENTRACK_FLUSH_INTERVAL_S": "0.2", "GREENTRACK_PROGRESS": "0"}
#: the command writes the time it started, so a test can tell whether and when it ran
MARK = "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))"


def write_series(path: Path, t0: int, values: list[float], step_s: int = 1) -> Path:
    rows = "".join(f"{t0 + i * step_s},{v}\n" for i, v in enumerate(values))
    path.write_text("start,g_per_kwh\n" + rows, encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return python_env(**FAST_ENV, **PowercapTree(tmp_path / "powercap").env)


# -- the computation (one place, shared with advise) ----------------------------------------------

def hourly(values: list[float], t0: float = 1_767_225_600.0) -> IntensitySeries:
    """An hourly series from 2026-01-01T00:00Z."""
    starts = [t0 + 3600.0 * i for i in range(len(values))]
    return IntensitySeries(starts, [s + 3600.0 for s in starts], values, "test")


def test_best_start_finds_the_clean_minimum_of_an_hourly_series() -> None:
    values = [400.0] * 24
    values[2] = values[3] = 50.0  # a clean 02:00-04:00 minimum
    s = hourly(values)
    t0 = s.starts[0]
    # a 2 h window, asked at 00:20, up to 6 h of delay: the best start is 02:00 sharp
    choice = best_start(s, flat_profile(7200.0), window_starts(s, t0 + 1200, 6 * 3600, 7200), 0.0)
    assert choice is not None
    assert choice.start_unix == t0 + 2 * 3600
    assert choice.grams == pytest.approx(50.0)  # 1 kWh over the window: its mean g/kWh
    now_g = (100 * 400.0 + 20 * 50.0) / 120  # 00:20-02:20: 100 min at 400, 20 min at 50
    assert choice.first_grams == pytest.approx(now_g)
    assert choice.saving_share == pytest.approx(1 - 50.0 / now_g)
    # a brute force over every minute agrees (the corners are where the minimum can be)
    minutes = [t0 + 1200 + 60 * k for k in range(6 * 60 + 1)]
    brute = min(emissions_at(s, flat_profile(7200.0), t, 0.0) for t in minutes)
    assert choice.grams == pytest.approx(brute)


def test_a_flat_series_means_no_wait_and_a_shorter_delay_is_respected() -> None:
    s = hourly([300.0] * 24)
    t0 = s.starts[0]
    choice = best_start(s, flat_profile(3600.0), window_starts(s, t0 + 10, 6 * 3600, 3600), 0.0)
    assert choice is not None and choice.start_unix == t0 + 10 and choice.saving_g == 0.0
    values = [400.0] * 24
    values[10] = 10.0
    s = hourly(values)
    cands = window_starts(s, t0, 2 * 3600, 3600)  # the minimum at 10:00 is out of reach
    assert max(cands) <= t0 + 2 * 3600
    choice = best_start(s, flat_profile(3600.0), cands, 0.0)
    assert choice is not None and choice.start_unix == t0


def test_window_starts_keep_the_window_inside_the_series() -> None:
    s = hourly([100.0] * 4)
    t0 = s.starts[0]
    assert window_starts(s, t0, 10 * 3600, 3 * 3600) == [t0, t0 + 3600]
    assert window_starts(s, t0, 3600, 5 * 3600) == []  # longer than the series


# -- greentrack run --start-when-greener, a real process -----------------------------------------

def test_waits_for_the_clean_minimum_then_runs_and_records_the_wait(
        env: dict[str, str], tmp_path: Path) -> None:
    now = int(time.time())
    values = [500.0] * 40
    lo = 10  # seconds from now: 3 s at 50 g/kWh
    for k in range(3):
        values[lo + 2 + k] = 50.0  # rows start 2 s in the past
    csv = write_series(tmp_path / "forecast.csv", now - 2, values)
    mark, run = tmp_path / "started", tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "greentrack", "run", "--run-dir", str(run), "--start-when-greener",
         "--max-delay", "30s", "--expected-duration", "3s", "--intensity-csv", str(csv), "--",
         sys.executable, "-c", MARK, str(mark)],
        capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Ctrl-C cancels" in out.stderr and "90.0% fewer grams" in out.stderr
    started = float(mark.read_text())
    assert started >= now + lo  # it waited for the minimum, however slow this host
    with Run.open(run) as r:
        events = r.events("start-when-greener")
    assert len(events) == 1
    d = json.loads(events[0]["details"])
    assert d["chosen_start_unix"] == now + lo
    assert d["waited_s"] >= d["planned_wait_s"] - 0.05 and d["planned_wait_s"] > 0
    assert d["now_g_per_kwh"] == pytest.approx(500.0)
    assert d["chosen_g_per_kwh"] == pytest.approx(50.0)
    assert d["expected_saving_share"] == pytest.approx(0.9)
    assert d["expected_saving_g_per_kwh"] == pytest.approx(450.0)
    assert d["max_delay_s"] == 30.0 and d["expected_duration_s"] == 3.0
    # the report says it, with the grams expected saved for the run's own energy
    assert main(["report", str(run), "--format", "json", "--out", str(tmp_path / "rep")]) == 0
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    g = doc["run"]["start_when_greener"]
    assert g["waited_s"] == d["waited_s"]
    assert g["expected_saving_g"] == pytest.approx(450.0 * doc["energy"]["facility_kwh"])


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_countdown_ends_cleanly_and_starts_nothing(
        env: dict[str, str], tmp_path: Path, sig: signal.Signals, code: int) -> None:
    now = int(time.time())
    values = [500.0] * 900
    values[600:700] = [20.0] * 100  # ten minutes away: the wait is long
    csv = write_series(tmp_path / "forecast.csv", now - 2, values)
    mark, run = tmp_path / "started", tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "greentrack", "run", "--run-dir", str(run), "--start-when-greener",
         "--max-delay", "15m", "--expected-duration", "60s", "--intensity-csv", str(csv), "--",
         sys.executable, "-c", MARK, str(mark)],
        stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr],  # type: ignore[union-attr]
                     daemon=True).start()
    seen = []
    while not any("Ctrl-C cancels" in line for line in seen):
        seen.append(lines.get(timeout=60))
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    time.sleep(0.2)  # let the reader thread take the last lines
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    assert "Traceback" not in err
    assert f"wait cancelled by {sig.name}; the command was not started" in err
    assert not mark.exists() and not run.exists()


# -- bad input: one line, exit 2, nothing started -----------------------------------------------

def series_24h(tmp_path: Path) -> Path:
    return write_series(tmp_path / "day.csv", int(time.time()) - 60, [300.0] * 24, step_s=3600)


@pytest.mark.parametrize("args, message", [
    (["--max-delay", "6x", "--expected-duration", "3h"],
     "--max-delay='6x' is invalid: must be a duration >= 0 like 90s, 15m, 6h"),
    (["--max-delay", "6h", "--expected-duration=-3h"],
     "--expected-duration='-3h' is invalid: must be a duration > 0"),
    (["--max-delay", "6h", "--expected-duration", "0"],
     "--expected-duration='0' is invalid: must be a duration > 0"),
    (["--max-delay", "6h", "--expected-duration", "30h"],
     "--expected-duration='30:00:00' is invalid: is longer than the intensity series covers"),
    (["--expected-duration", "3h"],
     "--max-delay=None is invalid: --start-when-greener needs --max-delay and --expected-duration"),
])
def test_bad_durations_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     args: list[str], message: str) -> None:
    mark = tmp_path / "started"
    code = main(["run", "--run-dir", str(tmp_path / "run"), "--start-when-greener",
                 "--intensity-csv", str(series_24h(tmp_path)), *args, "--",
                 sys.executable, "-c", MARK, str(mark)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("greentrack: " + message), err
    assert not mark.exists() and not (tmp_path / "run").exists()


def test_the_options_need_each_other_and_a_series(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cmd = ["--", sys.executable, "-c", "pass"]
    assert main(["run", "--max-delay", "6h", *cmd]) == 2
    assert "--max-delay='6h' is invalid: is used only with --start-when-greener" in \
        capsys.readouterr().err
    assert main(["run", "--start-when-greener", "--max-delay", "6h", "--expected-duration", "1h",
                 *cmd]) == 2
    assert "needs a forecast of the intensity: --intensity-csv FILE" in capsys.readouterr().err
    past = write_series(tmp_path / "past.csv", int(time.time()) - 48 * 3600, [1.0] * 24, 3600)
    assert main(["run", "--start-when-greener", "--max-delay", "6h", "--expected-duration", "1h",
                 "--intensity-csv", str(past), *cmd]) == 2
    assert "not now" in capsys.readouterr().err
    read_csv(past)  # the file itself is valid: only its span is refused


def test_the_countdown_rewrites_one_line_on_a_terminal() -> None:
    """On a terminal the countdown is rewritten in place (``\\r``) until the start comes."""
    import io

    from greentrack.process.greener import StartPlan, wait_for

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = time.time()
    plan = StartPlan(now, now + 1.5, 60.0, 10.0, 400.0, 100.0, 3, "test")
    out = Terminal()
    assert wait_for(plan, out) is None
    assert time.time() >= now + 1.5
    text = out.getvalue()
    assert text.startswith("greentrack: start at ") and "75.0% fewer grams" in text
    assert "\rgreentrack: starting in 0:00:0" in text and text.endswith("\n")
