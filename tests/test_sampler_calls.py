"""What the sampler thread asks of the kernel and SQLite: few calls, each one a GIL hand-over.

Every call that lets go of the GIL (a system call, a SQLite statement) costs a training thread
that holds it (a Python-bound loop: Lightning's ~1 ms steps) a wait of its own for the GIL, and
the sampler thread the interpreter's switch interval (issue 25; ``bench/sampler_interference.py``
counts them). /proc/stat is read with one ``pread`` of a file kept open, not psutil's six calls;
kernel files (/proc/stat, powercap's counters) are read with the GIL held (the kernel answers at
once); the host's lease directory is scanned when its mtime says a lease came or went, not every
second; a flush is one statement (``tests/test_store_batches.py``). These tests keep
the figures those calls give, and the count the training thread sees.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import greentrack
from greentrack.common.leases import Lease
from greentrack.process import sharing
from greentrack.samplers import _estimate, _quickread
from greentrack.samplers._quickread import QuickRead


def _stat_line(user: int, system: int, idle: int, iowait: int, steal: int = 0) -> str:
    return (f"cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\n"
            f"cpu0 {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\nintr 1 2 3\n")


def test_the_machine_share_is_read_from_the_first_line_of_proc_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The share is busy over all ticks between two reads, from the one file kept open: the
    file is rewritten in place between reads (as the kernel regenerates it), never reopened."""
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(100, 50, 800, 50))
    monkeypatch.setattr(_estimate, "PROC_STAT", str(stat))
    util = _estimate.Utilization("machine", os.getpid())
    monkeypatch.setattr(_estimate, "PROC_STAT", str(tmp_path / "gone"))  # never opened again
    with open(stat, "r+") as f:  # in place: the descriptor kept open sees the new figures
        f.write(_stat_line(130, 60, 850, 60, steal=20))
    # busy 130+60+20 - (100+50) = 60 of 60 + 50 + 10 = 120 ticks (steal is busy, iowait idle)
    assert util.share() == pytest.approx(60 / 120)
    assert util.share() == 0.0  # nothing moved since
    util.close()
    util.close()  # twice is harmless


def test_it_gives_psutils_figures_on_this_machine() -> None:
    stat = _estimate._ProcStat()
    try:
        ct = psutil.cpu_times()
        busy, total = stat.times()
    finally:
        stat.close()
    # read a moment apart: within a few ticks a CPU
    slack = 5 * (psutil.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")
    assert busy == pytest.approx(sum(ct) - ct.idle - ct.iowait, abs=slack)
    assert total == pytest.approx(sum(ct), abs=slack)


def test_a_proc_stat_it_cannot_parse_hands_over_to_psutil_without_a_jump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first line that is not what proc(5) says: psutil's reading from then on, in the same
    units (seconds), so the share stays a share."""
    stat = tmp_path / "stat"
    ct = psutil.cpu_times()
    tick = os.sysconf("SC_CLK_TCK")
    # the real figures, in ticks: psutil continues from them
    stat.write_text(_stat_line(int(ct.user * tick), int(ct.system * tick), int(ct.idle * tick),
                               int(ct.iowait * tick)))
    monkeypatch.setattr(_estimate, "PROC_STAT", str(stat))
    util = _estimate.Utilization("machine", os.getpid())
    stat.write_text("garbage\n")
    shares = [util.share() for _ in range(3)]
    assert all(0.0 <= s <= 1.0 for s in shares), shares
    assert util._stat is None  # psutil's way from now on
    util.close()


def test_trackers_started_and_stopped_leave_no_descriptor_open(no_host_env: Path,
                                                               tmp_path: Path) -> None:
    """Each tracker's /proc/stat is closed at its stop (not left to the garbage collector), and
    nothing else it opened stays open: counted by what the descriptors point to, as the rest of
    this process (other tests' leftovers) may close some meanwhile."""
    def open_files() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor, closed by now
                continue
        return out

    with greentrack.Tracker(tmp_path / "warm", mode="machine"):  # one-off imports and caches
        pass
    before = open_files()
    trackers = []
    for k in range(8):
        with greentrack.Tracker(tmp_path / f"run{k}", mode="machine") as tracker:
            with tracker.step():
                pass
            trackers.append(tracker)  # kept alive: closed by stop(), not by the collector
    after = open_files()
    assert "/proc/stat" not in after
    assert not [f for f in after if str(tmp_path) in f], after
    assert len(after) <= len(before), sorted(set(after) - set(before))


def test_a_quiet_lease_directory_is_scanned_only_when_a_lease_comes_or_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Polled 20 times a second for most of a minute of its clock, a directory where nothing
    changes is scanned at the first look and swept once (stale leases); a run that comes is
    reported at the next look at the mtime, and the scans follow the leases that come and go
    (once more while the mtime is within a tick of the clock that dates it), not the clock."""
    leases = tmp_path / "leases"
    monkeypatch.setenv("GREENTRACK_LEASE_DIR", str(leases))
    scans = []
    real = Lease.others
    monkeypatch.setattr(Lease, "others", lambda self: scans.append(1) or real(self))
    events: list[tuple[str, str]] = []

    class Engine:
        run_key = "test-run"

        def event(self, level: str, kind: str, message: str, **details: object) -> None:
            events.append((level, kind))

    watch = sharing.HostWatch(Engine(), {"run_id": "mine", "pid": os.getpid(), "mode": "machine",
                                         "run_dir": str(tmp_path), "host": "h",
                                         "host_scope": True, "gpus": []})
    try:
        time.sleep(2 * sharing.FRESH_NS / 1e9)  # past the tick of this run's own lease
        t0 = time.monotonic()
        scans.clear()
        for k in range(1100):  # 55 s at 20 polls a second
            watch(t0 + k * 0.05)
        assert len(scans) == 2, len(scans)  # the first look, and a sweep SWEEP_S later
        other = Lease(leases, {"run_id": "other", "pid": 1, "mode": "machine",
                               "run_dir": "/elsewhere", "host_scope": True}, shared=True)
        scans.clear()
        for k in range(1100, 1106):  # the next look at the mtime, then again while it is recent
            watch(t0 + k * 0.05)
        assert 1 <= len(scans) <= 2 and ("warning", "host-shared") in events, (scans, events)
        time.sleep(2 * sharing.FRESH_NS / 1e9)
        other.release()
        scans.clear()
        for k in range(1106, 1112):
            watch(t0 + k * 0.05)
        assert 1 <= len(scans) <= 2, len(scans)
        time.sleep(2 * sharing.FRESH_NS / 1e9)
        scans.clear()
        for k in range(1112, 1400):  # quiet again: no scan until the next sweep
            watch(t0 + k * 0.05)
        assert len(scans) <= 1, len(scans)
    finally:
        watch.close()


def _reads_beside_a_spinning_thread(read: Any, n: int = 200) -> int:
    """This thread's voluntary context switches over ``n`` calls of ``read`` while another thread
    spins holding the GIL: its waits for the GIL back after each call that let go of it."""
    spinning = True

    def spin() -> None:
        while spinning:
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    time.sleep(0.02)
    try:
        w0 = _waits()
        for _ in range(n):
            read()
        return _waits() - w0
    finally:
        spinning = False
        spinner.join()


def test_a_kernel_file_is_read_with_the_gil_held_as_os_pread_reads_it(tmp_path: Path) -> None:
    """The same bytes and errors as ``os.pread``, without a hand-over per read: 200 reads of
    /proc/stat beside a thread that spins holding the GIL wait for it back a few times at most
    (the switch interval may fall inside one), where ``os.pread`` waits at every read."""
    fd = os.open("/proc/stat", os.O_RDONLY)
    try:
        quick = QuickRead(fd)
        assert quick.holds_gil
        assert quick.pread(4, 0) == os.pread(fd, 4, 0) == b"cpu "
        # ctypes keeps the GIL through a call only for a PyDLL function (FUNCFLAG_PYTHONAPI)
        assert _quickread._PREAD[0]._flags_ & ctypes._FUNCFLAG_PYTHONAPI
        # and it shows: where the spinning thread contends (on a loaded host it may not be
        # running at each read), os.pread waits at most reads, the quick read at a few
        for _ in range(5):
            released = _reads_beside_a_spinning_thread(lambda: os.pread(fd, 1024, 0))
            held = _reads_beside_a_spinning_thread(lambda: quick.pread(1024, 0))
            if released >= 100:
                break
        assert released < 100 or held <= 10, (held, released)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:  # a closed descriptor: EBADF, as os.pread says it
        quick.pread(4, 0)
    assert e.value.errno == errno.EBADF
    zone = tmp_path / "energy_uj"
    zone.write_text("123456\n")
    fd = os.open(zone, os.O_RDONLY)
    try:
        assert QuickRead(fd).pread(64, 0) == b"123456\n"
    finally:
        os.close(fd)


def test_only_a_file_in_memory_is_read_with_the_gil_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """procfs, sysfs, tmpfs: yes; the same read on FUSE (lxcfs serves a container's /proc/stat),
    NFS or a disk could block, and must let go of the GIL."""
    for path, memory in (("/proc/stat", True), (__file__, None)):
        fd = os.open(path, os.O_RDONLY)
        try:
            kind = _quickread.fs_type(fd)
            assert QuickRead(fd).holds_gil == (kind in _quickread.MEMORY_FS), (path, kind)
            if memory:
                assert kind == 0x9FA0  # PROC_SUPER_MAGIC
        finally:
            os.close(fd)
    monkeypatch.setattr(_quickread, "fs_type", lambda fd: 0x65735546)  # FUSE_SUPER_MAGIC
    fd = os.open("/proc/stat", os.O_RDONLY)
    try:
        quick = QuickRead(fd)
        assert not quick.holds_gil and quick.pread(4, 0) == b"cpu "
    finally:
        os.close(fd)


def test_a_file_slow_to_read_lets_go_of_the_gil_from_then_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_quickread, "SLOW_S", 0.0)  # every read is "slow"
    fd = os.open("/proc/stat", os.O_RDONLY)
    try:
        quick = QuickRead(fd)
        assert quick.pread(4, 0) == b"cpu " and not quick.holds_gil and quick.slow_reads == 1
        assert quick.pread(4, 0) == b"cpu " and quick.slow_reads == 1  # os.pread now
    finally:
        os.close(fd)


def _waits() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split(":")[1])
    return 0


@pytest.mark.slow  # ~4 s of a real tracker beside a loop that holds the GIL
def test_a_python_bound_loop_beside_a_tracker_gives_up_the_gil_a_few_dozen_times_a_second(
        no_host_env: Path, tmp_path: Path) -> None:
    """The training thread makes no blocking call of its own: each of its voluntary context
    switches is a wait for the GIL the sampler thread took. With the default cadences on a
    host of estimates (one slow poll each 0.2 s, a flush each 0.5 s) and ~1,000 steps a second:
    about 100 a second before the calls above were cut, about 20 after, a flush being one
    statement (``bench/sampler_interference.py`` has both, and what they cost)."""
    data = list(range(64))

    def work(n: int) -> int:  # interpreter work, holding the GIL
        s = 0
        for i in range(n):
            s += data[i & 63] * 3 ^ i
        return s

    t = time.perf_counter()
    work(100_000)
    n = max(1000, int(100_000 * 1e-3 / (time.perf_counter() - t)))  # ~1 ms a step
    with greentrack.Tracker(tmp_path / "run", mode="machine") as tracker:
        time.sleep(0.3)  # past the start-up reads
        t0, w0 = time.monotonic(), _waits()
        while time.monotonic() - t0 < 3.0:
            with tracker.step(samples=32):
                work(n)
        rate = (_waits() - w0) / (time.monotonic() - t0)
    assert rate < 60, f"{rate:.0f} waits a second"
