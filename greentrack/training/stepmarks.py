"""Step marks on the timeline where the work happens, resolved without synchronization.

On a GPU the host runs ahead: when Python reaches the end of step ``n`` the GPU may still be in step
``n - 2``. A step's energy is the device energy between the moments the *GPU* started and finished
its work, so :class:`StepMarks` records a CUDA event on the current stream at each step boundary and
turns the pair into a window on the host monotonic clock (the sampler's clock) once the GPU has passed
it. Nothing waits: each boundary costs two ``cudaEventRecord``-class calls and one
``cudaEventQuery`` on the oldest pending step; never ``synchronize()``.

Mapping GPU time to the host clock: events give GPU time relative to a base event (``elapsed_time``,
in ms, once both are complete). The host time at which the base event executed, ``G0``, is unknown,
but every event ``i`` recorded right after a host timestamp ``h_i`` executed no earlier than ``h_i``,
so ``G0 >= h_i - d_i`` (``d_i`` the event's GPU time after the base). ``G0`` is the largest such bound:
exact to the launch latency (microseconds) whenever the stream was idle at a mark (the first mark,
any ``.item()``, a data-loader wait, a validation pass), and never later than the truth. To follow a
drift between the GPU timer and the host clock, a bound ages by :data:`DRIFT_PPM`: the estimate stays
a lower bound, with an error of at most the host's lead at the last idle moment. Steps therefore
arrive at the tracker a little late, with their true GPU windows.

On CPU-only runs (or when ``device`` is not CUDA) marks are host timestamps, submitted at once.

Example:
    >>> marks = StepMarks(tracker, device="cuda")          # doctest: +SKIP
    >>> marks.begin("train"); train_step(); marks.end(samples=32)
    >>> marks.drain()                                       # at the end of training
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any

#: Assumed bound of the drift between the GPU event timer and CLOCK_MONOTONIC, in parts per million.
DRIFT_PPM = 20.0
#: Rebase GPU times on a newer event past this many seconds (``elapsed_time`` is a float32 of ms).
REBASE_AFTER_S = 300.0
#: Events kept for reuse (creating one costs a driver call).
POOL_SIZE = 64


class StepMarks:
    """Marks step boundaries and submits each finished step to a tracker as a window.

    Args:
        tracker: a started :class:`greentrack.Tracker` (anything with ``submit_window``).
        device: ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` to mark on that device's current
            stream; ``None`` or a CPU device for host marks.
        clock: the host clock (``time.monotonic``; injectable for tests).
        cuda: the ``torch.cuda`` module (injectable for tests without a GPU).
    """

    def __init__(self, tracker: Any, device: Any = None, clock: Any = time.monotonic,
                 cuda: Any = None) -> None:
        self.tracker = tracker
        self._clock = clock
        #: where a finished step goes: ``submit_step(phase, t0, t1, info, timeline)`` (the fields
        #: in one dict, no keyword packing per layer), else ``submit_window``
        self._submit = submitter(tracker)
        self._open: tuple[str, float, Any] | None = None
        #: phase of the open step, or None (an attribute, not a property: the hooks read it at
        #: every step)
        self.open_phase: str | None = None
        self._pending: deque[tuple[str, float, Any, float, Any, dict[str, Any]]] = deque()
        engine = self._engine = getattr(tracker, "engine", None)
        if engine is not None:  # keep the readings of a step as long as it is open or pending
            engine.holds.append(self._earliest)
        self._cuda: Any = None
        self._device: Any = None
        if device is not None and "cuda" in str(getattr(device, "type", device)):
            if cuda is None:
                import torch
                cuda = torch.cuda
                device = torch.device(device)
                if device.index is None:
                    device = torch.device("cuda", cuda.current_device())
            self._cuda, self._device = cuda, device
            self._pool: list[Any] = []
            self._base = self._event()
            h = clock()
            self._base.record(cuda.current_stream(device))
            self._g0 = h  # host time at which the base ran: refined by every later mark
            self._g0_d = 0.0  # GPU time (s after base) of the mark that gave the bound

    def _earliest(self) -> float | None:
        opened, pending = self._open, self._pending
        starts = [opened[1]] if opened is not None else []
        if pending:
            starts.append(pending[0][1])
        return min(starts) if starts else None

    @property
    def on_gpu(self) -> bool:
        return self._cuda is not None

    @property
    def is_open(self) -> bool:
        return self._open is not None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def route(self, submit: Any) -> None:
        """Send finished steps to ``submit(phase, t0, t1, info, timeline)`` from now on (the
        meter skips its own layer while it has no MFU to add)."""
        self._submit = submit

    # -- the hot path -------------------------------------------------------------------------
    def begin(self, phase: str = "train") -> None:
        """Open a step of ``phase`` (an open one is replaced)."""
        self.open_phase = phase
        if self._engine is not None and self._engine.idle:
            self._engine.wake_from_idle()
        if self._cuda is None:
            self._open = (phase, self._clock(), None)
            return
        ev = self._event()
        h = self._clock()
        ev.record(self._cuda.current_stream(self._device))
        self._open = (phase, h, ev)

    def end(self, **info: Any) -> None:
        """Close the open step; ``info`` (``flops``, ``samples``, ``tokens``, extras) goes with it."""
        self.close(info)

    def close(self, info: dict[str, Any], then: str | None = None) -> None:
        """:meth:`end` with the fields in one dict, which this call owns (the meter's hot path).
        ``then``: open a step of that phase where this one ends (one clock read: back-to-back
        steps are contiguous, whatever the scheduler does between two reads)."""
        opened = self._open
        if opened is None:
            if then is not None:
                self.begin(then)
            return
        phase, h0, ev0 = opened
        if self._cuda is None:
            h1 = self._clock()
            if then is None:
                self._open = self.open_phase = None
            else:
                self._open = (then, h1, None)
                self.open_phase = then
            self._submit(phase, h0, h1, info, "host")
            return
        self._open = self.open_phase = None
        ev1 = self._event()
        h1 = self._clock()
        ev1.record(self._cuda.current_stream(self._device))
        self._pending.append((phase, h0, ev0, h1, ev1, info))
        self.poll()
        if then is not None:
            self.begin(then)

    def cancel(self) -> None:
        """Drop the open step (e.g. the window opened after the last batch of a loop)."""
        opened, self._open = self._open, None
        self.open_phase = None
        if opened is not None and opened[2] is not None:
            self._recycle(opened[2])

    def poll(self) -> int:
        """Submit every pending step the GPU has finished; returns how many. Never blocks."""
        done = 0
        while self._pending and self._pending[0][4].query():
            phase, h0, ev0, h1, ev1, info = self._pending.popleft()
            d0 = self._base.elapsed_time(ev0) / 1000.0
            d1 = self._base.elapsed_time(ev1) / 1000.0
            self._bound(h0, d0)
            self._bound(h1, d1)
            self._submit(phase, self._g0 + d0, self._g0 + d1, info, "gpu")
            self._recycle(ev0)
            if d1 > REBASE_AFTER_S and not self._pending:
                self._rebase(ev1, d1)
            else:
                self._recycle(ev1)
            done += 1
        return done

    # -- end of a loop ----------------------------------------------------------------------------
    def drain(self, timeout_s: float = 10.0) -> int:
        """Submit what is pending, waiting (by polling, not by synchronizing) up to ``timeout_s``
        for the GPU to finish it. For the end of training, off the step loop. Returns how many
        steps were left unresolved (dropped)."""
        self.cancel()
        deadline = time.monotonic() + timeout_s
        while self._pending:
            self.poll()
            if not self._pending or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        left = len(self._pending)
        self._pending.clear()
        return left

    def release(self) -> None:
        """No more steps from these marks (after :meth:`drain`): their hold leaves the engine,
        which would otherwise call it at every poll for the rest of the tracker's life, one more
        for each training run on that tracker."""
        holds = getattr(self._engine, "holds", None)
        if isinstance(holds, list):
            with contextlib.suppress(ValueError):  # not there (released already)
                holds.remove(self._earliest)

    # -- GPU clock mapping ------------------------------------------------------------------------
    def _bound(self, h: float, d: float) -> None:
        # Age the current bound by the allowed drift, then keep the larger (tighter) of the two.
        aged = self._g0 - abs(d - self._g0_d) * DRIFT_PPM * 1e-6
        if h - d >= aged:
            self._g0, self._g0_d = h - d, d
        else:
            self._g0, self._g0_d = aged, d

    def _rebase(self, ev: Any, d: float) -> None:
        old, self._base = self._base, ev
        self._g0 += d
        self._g0_d -= d
        self._recycle(old)

    def _event(self) -> Any:
        if self._pool:
            return self._pool.pop()
        return self._cuda.Event(enable_timing=True)

    def _recycle(self, ev: Any) -> None:
        if len(self._pool) < POOL_SIZE:
            self._pool.append(ev)


def submitter(tracker: Any) -> Any:
    """``tracker.submit_step``, or the same over its ``submit_window`` (a test's recorder)."""
    found = getattr(tracker, "submit_step", None)
    if found is not None:
        return found

    def submit(phase: str, t0: float, t1: float, info: dict[str, Any], timeline: str) -> None:
        tracker.submit_window(phase, t0, t1, timeline=timeline, **info)
    return submit


__all__ = ["StepMarks", "DRIFT_PPM", "submitter"]
