"""Step marks on the GPU timeline, mapped to the host clock without synchronization.

Without a GPU, :class:`FakeStream` stands in for a CUDA stream as the host sees one: work runs in
queue order, never before it is queued (plus a launch latency), events complete when the GPU reaches
them, ``elapsed_time`` refuses incomplete events, and ``synchronize`` fails the test. The GPU tests at
the end run the real thing on an NVIDIA GPU and skip with the reason elsewhere.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from greentrack.training.stepmarks import DRIFT_PPM, REBASE_AFTER_S, StepMarks
from tests.helpers import FAST, REPO


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeEvent:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.at: float | None = None  # true host time at which the GPU reaches it

    def record(self, stream: FakeStream) -> None:
        self.at = stream.enqueue(0.0)

    def query(self) -> bool:
        self.stream.queries += 1
        return self.at is not None and self.at <= self.stream.clock.t

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.query() and end.query()):
            raise RuntimeError("cudaErrorNotReady")  # as CUDA: both must be complete
        assert self.at is not None and end.at is not None
        return (self.stream.gpu_timer(end.at) - self.stream.gpu_timer(self.at)) * 1000.0

    def synchronize(self) -> None:
        raise AssertionError("StepMarks must never synchronize")


class FakeStream:
    """One CUDA stream; the GPU timer runs ``skew_ppm`` fast against the host clock."""

    def __init__(self, clock: Clock, latency_s: float = 5e-6, skew_ppm: float = 0.0) -> None:
        self.clock, self.latency_s, self.skew = clock, latency_s, skew_ppm * 1e-6
        self.free_at = clock.t
        self.queries = 0

    # the torch.cuda surface StepMarks uses
    def Event(self, enable_timing: bool = True) -> FakeEvent:  # noqa: N802 - torch's name
        assert enable_timing
        return FakeEvent(self)

    def current_stream(self, device: Any = None) -> FakeStream:
        return self

    def synchronize(self) -> None:
        raise AssertionError("StepMarks must never synchronize")

    # the simulated GPU
    def enqueue(self, seconds: float) -> float:
        start = max(self.free_at, self.clock.t + self.latency_s)
        self.free_at = start + seconds
        return self.free_at

    def gpu_timer(self, host_t: float) -> float:
        return 777.0 + host_t * (1.0 + self.skew)


class Recorder:
    def __init__(self) -> None:
        self.windows: list[tuple[str, float, float, dict[str, Any]]] = []

    def submit_window(self, phase: str, t0: float, t1: float, **info: Any) -> None:
        self.windows.append((phase, t0, t1, info))


def run_steps(marks: StepMarks, clock: Clock, stream: FakeStream, works: list[float],
              host_s: float = 0.002, max_ahead_s: float | None = 0.5,
              idle_every: int | None = None) -> list[tuple[float, float]]:
    """Host loop: each step queues ``work`` GPU seconds in ``host_s`` of host time; the host
    blocks (a full launch queue) when it is ``max_ahead_s`` ahead. Returns the true GPU windows."""
    truth = []
    for i, work in enumerate(works):
        marks.begin("train")
        t0 = max(stream.free_at, clock.t + stream.latency_s)
        stream.enqueue(work)
        truth.append((t0, stream.free_at))
        clock.t += host_s
        marks.end(samples=1)
        if max_ahead_s is not None and stream.free_at - clock.t > max_ahead_s:
            clock.t = stream.free_at - max_ahead_s
        if idle_every and i % idle_every == idle_every - 1:
            clock.t = stream.free_at + 0.01  # e.g. a .item() or a data-loader wait
    clock.t = stream.free_at + 1.0
    marks.poll()
    return truth


def test_host_marks_are_submitted_at_once() -> None:
    clock, rec = Clock(), Recorder()
    marks = StepMarks(rec, device=None, clock=clock)
    marks.begin("validation")
    clock.t += 0.25
    marks.end(samples=4)
    assert rec.windows == [("validation", 1000.0, 1000.25, {"timeline": "host", "samples": 4})]
    marks.end()  # nothing open: ignored
    assert len(rec.windows) == 1 and not marks.on_gpu


def test_gpu_windows_are_the_gpu_times_not_the_host_calls() -> None:
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock)
    marks = StepMarks(rec, device="cuda:0", clock=clock, cuda=stream)
    rng = random.Random(0)
    truth = run_steps(marks, clock, stream, [rng.choice([0.1, 0.3]) for _ in range(40)])
    assert len(rec.windows) == 40 and marks.pending == 0
    for (phase, t0, t1, info), (g0, g1) in zip(rec.windows, truth):
        assert phase == "train" and info["timeline"] == "gpu" and info["samples"] == 1
        # exact to the launch latency plus the drift allowance since the last idle moment (the
        # start here), and never later than the truth
        slack = 1e-5 + DRIFT_PPM * 1e-6 * (g1 - 1000.0)
        assert g0 - slack <= t0 <= g0 + 1e-9 and g1 - slack <= t1 <= g1 + 1e-9
    # the host ran ~0.5 s ahead: host-side call times would have been far off
    assert max(abs(w[1] - g[0]) for w, g in zip(rec.windows, truth)) < 5e-4


def test_steps_are_resolved_late_and_never_waited_for() -> None:
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock)
    marks = StepMarks(rec, device="cuda", clock=clock, cuda=stream)
    for _ in range(5):
        marks.begin()
        stream.enqueue(1.0)
        marks.end()
    assert rec.windows == [] and marks.pending == 5  # the GPU is 5 s behind: nothing waits
    queries = stream.queries
    assert marks.poll() == 0 and stream.queries == queries + 1  # one query on the oldest only
    clock.t += 2.5
    assert marks.poll() == 2 and marks.pending == 3
    clock.t += 10.0
    assert marks.drain(timeout_s=0.1) == 0 and len(rec.windows) == 5


def test_drain_gives_up_after_its_timeout() -> None:
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock)
    marks = StepMarks(rec, device="cuda", clock=clock, cuda=stream)
    marks.begin()
    stream.enqueue(100.0)  # a hung kernel: the host clock never gets there
    marks.end()
    marks.begin()  # open, never ended
    t = time.monotonic()
    assert marks.drain(timeout_s=0.05) == 1
    assert time.monotonic() - t < 1.0 and not marks.is_open and marks.pending == 0


@pytest.mark.parametrize("skew_ppm", [-10.0, 10.0])
def test_clock_drift_within_the_bound_is_followed(skew_ppm: float) -> None:
    """Over ~25 simulated minutes with an idle moment every 20 steps, the mapping error stays
    within the drift allowance over the gap between idle moments, and REBASE keeps float32
    ms precision (``elapsed_time`` values stay small)."""
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock, skew_ppm=skew_ppm)
    marks = StepMarks(rec, device="cuda", clock=clock, cuda=stream)
    truth = run_steps(marks, clock, stream, [0.2] * 7500, idle_every=20)
    assert clock.t - 1000.0 > 2 * REBASE_AFTER_S
    gap_s = 20 * 0.2 + 0.5
    errors = [w[1] - g[0] for w, g in zip(rec.windows, truth)]
    assert max(abs(e) for e in errors) <= 2 * DRIFT_PPM * 1e-6 * gap_s + 5e-5
    assert max(errors) <= 1e-6 + abs(skew_ppm) * 1e-6 * gap_s  # a lower bound, up to the skew


def test_without_idle_moments_the_first_mark_anchors_the_clock() -> None:
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock)
    marks = StepMarks(rec, device="cuda", clock=clock, cuda=stream)
    truth = run_steps(marks, clock, stream, [0.15] * 200, max_ahead_s=1.0)
    errors = [abs(w[1] - g[0]) for w, g in zip(rec.windows, truth)]
    assert max(errors) < 1e-3  # ~30 s of ageing at DRIFT_PPM, not the host's 1 s lead


def test_cancel_drops_the_open_step() -> None:
    clock, rec = Clock(), Recorder()
    stream = FakeStream(clock)
    marks = StepMarks(rec, device="cuda", clock=clock, cuda=stream)
    marks.begin("validation")
    marks.cancel()
    assert marks.open_phase is None
    marks.end()
    clock.t += 1
    assert marks.poll() == 0 and rec.windows == []


# -- real GPU ----------------------------------------------------------------------------------

def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU here (torch {torch.__version__})"
    try:
        import pynvml
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001
        return f"NVML unusable here ({type(e).__name__}: {e})"
    return None


CUDA_REASON = _cuda_reason()


def _kinds(step_s: float = 0.2) -> tuple[Any, Any]:
    """A heavy and a light ~step_s GPU step (bench/_workloads.py, shared with the quick checks)."""
    sys.path.insert(0, str(REPO / "bench"))
    from _workloads import gpu_kinds
    return gpu_kinds(step_s)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or "")
def test_gpu_mixed_steps_match_each_kind_alone(tmp_path: Path) -> None:
    """Heavy and light steps (~200 ms each) interleaved at random: the mean joules greentrack
    attributes to each kind is within 5% of that kind measured alone."""
    import greentrack
    from greentrack.store import StoreReader, store_paths
    from greentrack.training.meter import TrainingMeter

    heavy, light = _kinds()
    fns = {"heavy": heavy, "light": light}

    def run(name: str, kinds: list[str]) -> dict[str, float]:
        run_dir = tmp_path / name
        tracker = greentrack.Tracker(run_dir, interval_s=0.01, counter_interval_s=0.1,
                                     host_energy=False).start()
        meter = TrainingMeter(tracker, device="cuda", progress_every_s=None)
        for kind in kinds:
            meter.begin("train")
            fns[kind]()
            meter.end(kind=kind)
        meter.close()
        rows = StoreReader(store_paths(run_dir)[0]).steps()
        assert len(rows) == len(kinds) and all(r["timeline"] == "gpu" for r in rows)
        out: dict[str, list[float]] = {}
        for r in rows[2:]:  # the first steps ramp the clocks up
            out.setdefault(json.loads(r["extra"])["kind"], []).append(r["gpu_j"])
        return {k: sum(v) / len(v) for k, v in out.items()}

    alone = {**run("heavy", ["heavy"] * 14), **run("light", ["light"] * 14)}
    rng = random.Random(1)
    mixed = run("mixed", [rng.choice(["heavy", "light"]) for _ in range(40)])
    assert alone["heavy"] > 1.5 * alone["light"], alone  # the kinds differ, or the test is moot
    for kind in ("heavy", "light"):
        assert mixed[kind] == pytest.approx(alone[kind], rel=0.05), (kind, mixed, alone)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=CUDA_REASON or "")
def test_gpu_tracking_adds_no_synchronization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted two ways: Python-level sync calls (patched), and CUDA runtime sync calls seen by
    the profiler, tracked against untracked."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import greentrack
    from greentrack.training.meter import TrainingMeter

    heavy, _ = _kinds(step_s=0.02)
    calls: list[str] = []
    for owner, name in ((torch.cuda, "synchronize"), (torch.cuda.Event, "synchronize"),
                        (torch.cuda.Event, "wait"), (torch.cuda.Stream, "synchronize"),
                        (torch.Tensor, "item"), (torch.Tensor, "cpu")):
        original = getattr(owner, name)

        def counting(*a: Any, _o: Any = original, _n: str = name, **k: Any) -> Any:
            calls.append(_n)
            return _o(*a, **k)
        monkeypatch.setattr(owner, name, counting)

    def loop(meter: Any) -> None:
        for i in range(30):
            if meter:
                meter.begin("train")
            heavy()
            if meter:
                meter.end(samples=8)
                if i % 10 == 9:
                    meter.metrics()

    def sync_calls(prof: Any) -> int:
        names = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")
        return sum(1 for e in prof.events() if e.name in names)

    tracker = greentrack.Tracker(tmp_path / "run", **FAST).start()
    meter = TrainingMeter(tracker, device="cuda", flops=1e12, dtype="bf16-mixed",
                          progress_every_s=None)
    loop(None)  # warm-up
    torch.cuda.current_stream().synchronize()
    calls.clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as untracked:
        loop(None)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tracked:
        loop(meter)
    assert calls == [], calls  # nothing in greentrack called a sync
    assert sync_calls(tracked) == sync_calls(untracked)
    meter.close()
    assert greentrack.summarize(tmp_path / "run")["steps"] == 30
