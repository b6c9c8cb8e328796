"""Settings with sane ranges, a full disk at start, and runs that meet on one machine: real
processes, real flock leases, real SQLite. Each failed on 85faba8 (see the README's guarantees)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import greentrack
from greentrack.common.config import Config
from greentrack.common.leases import Lease, live_leases
from greentrack.store import StoreReader, store_paths
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import FAST, measured_s, python_env

#: real processes meeting on one host: out of `make test-fast`
pytestmark = pytest.mark.slow

FAST_ENV = {"GREENTRACK_INTERVAL_S": "0.02", "GREENTRACK_COUNTER_INTERVAL_S": "0.1",
            "GREENTRACK_FLUSH_INTERVAL_S": "0.1"}


@pytest.fixture
def lease_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> Path:
    path = tmp_path / "leases"
    monkeypatch.setenv("GREENTRACK_LEASE_DIR", str(path))
    return path


def gt(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greentrack", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def events(run: Path, kind: str) -> list[dict[str, object]]:
    return [e for p in store_paths(run) for e in StoreReader(p).events() if e["kind"] == kind]


# -- settings --------------------------------------------------------------------------------


def test_tiny_resolution_is_refused_before_any_run(tmp_path: Path) -> None:
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    out = gt("run", "--run-dir", str(tmp_path / "run"), "--resolution", "1e-9", "--", "true",
             env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 2 and "resolution_s=1e-09 is invalid: must be a number from 0.1" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,setting", [
    (["--country", "Atlantis"], "country"), (["--cloud", "aws:mars-1"], "cloud"),
    (["--country", "USA", "--region", "Gondor"], "region"),
    (["--intensity-csv", "/nonexistent.csv"], "intensity_csv"),
    (["--pushgateway", "http://host:notaport"], "pushgateway_url")])
def test_run_checks_every_setting_before_it_creates_anything(args: list[str], setting: str,
                                                               tmp_path: Path) -> None:
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    marker = tmp_path / "ran"
    out = gt("run", "--run-dir", str(tmp_path / "runs" / "a"), *args, "--", "touch", str(marker),
             env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("greentrack: ") and setting in line, line
    assert not (tmp_path / "runs").exists() and not marker.exists()


# -- a full disk at start ------------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs, filled to the last byte (needs root: CI and the dev VM are)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        existing = mnt / "existing"  # a run already started (another rank, a resumed segment)
        existing.mkdir()
        (existing / "run.json").write_text('{"run_id": "abc", "format": "greentrack-run"}')
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


TRAIN = """
import sys, time, greentrack
t = greentrack.Tracker(sys.argv[1], interval_s=0.02, counter_interval_s=0.1).start()
steps = 0
for _ in range(20):
    with t.step(samples=1):
        time.sleep(0.005)
    steps += 1
t.stop()
print("trained", steps, t.status, flush=True)
"""


@pytest.mark.parametrize("run", ["runs/new", "existing"])
def test_a_full_disk_at_start_disables_tracking_not_training(run: str, full_disk: Path,
                                                              tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", TRAIN, str(full_disk / run)],
                         capture_output=True, text=True, timeout=60,
                         env=python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["trained", "20", "disabled"]
    assert out.stderr.count("tracking disabled") == 1 and "Traceback" not in out.stderr
    assert "no space" in out.stderr.lower() or "full" in out.stderr.lower()


def test_greentrack_run_on_a_full_disk_still_runs_the_command(full_disk: Path, tmp_path: Path) -> None:
    env = python_env(GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    out = gt("run", "--run-dir", str(full_disk / "r"), "--", sys.executable, "-c",
             "import sys; sys.exit(3)", env=env, cwd=tmp_path)
    assert out.returncode == 3, out.stderr  # the command's status, not greentrack's
    assert "tracking disabled" in out.stderr and "Traceback" not in out.stderr


# -- default run directories -----------------------------------------------------------------------

def test_runs_without_a_run_dir_never_merge(no_host_env: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENTRACK_RUN_DIR", raising=False)
    code = "import greentrack\nwith greentrack.Tracker(**%r) as t:\n    print(t.run_dir, t.run_id)" % FAST
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=python_env(GREENTRACK_POWERCAP_ROOT=str(no_host_env)), cwd=tmp_path,
                           timeout=60).stdout.split() for _ in range(2)]
    (dir_a, id_a), (dir_b, id_b) = outs
    assert dir_a != dir_b and id_a != id_b
    assert Path(dir_a).parent == Path(dir_b).parent == Path("greentrack-runs")
    # under a launcher, every rank of the job lands in one directory
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    assert Config().run_dir == Path("greentrack-runs/job-42")


# -- two runs measuring one host ----------------------------------------------------------------

HOLD = """
import sys, time, greentrack
with greentrack.Tracker(sys.argv[1], mode=sys.argv[2], interval_s=0.02, counter_interval_s=0.1,
                        flush_interval_s=0.1) as t:
    print("started", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold(run: Path, mode: str, seconds: float, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), mode, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    return proc


def test_two_machine_mode_runs_on_one_host_both_say_so(lease_dir: Path, tmp_path: Path) -> None:
    env = python_env(GREENTRACK_LEASE_DIR=str(lease_dir),
                     GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    a = _hold(tmp_path / "a", "machine", 3.0, env)
    b = _hold(tmp_path / "b", "machine", 1.0, env)
    for p in (a, b):
        assert p.wait(30) == 0, p.stderr.read() if p.stderr else ""
    for run, other in ((tmp_path / "a", tmp_path / "b"), (tmp_path / "b", tmp_path / "a")):
        found = events(run, "host-shared")
        assert len(found) == 1 and str(other) in str(found[0]["message"])
        assert "--mode process" in str(found[0]["message"])
        s = greentrack.summarize(run)
        assert any("another run measures this host" in w for w in s["warnings"])
    out = gt("report", str(tmp_path / "a"), "--format", "md", "--out", str(tmp_path / "rep"),
             env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    md = next((tmp_path / "rep").rglob("*.md")).read_text()
    assert "another run measures this host" in md and "--mode process" in md
    assert live_leases(lease_dir) == []  # released at stop


def test_process_mode_and_sequential_runs_are_not_flagged(lease_dir: Path, tmp_path: Path) -> None:
    env = python_env(GREENTRACK_LEASE_DIR=str(lease_dir),
                     GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    a = _hold(tmp_path / "a", "process", 1.5, env)
    b = _hold(tmp_path / "b", "process", 0.5, env)
    for p in (a, b):
        assert p.wait(30) == 0
    c = _hold(tmp_path / "c", "machine", 0.2, env)
    assert c.wait(30) == 0
    assert not any(events(tmp_path / r, "host-shared") for r in ("a", "b", "c"))


def test_a_killed_runs_lease_is_stale_not_a_neighbour(lease_dir: Path, tmp_path: Path) -> None:
    env = python_env(GREENTRACK_LEASE_DIR=str(lease_dir),
                     GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    a = _hold(tmp_path / "a", "machine", 30.0, env)
    a.kill()
    a.wait(10)
    assert len(list(lease_dir.glob("*.lease"))) == 1  # the file is left behind, its lock is not
    b = _hold(tmp_path / "b", "machine", 0.3, env)
    assert b.wait(30) == 0
    assert events(tmp_path / "b", "host-shared") == []
    assert list(lease_dir.glob("*.lease")) == []


def test_a_planted_lease_file_is_not_followed(lease_dir: Path, tmp_path: Path) -> None:
    Lease(lease_dir, {}, shared=True).release()  # creates the directory as greentrack would
    (lease_dir / "evil.lease").symlink_to("/etc/shadow")
    assert live_leases(lease_dir) == []
    assert oct(lease_dir.stat().st_mode & 0o7777) == "0o1777"


# -- a Tracker inside `greentrack run` ----------------------------------------------------------

CHILD = """
import os, sys, time, greentrack
with greentrack.Tracker(interval_s=0.02, counter_interval_s=0.1, flush_interval_s=0.1) as t:
    for _ in range(int(float(sys.argv[1]) / 0.05)):
        with t.step(samples=4):
            time.sleep(0.05)
    print(t.run_dir, t.run_id, flush=True)
"""


def test_a_tracker_under_greentrack_run_joins_its_run(lease_dir: Path, tmp_path: Path) -> None:
    tree = PowercapTree(tmp_path / "powercap")
    env = python_env(**FAST_ENV, **tree.env, GREENTRACK_LEASE_DIR=str(lease_dir))
    env.pop("GREENTRACK_RUN_DIR", None)
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    with LiveCounters(tree, {"intel-rapl:0": 50.0, "intel-rapl:0:1": 5.0}):
        t0 = time.monotonic()
        out = gt("run", "--run-dir", str(run), "--quiet", "--", "sh", "-c",
                 f"sleep 0.5; {sys.executable} {script} 1.0; sleep 0.5", env=env, cwd=tmp_path)
        wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    child_dir, child_id = out.stdout.split()
    assert Path(child_dir).resolve() == run.resolve()
    assert not (tmp_path / "greentrack-runs").exists()
    s = greentrack.summarize(run)
    assert s["run_id"] == child_id and s["stores"] == 2 and s["steps"] == 20
    # the machine is counted once: 55 W over the parent's span, not 55 W plus the child's, and
    # nothing between the two (a loaded host lost 0.87 s of it before; quiet: 1-2%, now 0.1%)
    assert s["energy_j"]["total"] == pytest.approx(55.0 * measured_s(run), rel=0.03)
    assert s["duration_s"] <= wall
    kinds = {e["kind"] for e in events(run, "joined")} | {e["kind"] for e in events(run, "join-ended")}
    assert kinds == {"joined", "join-ended"}
    # the parent left out what the child measured, device by device: ~1 s of its steps
    (ended,) = events(run, "join-ended")
    details = json.loads(str(ended["details"]))
    spans = details["measured_s"]
    assert set(spans) == set(details["devices"]) and len(spans) == 2
    assert all(1.0 <= b - a <= wall for a, b in spans.values()), spans
    assert not events(run, "host-shared")


def test_the_commands_trackers_take_greentrack_runs_carbon_settings(lease_dir: Path,
                                                                    tmp_path: Path) -> None:
    """A child tracker's live emissions, cost and forecast use what `greentrack run` was given
    (before, a joined child priced nothing: its forecast had grams but no cost)."""
    env = python_env(**FAST_ENV, GREENTRACK_LEASE_DIR=str(lease_dir),
                     GREENTRACK_POWERCAP_ROOT=str(tmp_path / "none"))
    env.pop("GREENTRACK_RUN_DIR", None)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import greentrack
        t = greentrack.Tracker(currency="USD").start()
        c = t.config
        print(c.country, c.electricity_price, c.pue, c.currency, c.training_type)
        t.stop()
    """))
    out = gt("run", "--run-dir", str(tmp_path / "run"), "--quiet", "--country", "FR",
             "--electricity-price", "0.25", "--pue", "1.2", "--currency", "EUR",
             "--training-type", "fine-tuning", "--", sys.executable, str(script),
             env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # the flags reach the child; what the child's code sets itself (currency) wins
    assert out.stdout.split() == ["FR", "0.25", "1.2", "USD", "fine-tuning"], out.stdout
