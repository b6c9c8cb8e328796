"""A hostile and careless user against what landed with issues 15-17: two merges at once, a
store merged while still being written, '+' in a path, a decorated generator or coroutine, a
signal while a report waits. Each test failed before its fix; real files, real processes, real
trackers. (The bad input of those issues, FIFOs, devices and links where a file goes, planned
steps, power limits: tests/bad_input/, by the layer that refuses it.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.errors import ConfigError
from tests.helpers import FAST


# -- greentrack merge ------------------------------------------------------------------------
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


# -- greentrack merge of a store still being written ------------------------------------------
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
