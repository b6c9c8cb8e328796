"""Tracker and engine end to end: real threads, real SQLite, counters advancing at known watts."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

import greentrack
from greentrack.samplers import _estimate
from greentrack.store import StoreReader, store_paths
from tests.fakes.fake_pynvml import FakeNvml
from tests.fakes.powercap import LiveCounters, PowercapTree
from tests.helpers import FAST, measured_s

WATTS = {"intel-rapl:0": 60.0, "intel-rapl:0:1": 6.0}


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.slow
def test_totals_and_steps_match_known_power(powercap: PowercapTree, tmp_path: Path) -> None:
    with LiveCounters(powercap, WATTS):
        with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
            t_start = time.monotonic()
            for _ in range(4):
                with tracker.step(samples=8):
                    time.sleep(0.25)
            t_end = time.monotonic()
    s = greentrack.summarize(tmp_path / "run")
    assert s["status"] == "completed" and s["steps"] == 4
    assert s["energy_j"]["gpu"] is None  # no GPU channel: not a silent 0 J
    # over what the channels measured (start to stop: a loaded host's start and stop are longer
    # than the loop the test timed), and at least the loop's own time
    assert s["energy_j"]["cpu"] == pytest.approx(60.0 * measured_s(tmp_path / "run", "cpu"),
                                                 rel=0.05)
    assert s["energy_j"]["dram"] == pytest.approx(6.0 * measured_s(tmp_path / "run", "dram"),
                                                  rel=0.05)
    assert s["energy_j"]["cpu"] >= 60.0 * (t_end - t_start) * 0.95
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    for st in steps:
        assert st["cpu_j"] == pytest.approx(60.0 * st["duration_s"], rel=0.05)
        assert st["samples"] == 8 and st["phase"] == "train"
    assert sum(st["cpu_j"] + st["dram_j"] for st in steps) <= s["energy_j"]["total"]
    assert {src["method"] for src in s["sources"]} == {"rapl-powercap"}


@pytest.mark.slow
def test_gpu_steps_with_fake_nvml(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        for _ in range(3):
            with tracker.step():
                time.sleep(0.3)
    s = greentrack.summarize(tmp_path / "run")
    assert s["energy_j"]["gpu"] == pytest.approx(300.0 * measured_s(tmp_path / "run", "gpu"), rel=0.1)
    assert s["gpu_seconds"] == pytest.approx(s["duration_s"], rel=0.01)
    gpu_src = next(x for x in s["sources"] if x["kind"] == "gpu")
    assert gpu_src["method"] == "nvml-energy-counter" and gpu_src["measured"]
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert [st["idx"] for st in steps] == [0, 1, 2]
    # The channel states how far any counter value may be from its refresh (probe reads narrow
    # it to a few ms; a read that could straddle a refresh is taken again, never dated a period
    # off, as ~1 run in 10 here was): each step is within that much power at either end, plus
    # the sensor's +-1.5 W jitter in the shape. Totals are exact either way (checked above).
    gpu_ch = next(c for c in StoreReader(store_paths(tmp_path / "run")[0]).channels()
                  if c["kind"] == "gpu")
    error_s = gpu_ch["details"]["dating_error_ms"] / 1000.0
    assert 0.0 < error_s < 0.1
    for st in steps:
        expected = 300.0 * st["duration_s"]
        assert abs(st["gpu_j"] - expected) <= 300.0 * 2 * error_s + 0.01 * expected, (st, error_s)
        assert st["gpu_seconds"] == pytest.approx(st["duration_s"])
    assert sum(st["gpu_j"] for st in steps) == pytest.approx(
        300.0 * sum(st["duration_s"] for st in steps), rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.4, 0.25])
def test_gpu_lost_mid_run_is_a_recorded_gap(fake_nvml: FakeNvml, tmp_path: Path,
                                            after_s: float) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        # lost 0.4 s after the tracker's first reading (set once it has started: a slow start-up on
        # a loaded host must not eat the window, as it did when set before start); at 0.25 s, the
        # start-up counter reads may not be dated yet (they wait for the refresh phase to be known
        # within +-4 ms, longer on a loaded host): they are dated at the loss, not dropped
        fake_nvml.gpus[0].lost_at = time.monotonic() + after_s
        lost = fake_nvml.gpus[0].lost_at - tracker.engine.origin  # type: ignore[union-attr]
        for _ in range(4):
            with tracker.step():
                time.sleep(0.2)
        nvml = next(s.channel for s in tracker.engine.states  # type: ignore[union-attr]
                    if s.kind == "gpu")
    store = StoreReader(store_paths(tmp_path / "run")[0])
    kinds = [e["kind"] for e in store.events()]
    assert "device-lost" in kinds and "gap-start" in kinds
    assert store.meta["status"] == "completed" and len(store.steps()) == 4
    gpu = next(c for c in store.channels() if c["kind"] == "gpu")
    assert gpu["status"] == "lost" and gpu["gap_s"] > 0.3
    # the energy up to the last counter read before the loss is kept, at 300 W over what the
    # channel measured: from the refresh before its first read (the store's setup comes first:
    # past a refresh on a loaded host, the first value is dated after the start) to that read;
    # nothing is counted after the loss (that read came at most a few cadences before it, more
    # when a loaded host delays the sampler). Counter values are dated at NVML's refresh ticks,
    # which the sampler brackets between two reads: a few ms on a quiet host, more when a loaded
    # one spaces the reads (8a2bbe5 under load: 111 J for 129 +- 6 J; this test under xdist: 20.7
    # ms off). Both ends of the interval are dated so: the bound is twice the widest dating error
    # the sampler itself had, and never under 20 ms.
    assert 0.0 < gpu["until_t"] <= lost
    (row,) = store.rows("SELECT MIN(t) AS t FROM samples WHERE channel_id = ?", (gpu["id"],))
    first_t = row["t"]
    # the first value describes a refresh at most a period after the first read began (a read
    # a refresh may have come during is dated by that refresh: 0.6 ms after it, seen once)
    assert 0.0 <= first_t <= store.meta["first_reading_t"] + 0.1
    assert measured_s(tmp_path / "run", "gpu") == pytest.approx(gpu["until_t"] - first_t)
    error_s = max(0.02, 2.0 * nvml.max_dating_error_s)
    assert gpu["energy_j"] == pytest.approx(300.0 * (gpu["until_t"] - first_t),
                                            abs=300.0 * error_s)


@pytest.mark.slow
def test_transient_read_failures_recover(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST):
        time.sleep(0.2)
        fake_nvml.gpus[0].fail_reads = 3
        time.sleep(0.8)
    store = StoreReader(store_paths(tmp_path / "run")[0])
    kinds = [e["kind"] for e in store.events()]
    assert "gap-start" in kinds and "gap-end" in kinds
    s = greentrack.summarize(tmp_path / "run")
    # the counter kept counting through the failed reads: no energy lost
    assert s["energy_j"]["gpu"] == pytest.approx(300.0 * measured_s(tmp_path / "run", "gpu"), rel=0.1)


def test_exception_propagates_and_run_is_failed(no_host_env: Path, tmp_path: Path) -> None:
    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
            with tracker.step():
                raise Boom("training code failed")
    s = greentrack.summarize(tmp_path / "run")
    assert s["status"] == "failed"
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert len(steps) == 1 and '"error": "Boom"' in steps[0]["extra"]


@pytest.mark.slow
def test_store_is_readable_while_running(no_host_env: Path, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        for _ in range(3):
            with tracker.step():
                time.sleep(0.1)
        time.sleep(0.5)
        live = greentrack.summarize(tmp_path / "run")
        assert live["status"] == "running" and live["steps"] == 3
        assert live["energy_j"]["total"] > 0


@pytest.mark.slow
def test_memory_is_bounded_over_a_long_run(no_host_env: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Points are pruned once bucketed: a timeline keeps RETAIN_S (60 s; 0.5 s here), not the run."""
    monkeypatch.setattr("greentrack.engine.engine.RETAIN_S", 0.5)
    tracker = greentrack.Tracker(tmp_path / "run", interval_s=0.005, counter_interval_s=0.01,
                                 flush_interval_s=0.2, resolution_s=0.1).start()
    assert tracker.engine is not None
    try:
        time.sleep(1.2)
        early = [len(st.timeline.t) for st in tracker.engine.states]
        time.sleep(1.2)
        late = [len(st.timeline.t) for st in tracker.engine.states]
    finally:
        tracker.stop()
    # about a second of points (the retention and a bucket), whatever the run's length
    assert all(0 < b <= a * 1.25 + 20 for a, b in zip(early, late)), (early, late)


def test_stop_is_idempotent_and_leaves_no_thread(no_host_env: Path, tmp_path: Path) -> None:
    tracker = greentrack.Tracker(tmp_path / "run", **FAST).start()
    tracker.stop()
    tracker.stop()
    assert not [t for t in threading.enumerate() if t.name == "greentrack-sampler"]


def test_resumed_segments_add_up(no_host_env: Path, tmp_path: Path) -> None:
    for _ in range(2):
        with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
            with tracker.step():
                time.sleep(0.2)
    s = greentrack.summarize(tmp_path / "run")
    assert s["stores"] == 2 and s["steps"] == 2
    run_ids = {StoreReader(p).meta["run_id"] for p in store_paths(tmp_path / "run")}
    assert run_ids == {s["run_id"]}


def test_the_stop_of_a_resumed_run_reads_only_its_own_store(no_host_env: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25: stop() grew with the segments (every store read back); the closed ones are now
    read on a helper thread after the start, so the stop opens one store, with the same totals."""
    from greentrack.store import reader as store_reader
    run = tmp_path / "run"
    for _ in range(3):
        with greentrack.Tracker(run, **FAST) as t:
            with t.step():
                time.sleep(0.05)
    tracker = greentrack.Tracker(run, **FAST).start()
    with tracker.step():
        time.sleep(0.05)
    assert tracker._earlier is not None
    tracker._earlier[0].join(10)  # the read-ahead is done: what the stop reads is its own store
    opened: list[Path] = []
    real_init = store_reader.StoreReader.__init__

    def counting(self: StoreReader, path: Path) -> None:
        opened.append(path)
        real_init(self, path)

    monkeypatch.setattr(store_reader.StoreReader, "__init__", counting)
    totals = tracker.stop()
    assert opened == [tracker.store_path]
    monkeypatch.undo()
    s = greentrack.summarize(run)
    assert totals is not None and s["stores"] == 4 and totals.steps == 4
    assert totals.energy_j["total"] == pytest.approx(s["energy_j"]["total"], rel=1e-12)


def test_a_store_changed_after_it_was_read_ahead_is_read_again(no_host_env: Path,
                                                                tmp_path: Path) -> None:
    from greentrack.run import Run
    from greentrack.run.model import read_closed
    run = tmp_path / "run"
    for _ in range(2):
        with greentrack.Tracker(run, **FAST) as t:
            with t.step():
                time.sleep(0.05)
    known = read_closed(run)
    assert len(known) == 2
    changed, kept = sorted(known)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # as a write would
    stale = known[changed][1]
    with Run.open(run, known=known) as r:
        segs = {seg.path: seg for seg in r.segments}
        assert segs[kept] is known[kept][1] and segs[changed] is not stale
        assert r.energy_j()["total"] > 0
    with pytest.raises(sqlite3.ProgrammingError):  # the stale copy was closed, not leaked
        stale.reader._conn.execute("SELECT 1")


def test_a_step_is_a_clock_read_and_an_append(no_host_env: Path, tmp_path: Path) -> None:
    """Issue 25: ``with tracker.step()`` cost ~6 us, half of it contextlib's generator machinery
    and keyword packing. Count the Python calls one step makes on the training thread."""
    import sys
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        calls: list[str] = []

        def profile(frame: object, event: str, arg: object) -> None:
            if event == "call":
                calls.append(frame.f_code.co_name)  # type: ignore[attr-defined]

        for info in ({}, {"samples": 32}, {"samples": 32, "lr": 0.1}):
            calls.clear()
            sys.setprofile(profile)
            with tracker.step(**info):
                pass
            sys.setprofile(None)
            # step, StepBlock.__init__, __enter__, __exit__, submit_step, _submit, the queue's
            # submit: nothing else per step
            assert len([c for c in calls if c != "<dictcomp>"]) <= 7, calls
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert [r["samples"] for r in steps] == [None, 32, 32]
    assert '"lr": 0.1' in steps[2]["extra"]


def test_forked_child_never_touches_the_store(no_host_env: Path, tmp_path: Path) -> None:
    """A DataLoader worker started by fork inherits the tracker: it must stay inert."""
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        pid = os.fork()
        if pid == 0:  # child: use the tracker as training code would, then exit through atexit
            try:
                with tracker.step():
                    pass
                tracker.stop("failed")
            finally:
                os._exit(0 if not tracker.running else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with tracker.step():
            time.sleep(0.1)
    store = StoreReader(store_paths(tmp_path / "run")[0])
    assert store.meta["status"] == "completed"
    assert len(store.steps()) == 1
    assert len(store_paths(tmp_path / "run")) == 1


def test_torch_dataloader_workers_do_not_double_count(no_host_env: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
        for x, y in DataLoader(data, batch_size=16, num_workers=2,
                               multiprocessing_context="fork"):
            with tracker.step(samples=len(x)):
                (x.sum() - y.sum()).item()
    assert len(store_paths(tmp_path / "run")) == 1
    s = greentrack.summarize(tmp_path / "run")
    assert s["steps"] == 4 and s["status"] == "completed"


def test_damaged_rows_are_reported_not_fatal(no_host_env: Path, tmp_path: Path) -> None:
    with greentrack.Tracker(tmp_path / "run", **FAST):
        time.sleep(0.2)
    path = store_paths(tmp_path / "run")[0]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE channels SET details='{broken' WHERE id=1")
        conn.execute("UPDATE meta SET value='not json' WHERE key='argv'")
    s = greentrack.summarize(tmp_path / "run")
    assert s["status"] == "completed"
    assert any("damaged" in w for w in s["warnings"])


@pytest.mark.slow
def test_a_long_step_gets_all_its_energy(powercap: PowercapTree, tmp_path: Path) -> None:
    """Readings are kept from the start of the earliest open step (85faba8 kept about a second
    behind the newest bucket: a 3 s step got the last ~1.5 s of its energy)."""
    from greentrack.training.stepmarks import StepMarks

    with LiveCounters(powercap, WATTS):
        with greentrack.Tracker(tmp_path / "run", **FAST) as tracker:
            marks = StepMarks(tracker)  # the integrations' host marks
            marks.begin("validation")
            with tracker.step():
                time.sleep(3.0)
            marks.end()
    steps = StoreReader(store_paths(tmp_path / "run")[0]).steps()
    assert len(steps) == 2
    for st in steps:
        assert st["duration_s"] >= 3.0
        assert st["cpu_j"] == pytest.approx(60.0 * st["duration_s"], rel=0.05)


_OPENED: list[list[str]] = []  # the audit hook below records into the last list, while there is one


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if _OPENED and event in ("open", "os.scandir") and args and isinstance(args[0], (str, Path)):
        _OPENED[-1].append(str(args[0]))


def test_a_warm_start_reads_the_cpu_model_and_sockets_no_more(no_host_env: Path,
                                                              tmp_path: Path) -> None:
    """Issue 25: every start re-read /proc/cpuinfo (~2 KiB per logical CPU) and scanned sysfs for
    the CPU sockets (one file per logical CPU); the hardware does not change within a process."""
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this system: the CPU model comes from platform")
    _estimate.cpu_model.cache_clear()
    _estimate.socket_count.cache_clear()
    sys.addaudithook(_record_opens)  # hooks stay for the process: it records only inside this test
    seen: list[list[str]] = []
    try:
        for name in ("cold", "warm"):
            _OPENED.append([])
            tracker = greentrack.Tracker(tmp_path / name, **FAST).start()
            seen.append(_OPENED.pop())
            tracker.stop()
    finally:
        _OPENED.clear()
    cold, warm = seen
    assert "/proc/cpuinfo" in cold and any(p.startswith("/sys/devices/system/cpu") for p in cold)
    hardware = ("/proc/cpuinfo", "/sys/devices/system/cpu/")
    assert [p for p in warm if p.startswith(hardware)] == []
    assert tracker.notes and "ESTIMATED" in " ".join(n.message for n in tracker.notes)
