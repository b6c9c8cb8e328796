"""Shared GPUs: a run's share of a GPU's energy by NVML's per-process utilization (fake pynvml).

The "other" process is this test's parent (a live process outside this process's tree), so it is
what a real untracked user of the GPU is to greentrack; a tracked one holds a real lease.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import greentrack
from greentrack.common.config import Config
from greentrack.common.leases import Lease, live_leases
from greentrack.engine.channelstate import Timeline
from greentrack.samplers._gpushare import METHOD_SUFFIX, GpuShare, lease_peers
from greentrack.samplers._nvml import NvmlGpu
from tests.fakes.fake_pynvml import (UPDATE_S, FakeGpu, FakeNvml, FakeProcess, PowerTrace,
                                     VirtualClock)
from tests.helpers import FAST

ME = os.getpid()
OTHER = os.getppid()
WATTS = 300.0


def replay(gpu: FakeGpu, seconds: float, peers: Any = lambda: [], run_id: str = "run-a",
           fast: float = 0.05, slow_every: int = 4) -> tuple[GpuShare, Timeline, FakeNvml]:
    """Poll a shared-GPU channel over ``seconds`` of virtual time; return it and its points."""
    clock = VirtualClock()
    fake = FakeNvml([gpu], clock=clock)
    mod = fake.module()
    mod.nvmlInit()
    ch = GpuShare(NvmlGpu(mod, gpu, 0, ordinal=0, clock=clock), mod, gpu, ME, run_id=run_id,
                  peers=peers, clock=clock)
    tl = clock.drive(ch, seconds, fast, slow_every)
    return ch, tl, fake


def whole_j(fake: FakeNvml, gpu: FakeGpu, tl: Timeline) -> float:
    """The GPU's energy over the timeline's span, from the fake's own counter at the refreshes
    nearest its ends (the sampler dates them a few ms either side of the true instant)."""
    def at(t: float) -> int:
        return fake.counter_mj(gpu, t + UPDATE_S / 2.0)
    return (at(tl.t[-1]) - at(tl.t[0])) / 1000.0


def gpu(*procs: FakeProcess, **kw: Any) -> FakeGpu:
    return FakeGpu(trace=PowerTrace([], idle_w=WATTS), processes=list(procs), **kw)


def kinds(ch: GpuShare) -> list[str]:
    return [e.kind for e in ch.drain_events()]


def test_a_gpu_used_by_this_process_alone_keeps_the_whole_measurement() -> None:
    g = gpu(FakeProcess(ME, 80))
    ch, tl, fake = replay(g, 4.0)
    assert tl.last == pytest.approx(whole_j(fake, g, tl), rel=1e-9)
    assert ch.info.measured and ch.info.method == "nvml-energy-counter"
    assert kinds(ch) == []
    assert "process_util" not in g.calls and "processes_util" not in g.calls  # not even asked


def test_a_shared_gpu_gives_this_run_its_utilization_share_labelled_an_estimate() -> None:
    g = gpu(FakeProcess(ME, 60), FakeProcess(OTHER, 20))
    ch, tl, fake = replay(g, 4.0)
    assert ch.share == pytest.approx(0.75)
    assert tl.last == pytest.approx(0.75 * whole_j(fake, g, tl), rel=1e-6)
    assert not ch.info.measured and ch.info.method == "nvml-energy-counter" + METHOD_SUFFIX
    assert ch.info.details["shared"]["processes_max"] == 2
    events = ch.drain_events()
    assert [e.kind for e in events] == ["gpu-shared"]
    assert events[0].details == {"processes": 2, "mine": 1, "tracked_others": 0, "untracked": 1,
                                 "share": 0.75, "api": "nvmlDeviceGetProcessesUtilizationInfo"}
    assert events[0].info is ch.info and events[0].level == "warning"
    assert ch.power_w() == pytest.approx(0.75 * g.trace.power(0.0), rel=0.02)


@pytest.mark.parametrize("every_sample", [False, True], ids=["one-per-process", "every-sample"])
def test_the_share_follows_processes_coming_and_going(every_sample: bool) -> None:
    # Whether the driver answers one entry a process (NVML's reference) or every buffered sample,
    # the split is the same. Another process uses the GPU from 2 s to 4 s. Shares hold from one update (every second)
    # to the next and come from the samples since the previous one: at 2 s there are none of the
    # newcomer yet (it counts 0), from 3 s it gets its quarter, at 4 s it is gone.
    g = gpu(FakeProcess(ME, 60), FakeProcess(OTHER, 20, start=2.0, end=4.0),
            util_every_sample=every_sample)
    ch, tl, fake = replay(g, 6.0)
    total = whole_j(fake, g, tl)
    assert tl.last == pytest.approx(total - 0.25 * WATTS * 1.0, rel=0.01)
    assert ch.share == 1.0 and ch.max_processes == 2
    assert tl.at(3.5) - tl.at(3.1) == pytest.approx(0.75 * WATTS * 0.4, rel=0.02)
    assert tl.at(5.5) - tl.at(4.5) == pytest.approx(WATTS * 1.0, rel=0.02)


def test_only_samples_newer_than_the_last_seen_are_counted() -> None:
    """lastSeenTimeStamp is carried from call to call: a process that stopped using the SMs
    stops weighing on the share, although its older samples are still in NVML's buffer."""
    g = gpu(FakeProcess(ME, 50), FakeProcess(OTHER, 50, end=1.5), FakeProcess(OTHER, 0, start=1.5))
    ch, tl, _ = replay(g, 3.0)
    assert ch.share == 1.0  # the other is still listed (a context held) but idle since 1.5 s
    assert ch._last_seen_us > 0


def test_no_samples_at_all_splits_evenly_among_the_listed_processes() -> None:
    # Nobody used the SMs (NVML answers NotFound): each listed process keeps the GPU awake.
    g = gpu(FakeProcess(ME, 0), FakeProcess(OTHER, 0))
    ch, tl, fake = replay(g, 3.0)
    assert ch.share == 0.5
    assert tl.last == pytest.approx(0.5 * whole_j(fake, g, tl), rel=1e-6)
    assert g.calls["processes_util"] >= 3


def test_a_driver_without_the_successor_uses_nvmlDeviceGetProcessUtilization() -> None:
    g = gpu(FakeProcess(ME, 30), FakeProcess(OTHER, 90), util_api="legacy")
    ch, _, _ = replay(g, 3.0)
    assert ch.share == pytest.approx(0.25)
    assert g.calls["process_util"] >= 3 and g.calls["processes_util"] == 1  # asked once only
    assert ch.info.details["shared"]["api"] == "nvmlDeviceGetProcessUtilization"


def test_no_per_process_utilization_keeps_the_whole_gpu_and_says_it_overlaps() -> None:
    g = gpu(FakeProcess(ME, 30), FakeProcess(OTHER, 90), util_api=None)
    ch, tl, fake = replay(g, 3.0)
    assert tl.last == pytest.approx(whole_j(fake, g, tl), rel=1e-9)
    events = ch.drain_events()
    assert [e.kind for e in events] == ["gpu-share-unavailable"]  # once, not every second
    assert "NVML_ERROR_NOT_SUPPORTED" in events[0].message and events[0].level == "warning"
    assert ch.info.measured  # nothing was estimated


# PIDs above the kernel's largest pid_max (2^22): what a container sees of the host's PIDs.
HOST_PIDS = [FakeProcess(2**22 + 12345, 50), FakeProcess(2**22 + 12346, 50)]


@pytest.mark.parametrize("procs, kw, reason", [
    ([], {}, "none"),                                                     # no context yet
    ([FakeProcess(ME, 50), FakeProcess(OTHER, 50)], {"list_processes": False}, "processes"),
    # a driver older than the binding's _v3 process list: NVMLLibraryMismatchError, not NVMLError
    ([FakeProcess(ME, 50), FakeProcess(OTHER, 50)], {"list_processes": "mismatch"}, "processes"),
    (HOST_PIDS[:1], {}, "namespace"),                                     # alone, PIDs hidden
])
def test_whole_gpu_fallbacks_are_noted(procs: list[FakeProcess], kw: dict[str, Any],
                                       reason: str) -> None:
    g = gpu(*procs, **kw)
    ch, tl, fake = replay(g, 2.0)
    assert tl.last == pytest.approx(whole_j(fake, g, tl), rel=1e-9)
    events = ch.drain_events()
    assert [(e.kind, e.details["reason"]) for e in events] == [("gpu-share", reason)]
    assert ch.info.measured


def test_a_shared_gpu_whose_pids_are_hidden_warns_of_the_overlap() -> None:
    """Several processes on the GPU, none of whose PIDs exists here (a container): this run's
    share cannot be told, so it counts the whole GPU, and so may every other container on it.
    That overlap (the GPU counted more than once across runs) is a warning that says so, like the
    other shared-but-unattributable cases, not an info note."""
    g = gpu(*HOST_PIDS)
    ch, tl, fake = replay(g, 2.0)
    assert tl.last == pytest.approx(whole_j(fake, g, tl), rel=1e-9)
    (event,) = ch.drain_events()
    assert (event.level, event.kind, event.details["reason"]) == \
        ("warning", "gpu-share-unavailable", "namespace")
    assert "used by 2 processes" in event.message and "overlaps" in event.message


def test_other_tracked_processes_are_told_from_untracked_ones_by_their_lease(tmp_path: Path) -> None:
    uuid = FakeGpu().uuid
    lease = Lease(tmp_path, {"run_id": "run-b", "pid": OTHER, "gpus": [uuid]})
    try:
        g = gpu(FakeProcess(ME, 50), FakeProcess(OTHER, 50))
        ch, _, _ = replay(g, 2.0, peers=lambda: [rec for _, rec in live_leases(tmp_path)])
        (event,) = ch.drain_events()
        assert event.details["tracked_others"] == 1 and event.details["untracked"] == 0
        assert "1 tracked by other greentrack runs, 0 untracked" in event.message
    finally:
        lease.release()


def test_descendants_are_this_runs_unless_they_track_the_gpu_themselves() -> None:
    """``greentrack run`` measures its child: a real child process using the GPU is this run's.
    A child with its own tracker of this GPU (a lease listing it) counts its own share."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        procs = [FakeProcess(ME, 0), FakeProcess(child.pid, 60), FakeProcess(OTHER, 20)]
        ch, _, _ = replay(gpu(*procs), 2.0)
        assert ch.share == pytest.approx(0.75)
        own = [{"run_id": "run-c", "pid": child.pid, "gpus": [FakeGpu().uuid]}]
        ch, _, _ = replay(gpu(*procs), 2.0, peers=lambda: own)
        assert ch.share == 0.0  # this process used no SM time; the child's is its own run's
    finally:
        child.kill()
        child.wait()


def test_a_process_of_the_same_run_on_this_gpu_is_this_runs(tmp_path: Path) -> None:
    # Another rank of this run opened a context here (it measures its own GPU): its use is this
    # run's. A process of the same run that measures this GPU itself counts its own share.
    peers_other_gpu = [{"run_id": "run-a", "pid": OTHER, "gpus": ["GPU-another"]}]
    ch, _, _ = replay(gpu(FakeProcess(ME, 50), FakeProcess(OTHER, 50)), 2.0,
                      peers=lambda: peers_other_gpu)
    assert ch.share == 1.0 and kinds(ch) == []
    peers_this_gpu = [{"run_id": "run-a", "pid": OTHER, "gpus": [FakeGpu().uuid]}]
    ch, _, _ = replay(gpu(FakeProcess(ME, 50), FakeProcess(OTHER, 50)), 2.0,
                      peers=lambda: peers_this_gpu)
    assert ch.share == 0.5


def test_a_counter_reset_while_shared_is_still_this_runs_share() -> None:
    g = gpu(FakeProcess(ME, 60), FakeProcess(OTHER, 20), reset_at=2.05)
    with pytest.raises(Exception) as e:
        replay(g, 3.0)
    pts = e.value.points  # type: ignore[attr-defined]
    assert pts and pts[-1][1] > pts[0][1]
    span_j = WATTS * (pts[-1][0] - pts[0][0])
    assert pts[-1][1] - pts[0][1] == pytest.approx(0.75 * span_j, rel=0.05)


@pytest.mark.slow
def test_a_tracked_run_on_a_shared_gpu_reports_it(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    """A real Tracker (sampler thread, store, summary): the GPU is shared with an untracked
    process; the summary lists the device as an estimate by its method and says it was shared."""
    fake_nvml.gpus[0].processes = [FakeProcess(ME, 60), FakeProcess(OTHER, 20)]
    tracker = greentrack.Tracker(tmp_path / "run", **FAST)
    with tracker:
        time.sleep(1.2)
    st = next(s for s in tracker.engine.states if s.kind == "gpu")  # type: ignore[union-attr]
    span = st.timeline.t[-1] - st.timeline.t[0]
    assert st.timeline.last == pytest.approx(0.75 * 300.0 * span, rel=0.03)
    s = greentrack.summarize(tmp_path / "run")
    (dev,) = [d for d in s["sources"] if d["kind"] == "gpu"]
    assert dev["estimated"] and "process share" in dev["method"]
    shared = ("is shared: 2 processes use it (1 of this run, 0 tracked by other greentrack runs, "
              "1 untracked)")
    assert any(shared in w for w in s["warnings"])
    from greentrack.reports import report_document
    from greentrack.reports.to_markdown import render
    doc = report_document(tmp_path / "run", Config())
    assert shared in render(doc, {})
    assert "process share (NVML per-process SM utilization)" in render(doc, {})


def test_every_tracker_lease_lists_its_gpus(fake_nvml: FakeNvml, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracker of GPUs only (local rank 1: no host figures) holds a lease naming its GPU, and
    a run measuring the host beside it does not take it for a second run counting the host."""
    monkeypatch.setenv("GREENTRACK_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with greentrack.Tracker(tmp_path / "gpu-only", **FAST):
        assert [(r["pid"], r["host_scope"], r["gpus"]) for r in lease_peers()] == \
            [(ME, False, [fake_nvml.gpus[0].uuid])]
        monkeypatch.setenv("LOCAL_RANK", "0")
        with greentrack.Tracker(tmp_path / "host", **FAST):
            pass
    assert lease_peers() == []
    kinds_seen = {e["kind"] for e in greentrack.summarize(tmp_path / "host")["events"]} \
        if "events" in greentrack.summarize(tmp_path / "host") else set()
    assert "host-shared" not in kinds_seen
    assert not any("another run measures this host" in w
                   for w in greentrack.summarize(tmp_path / "host")["warnings"])


def test_fake_process_utilization_matches_the_real_binding() -> None:
    """The fake returns what nvidia-ml-py's pynvml.py returns: a list of the real ctypes structs,
    and takes ``timeStamp`` as the binding does (``c_ulonglong``: a float is a TypeError)."""
    import pynvml as real

    from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, FakeProcess, VirtualClock

    clock = VirtualClock(100.0)
    gpu = FakeGpu(processes=[FakeProcess(4242, 55)])
    mod = FakeNvml([gpu], clock=clock).module()
    mod.nvmlInit()
    legacy = mod.nvmlDeviceGetProcessUtilization(gpu, 0)
    info = mod.nvmlDeviceGetProcessesUtilizationInfo(gpu, 0)
    assert legacy and all(type(s) is real.c_nvmlProcessUtilizationSample_t for s in legacy)
    assert info and all(type(s) is real.c_nvmlProcessUtilizationInfo_v1_t for s in info)
    assert {f for f, _ in real.c_nvmlProcessUtilizationInfo_v1_t._fields_} >= {
        "timeStamp", "pid", "smUtil", "jpgUtil", "ofaUtil"}
    assert {(s.pid, s.smUtil) for s in info} == {(4242, 55)}
    for fn in (mod.nvmlDeviceGetProcessUtilization, mod.nvmlDeviceGetProcessesUtilizationInfo):
        with pytest.raises(TypeError):
            fn(gpu, 1.5)
        with pytest.raises(real.NVMLError_NotFound):  # nothing newer than the newest sample
            fn(gpu, max(int(s.timeStamp) for s in legacy))


def test_a_lost_shared_gpus_start_up_reads_come_at_its_share() -> None:
    """The engine takes what a lost GPU had not dated yet (``salvage``) from the channel it
    polls: through the share wrapper, at the run's share, never the whole GPU's joules."""
    from greentrack.samplers._share import ScaledChannel

    class Inner:
        def salvage(self) -> list[tuple[float, float]]:
            return [(1.0, 0.0), (1.1, 30.0), (1.2, 60.0)]

    ch = ScaledChannel(Inner(), share=0.25)  # type: ignore[arg-type]
    assert ch.salvage() == [(1.0, 0.0), (1.1, 7.5), (1.2, 15.0)]
    assert ScaledChannel(object(), share=0.5).salvage() == []  # type: ignore[arg-type]
