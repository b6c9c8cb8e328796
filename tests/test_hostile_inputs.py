"""A hostile and careless user against what landed with issues 15-17: devices, FIFOs and links
where a file goes, a symlinked input, two merges at once, '+' in a path, a decorated generator or
coroutine. Each test failed before its fix; real files, real processes, real trackers."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.config import Config
from greentrack.common.errors import ConfigError
from greentrack.process.settings import check_settings
from greentrack.reports.emissions_log import append
from tests.helpers import FAST

pd = pytest.importorskip("pandas")


# -- --emissions-csv / emissions_csv -----------------------------------------------------------
def test_a_link_to_the_projects_csv_is_appended_through_never_replaced(
        doc: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "emissions.csv"
    target.write_text("timestamp,project_name,emissions,my_note\n2025-01-01T00:00:00,old,0.5,a\n")
    link = tmp_path / "emissions.csv"
    link.symlink_to(target)
    append([doc], link)  # other columns: the file is rewritten, through the link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(pd.read_csv(target)) == 2 and pd.read_csv(target)["my_note"].iloc[0] == "a"
    dangling = tmp_path / "new.csv"
    dangling.symlink_to(shared / "new-target.csv")  # the user's link to a file not made yet
    append([doc], dangling)
    assert dangling.is_symlink() and len(pd.read_csv(shared / "new-target.csv")) == 1


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_as_emissions_csv_is_refused_before_the_run(
        no_host_env: Path, tmp_path: Path, kind: str) -> None:
    """Reading /dev/zero whole at stop never ended (memory grew until killed); a FIFO held the
    stop, and with it the end of training, until a writer came."""
    if kind == "fifo":
        path = tmp_path / "emissions.csv"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    tracker = greentrack.Tracker(tmp_path / "run", emissions_csv=str(path), **FAST)
    with pytest.raises(ConfigError) as e:
        tracker.start()
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert f"emissions_csv='{path}' is invalid: is {what}" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_fifo_as_intensity_csv_is_one_line_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "intensity.csv"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def check() -> None:
        try:
            check_settings(Config(run_dir=tmp_path / "run", intensity_csv=str(fifo)))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            got.append(e)
    t = threading.Thread(target=check, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as --intensity-csv waited for a writer")
    assert len(got) == 1 and isinstance(got[0], ConfigError)
    assert "is a FIFO (named pipe), not a CSV file" in str(got[0])


# -- greentrack merge ------------------------------------------------------------------------
@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> list[Path]:
    from tests.helpers import node_run
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    node_run(monkeypatch, dirs[0], "node-a", run_id="job-a")
    node_run(monkeypatch, dirs[1], "node-b", run_id="job-b")
    return dirs


def test_merge_refuses_an_out_inside_an_input_reached_through_a_link(
        two_runs: list[Path], tmp_path: Path) -> None:
    from tests.helpers import digest, gt
    link = tmp_path / "alink"
    link.symlink_to(two_runs[0].parent)
    before = digest(two_runs[0])
    for out, given in ((link / "run" / "merged", two_runs[0]), (two_runs[0] / "m", link / "run")):
        r = gt("merge", str(out), str(given))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "is inside the input" in r.stderr
    assert digest(two_runs[0]) == before


def test_merge_into_an_unwritable_place_is_one_line(two_runs: list[Path]) -> None:
    from tests.helpers import gt
    r = gt("merge", "/proc/greentrack-nowhere/out", str(two_runs[0]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "OUT='/proc/greentrack-nowhere/out' is invalid: cannot be written" in r.stderr


def test_a_second_merge_that_fills_out_meanwhile_is_never_mixed_in(
        two_runs: list[Path], tmp_path: Path) -> None:
    """Two merges into one OUT: the one that finishes second used to merge its stores into the
    first one's directory (a directory of two runs, both 'merged'); now it is refused whole."""
    from greentrack.common.files import staged_dir
    from greentrack.run.merge import merge_runs
    from greentrack.store import StoreReader, store_paths
    out = tmp_path / "merged"
    with pytest.raises(ConfigError) as e:
        with staged_dir(out, exclusive=True) as tmp:  # merge_runs' own way of writing OUT
            (tmp / "run.json").write_text('{"run_id": "job-a"}')
            merge_runs(out, [two_runs[1]])  # the other merge, done meanwhile
    assert "was filled by another process meanwhile" in str(e.value)
    ids = set()
    for p in store_paths(out):
        r = StoreReader(p)
        ids.add(r.meta["run_id"])
        r.close()
    assert ids == {"job-b"} and '"job-b"' in (out / "run.json").read_text()



# -- @greentrack.track -------------------------------------------------------------------------
@pytest.mark.slow
def test_track_measures_the_iteration_of_a_generator_and_the_await_of_a_coroutine(
        no_host_env: Path, tmp_path: Path) -> None:
    """Before: the run ended when the generator or coroutine object was made (7 ms, 'completed'),
    before any of the work it stands for ran."""
    import asyncio
    import time

    @greentrack.track(run_dir=tmp_path / "gen", **FAST)
    def batches(n: int) -> Any:
        for i in range(n):
            time.sleep(0.2)
            yield i

    @greentrack.track(run_dir=tmp_path / "co", **FAST)
    async def train() -> str:
        await asyncio.sleep(0.4)
        return "done"

    @greentrack.track(run_dir=tmp_path / "agen", **FAST)
    async def stream() -> Any:
        for i in range(2):
            await asyncio.sleep(0.2)
            yield i

    assert list(batches(3)) == [0, 1, 2]
    assert batches.last_totals is not None and batches.last_totals.duration_s >= 0.6
    assert batches.last_totals.status == "completed"
    assert asyncio.run(train()) == "done"
    assert train.last_totals is not None and train.last_totals.duration_s >= 0.4

    async def consume() -> list[int]:
        return [i async for i in stream()]
    assert asyncio.run(consume()) == [0, 1]
    assert stream.last_totals is not None and stream.last_totals.duration_s >= 0.4
    g = batches(5)
    next(g)
    g.close()  # the consumer stopped early
    assert batches.last_totals is not None and batches.last_totals.status == "stopped"


@pytest.mark.parametrize("code,status", [(0, "completed"), (None, "completed"), (3, "failed")])
def test_track_a_function_that_calls_sys_exit(no_host_env: Path, tmp_path: Path, code: Any,
                                              status: str) -> None:
    import sys

    @greentrack.track(run_dir=tmp_path / "run", **FAST)
    def main() -> None:
        sys.exit(code)

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == code  # passes through unchanged
    assert main.last_totals is not None and main.last_totals.status == status


def test_track_checks_file_settings_when_decorating_and_runs_a_call_it_cannot_record(
        no_host_env: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as e:  # before: only when the first call started
        greentrack.track(emissions_csv=str(tmp_path / "no-such-dir" / "e.csv"))
    assert "emissions_csv" in str(e.value) and "does not exist" in str(e.value)
    blocker = tmp_path / "file"
    blocker.write_text("")  # the run directory's parent is a file: it cannot be made

    @greentrack.track(run_dir=blocker / "run", **FAST)
    def train() -> int:
        return 42

    assert train() == 42  # before: ConfigError, and the function never ran
    assert train.last_totals is None
    assert any("this call is not tracked" in r.getMessage() for r in caplog.records)


# -- several directories, joined by '+' -------------------------------------------------------
@pytest.mark.slow
def test_plus_joined_directories_read_alike_everywhere_even_when_a_name_holds_plus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> None:
    """``summary a+b`` said 'does not exist' (only report and compare split on '+'), and a
    directory named ``x+y`` could not be joined to another (it was split inside its name)."""
    import json

    from tests.helpers import gt, node_run
    a, b = tmp_path / "x+y" / "run", tmp_path / "b" / "run"
    node_run(monkeypatch, a, "node-a")
    node_run(monkeypatch, b, "node-b", steps=5)
    apart = gt("summary", "--json", str(a), str(b))
    assert apart.returncode == 0, apart.stderr
    for joined in (f"{a}+{b}", f"{b}+{a}"):
        r = gt("summary", "--json", joined)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["energy_j"] == json.loads(apart.stdout)["energy_j"]
        assert json.loads(r.stdout)["steps"] == json.loads(apart.stdout)["steps"] == 8
    r = gt("advise", f"{a}+{b}")  # its first line named the first directory alone
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith(
        f"greentrack advise: run job-9 ({a}+{b}): "), r.stdout
    r = gt("merge", str(tmp_path / "merged"), f"{a}+{b}")
    assert r.returncode == 0 and "2 store(s) from 2 directories" in r.stdout, r.stderr
    r = gt("summary", f"{a}+{tmp_path / 'nope'}")
    assert r.returncode == 2 and f"RUN_DIR='{tmp_path / 'nope'}' is invalid: does not exist" in r.stderr


# -- greentrack advise --max-slowdown ---------------------------------------------------------
def test_a_bare_max_slowdown_above_one_is_not_taken_as_hundreds_of_percent(tmp_path: Path) -> None:
    """``--max-slowdown 5`` (meant: 5%) was taken as 500% slower steps: the advice then picked
    the lowest limit whatever it cost in time."""
    from greentrack.cli.reports import parse_slowdown
    with pytest.raises(ConfigError) as e:
        parse_slowdown("5")
    assert str(e.value) == ("--max-slowdown='5' is invalid: reads as 500% slower steps: for 5% "
                            "write 5% or 0.05; a slowdown above 100% is given with its % sign")
    assert parse_slowdown("150%") == pytest.approx(1.5) and parse_slowdown("1") == 1.0
    assert parse_slowdown("0.05") == 0.05 and parse_slowdown("5%") == pytest.approx(0.05)


@pytest.mark.slow
def test_merging_a_store_still_being_written_says_so(tmp_path: Path, no_host_env: Path) -> None:
    """The merged copy of a live store reads as 'incomplete' forever: the user is told at once."""
    import subprocess
    import sys
    import time

    from tests.helpers import gt, python_env
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", (
        "import time, greentrack\n"
        f"with greentrack.Tracker({str(run)!r}, run_id='live', interval_s=0.02, "
        "counter_interval_s=0.1, flush_interval_s=0.1) as t:\n"
        "    t.step(); time.sleep(60)\n")], env=python_env(**{"GREENTRACK_POWERCAP_ROOT": str(no_host_env)}))
    try:
        deadline = time.monotonic() + 60
        while not any(run.glob("*.gtdb")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a first flush
        r = gt("merge", str(tmp_path / "merged"), str(run))
    finally:
        child.kill()
        child.wait()
    assert r.returncode == 0, r.stderr
    assert "was still being written: merged as far as it had committed" in r.stderr


# -- planned_steps (the forecast's horizon) ---------------------------------------------------
@pytest.mark.parametrize("bad", ["1000", -5, 0, float("nan"), float("inf"), 2.5, 1e30])
def test_a_bad_planned_steps_is_one_line_before_anything_starts(no_host_env: Path, tmp_path: Path,
                                                                 bad: Any) -> None:
    """Before: taken as is; '1000' made every forecast raise TypeError, -5 forecast the run as
    already over, 1e30 forecast an end in the year 10^21."""
    torch = pytest.importorskip("torch")
    from greentrack.integrations.torch import track_optimizer
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ConfigError) as e:
        track_optimizer(opt, tmp_path / "run", planned_steps=bad, **FAST)
    assert str(e.value).startswith(f"planned_steps={bad!r} is invalid: must be a whole number")
    assert not (tmp_path / "run").exists()


def test_planned_steps_as_a_tensor_or_numpy_integer_is_a_plain_count(no_host_env: Path,
                                                                     tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    from greentrack.integrations.torch import track_optimizer
    for i, given in enumerate((torch.tensor(40), np.int64(40), 40.0)):
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        tracking = track_optimizer(opt, tmp_path / f"run{i}", planned_steps=given,
                                   progress_every_s=None, **FAST)
        try:
            planned = tracking.meter.forecast.planned_steps
            assert planned == 40 and type(planned) is int  # before: the tensor itself
            tracking.meter.plan(-1)  # a framework's "unknown" inside a hook: left out, no raise
            tracking.meter.plan("n/a")
            assert tracking.meter.forecast.planned_steps == 40
        finally:
            tracking.close()


def test_a_fifo_or_device_as_config_file_is_one_line(tmp_path: Path) -> None:
    """``--config`` (or GREENTRACK_CONFIG) naming a FIFO waited for a writer for ever."""
    import subprocess
    import sys

    from tests.helpers import python_env
    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        try:
            r = subprocess.run([sys.executable, "-m", "greentrack", "advise", str(tmp_path),
                                "--config", str(path)], capture_output=True, text=True,
                               env=python_env(), timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"--config {path} did not end")
        assert r.returncode == 2 and r.stderr == (f"greentrack: config='{path}' is invalid: is "
                                                  f"{what}, not a TOML file\n")


# -- Ctrl-C and SIGTERM to a report waiting on the emissions.csv lock --------------------------
@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_a_report_waits_is_one_line_and_leaves_nothing_behind(
        tmp_path: Path, signame: str) -> None:
    """A real report process blocked on the lock another process holds (not a timing guess:
    the test waits until the report's files are in place, the step before the append)."""
    import fcntl
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import clean_env, make_run, python_env
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, tmp_path):
        run = make_run(tmp_path, steps=2)
    csv_path, out = tmp_path / "emissions.csv", tmp_path / "out"
    with csv_path.open("a") as held:  # another process appending: it holds the file's flock
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-m", "greentrack", "report", str(run), "--format",
                              "json", "--out", str(out), "--emissions-csv", str(csv_path)],
                             env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        deadline = time.monotonic() + 60
        while not (out / "report.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "report.json").exists()
        time.sleep(0.3)  # into the wait for the lock
        p.send_signal(getattr(signal, signame))
        _, err = p.communicate(timeout=60)
    signum = getattr(signal, signame)
    assert p.returncode == 128 + signum, err
    assert err == f"greentrack: report interrupted by {signame}; nothing half-written was left\n"
    assert csv_path.read_bytes() == b""  # no row half-written, no temporary file beside it
    assert sorted(q.name for q in tmp_path.iterdir() if q.name.startswith(".")) == []


# -- calibrate_power_limits given as NumPy, a tensor, one number ------------------------------
def test_power_limits_from_numpy_a_tensor_or_one_number(tmp_path: Path) -> None:
    """Before: ``np.array([250, 300])``, ``[np.int64(250)]``, ``torch.tensor([...])`` and ``250``
    were all refused as 'not a list'; the bad ones stay refused."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    for given in (np.array([250, 300]), [np.int64(250), 300.0], torch.tensor([250.0, 300.0]),
                  [torch.tensor(250), 300]):
        assert Config(run_dir=tmp_path, calibrate_power_limits=given).calibrate_power_limits \
            == (250.0, 300.0)
    assert Config(run_dir=tmp_path, calibrate_power_limits=250).calibrate_power_limits == (250.0,)
    for bad in (np.array([np.nan]), [torch.tensor([1.0, 2.0])], True, [np.True_], np.array([0]),
                "300,,400", [None]):
        with pytest.raises(ConfigError) as e:
            Config(run_dir=tmp_path, calibrate_power_limits=bad)
        assert str(e.value).startswith("calibrate_power_limits=") and "\n" not in str(e.value)


def test_the_framework_callbacks_refuse_a_bad_planned_steps_when_made(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    with pytest.raises(ConfigError) as e:
        GreenTrackTrainerCallback(tmp_path / "run", planned_steps="10k")
    assert str(e.value).startswith("planned_steps='10k' is invalid")
    assert GreenTrackTrainerCallback(tmp_path / "run", planned_steps=1e4).run.planned_steps == 10000
