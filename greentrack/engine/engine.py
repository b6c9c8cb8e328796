"""The sampling engine: one background thread per tracker, on the monotonic clock.

It polls every channel on a fast cadence (``interval_s``) and a slow one (``counter_interval_s``),
keeps each channel's finalized ``(t, joules)`` points in a bounded timeline, cuts them into stored
buckets of ``resolution_s``, resolves step windows into joules once every live channel has final
points past the window's end, and commits to the store every ``flush_interval_s``.

Slow reads (the NVML energy counter: ~3 ms each on an H100) are staggered: each channel has its
own phase of the slow cadence, so eight GPUs cost two counter reads per fast poll rather than
eight in one. Their CPU time is measured as they happen; if together they would take more than
:data:`SLOW_READ_CPU_BUDGET` of a core, the slow cadence stretches (to
:data:`MAX_COUNTER_INTERVAL_S` at most) and an event says so. Totals stay exact (the counter
still bounds every interval); windows lean more on the instant-power shape.

The training thread only ever appends a finished step window to a deque (no lock, no I/O). Nothing
here raises into it: a failed read becomes a recorded gap, a failed commit a warning and a retry.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

from greentrack.common.config import Config
from greentrack.common.errors import DeviceLost, RunStoreError, SamplerError
from greentrack.common.once import warn_once
from greentrack.engine.channelstate import ChannelSnapshot, ChannelState, channel_key
from greentrack.engine.records import MetricQueue
from greentrack.engine.steps import FieldCleaner, PhaseTally, StepQueue, StepSpan
from greentrack.engine.stepvalues import phase_name
from greentrack.samplers.base import Channel, EventSource
from greentrack.store import StoreWriter
from greentrack.store.layout import StepRow

__all__ = ["Engine", "StepSpan", "channel_key"]

log = logging.getLogger("greentrack")

#: CPU the slow reads of all channels together may take, as a fraction of one core.
SLOW_READ_CPU_BUDGET = 0.005
#: The slow cadence never stretches beyond this (``bench/sampling_defaults.py``: at 1 s, 500 ms
#: windows stay within 2.5% and 120-400 ms steps within 4.7%; totals are exact at any interval).
MAX_COUNTER_INTERVAL_S = 1.0
#: After a change, the slow cadence holds for this long (no flapping on a noisy cost), and only
#: the first few changes are events (the rest are counted in the store's meta): bounded either way.
CADENCE_HOLD_S = 10.0
CADENCE_EVENTS = 10
#: Readings kept behind the oldest bucket or open step, for windows submitted after the fact
#: (``Tracker.submit_window`` with an earlier ``t0``): ~1,200 points a channel at 50 ms, ~80 kB.
RETAIN_S = 60.0
#: How often committed data moves from the -wal file into the store itself (PASSIVE: never blocks).
CHECKPOINT_S = 10.0
#: At stop, how long the sampler thread may still be attributing a backlog before it is abandoned;
#: a thread inside a device read is abandoned after ``stop(timeout)`` alone.
BACKLOG_GRACE_S = 10.0
#: How long the final reading waits for counter reads left over (a refresh could have fallen
#: inside them) to be taken again (s).
FINAL_WAIT_S = 0.1
#: At stop, how long to wait for CUDA values of the last steps to reach the host.
DEVICE_VALUE_WAIT_S = 2.0
#: The fast cadence runs for this long after the start, and while steps are open or ended within
#: this long and are shorter than :data:`LONG_STEP_S`; otherwise the thread wakes on the slow
#: cadence only (an idle process, a command tracked without steps, long steps): counters keep
#: totals exact at any cadence, and estimates only change on the slow tick
#: (``bench/sampler_cost.py`` has the CPU this saves).
FAST_HOLD_S = 2.0
LONG_STEP_S = 2.0
#: With no step open and none ended for IDLE_AFTER_S (none since the start counts as one ending
#: then), slow reads come every IDLE_COUNTER_INTERVAL_S at least (the slowest cadence the read
#: budget stretches to): nothing is being attributed, the counters keep the totals exact at any
#: cadence, and 8 GPUs' counter reads every 0.2 s cost 0.8% of a core (0.38% at 1 s:
#: bench/sampler_cost.py). The price: a step that begins after such a gap has its start between
#: counter reads up to that far apart until the next poll brings the configured cadence back (its
#: joules stay exact in total; their split at its start is interpolated on instant power).
IDLE_AFTER_S = 5.0
IDLE_COUNTER_INTERVAL_S = MAX_COUNTER_INTERVAL_S
#: A poll may come this much of its period later, for its slow reads to start clear of a refresh.
CLEAR_SHIFT = 0.25


class Engine:
    """Runs the sampler thread and owns all accounting. See the module docstring."""

    def __init__(self, channels: list[Channel], writer: StoreWriter, config: Config,
                 origin: float, clock: Callable[[], float] = time.monotonic,
                 origin_unix: float | None = None, run_key: str | None = None) -> None:
        self.config = config
        #: The run its log messages belong to (:func:`greentrack.common.once.run_key`): each cause
        #: is logged once per run, however often it happens (every occurrence is an event).
        self.run_key = run_key if run_key is not None else f"engine-{id(self)}"
        self.origin = origin
        #: the wall time of ``origin`` (the store's ``started_unix``): one anchor for every output
        self.origin_unix = time.time() - (time.monotonic() - origin) if origin_unix is None \
            else origin_unix
        self._clock = clock
        self._writer = writer
        self.states = [ChannelState(i + 1, ch, origin) for i, ch in enumerate(channels)]
        for st in self.states:
            writer.add_channel(st.id, st.channel.info.as_dict())
        #: Channels that report events of their own (a GPU that became shared), by state id.
        self._event_sources = {st.id: st.channel for st in self.states
                               if isinstance(st.channel, EventSource)}
        #: Finished steps from the training threads; ``submit`` is the hot path of every step.
        self.steps = StepQueue()
        self.submit = self.steps.submit
        self._waiting: list[StepSpan] = []
        self.cleaner = FieldCleaner(self.event, self.run_key)
        #: One thread attributes at a time: the sampler, or stop() once it gave up on the sampler.
        self._account_lock = threading.Lock()
        #: When the sampler thread entered a device read (None outside one): stop() abandons a
        #: thread stuck in a read, but waits for one that is only attributing a backlog.
        self._in_read_since: float | None = None
        #: Called on the sampler thread at every poll with the time (cheap checks: other runs on
        #: this machine, trackers joining this run); must not raise (guarded anyway).
        self.watchers: list[Callable[[float], None]] = []
        #: Each returns the start (monotonic) of the earliest step still open or not yet submitted
        #: by its owner (the tracker, step marks), or None: readings from there on are kept, so a
        #: long step gets all its energy, not the last second of it.
        self.holds: list[Callable[[], float | None]] = []
        #: Called on the sampler thread with each resolved step row; must be quick and not raise.
        self.step_listeners: list[Callable[[StepRow], None]] = []
        #: Per-phase sums of the resolved steps: what every live output reads.
        self.tally = PhaseTally()
        #: ``Tracker.record`` values (greentrack.engine.records); the training thread appends to
        #: ``metrics``, resolved here once readings pass their time.
        self.records = MetricQueue(self.event, writer.add_metric)
        self.metrics = self.records.queue
        self._stop = threading.Event()
        #: set by stop(), and by a step that begins while the thread reads at the idle cadence
        self._wake = threading.Event()
        #: the sampler thread reads at the idle cadence (slow_period): a step's start then wakes
        #: it (wake_from_idle), so the step starts at a reading, not up to that period after one
        #: (the first step after 10 s idle: 35% off at a 1 s period, 15% at 0.2 s, without it).
        #: A plain attribute: the training thread reads it at each step's start.
        self.idle = False
        self._woken = False
        self._thread: threading.Thread | None = None
        self._flush_failures = 0
        self.thread_cpu_s = 0.0
        self.polls = 0
        self.last_sample_t: float | None = None
        self.errors = 0
        self.listener_errors = 0  # calls of step listeners that raised (see _listener_failed)
        self._failed_listeners: list[Callable[[StepRow], None]] = []
        self._abandoned = False
        self._rng = random.Random(0x9E3779B9)
        #: The slow cadence in force: ``config.counter_interval_s`` unless slow reads cost too much.
        self.counter_interval_s = config.counter_interval_s
        self.counter_interval_max_s = config.counter_interval_s
        self.cadence_changes = 0
        self._cadence_changed_at = float("-inf")
        self._next_account = self._next_flush = origin
        self._next_checkpoint = origin + CHECKPOINT_S
        #: Channels whose fast polls read something (estimates change on the slow tick only), and
        #: whether one integrates instant power (no counter): its totals need the fast cadence.
        self._fast_reads = any(getattr(st.channel, "fast_reads", True) for st in self.states)
        #: channels that ask for extra polls of their own (``wake_at``, served until ``wake_by``)
        #: and that say when a slow read may start (``clear_from``): samplers/_nvml.py
        self._wakers = [(st, fn, getattr(st.channel, "wake_by", fn)) for st in self.states
                        if callable(fn := getattr(st.channel, "wake_at", None))]
        self._clearers = [(st, fn) for st in self.states
                          if callable(fn := getattr(st.channel, "clear_from", None))]
        #: channels told which cadence is in force (``pace``: how narrow NVML keeps its phase)
        self._pacers = [fn for st in self.states
                        if callable(fn := getattr(st.channel, "pace", None))]
        self._totals_need_fast = any(st.channel.info.method.endswith("-power-integration")
                                     for st in self.states)
        #: The end (monotonic) of the latest step seen and the recent steps' typical length. From
        #: the start, as if a step had just ended: training usually begins right after start(),
        #: and its first steps (and a checkpoint's energy so far) get the fast readings at once.
        self._last_step_t1 = origin
        self._step_s = 0.0
        self.fast_polls = 0

    # -- called from the training thread (cheap) ------------------------------------------
    def event(self, level: str, kind: str, message: str, **details: Any) -> None:
        """Record an event (thread-safe; committed at the next flush)."""
        self._writer.add_event(self._clock() - self.origin, level, kind, message, None, details)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        t = self._clock()
        self._poll_all(t, force_slow=True)
        # The store exists (and its clock runs) a little before the first reading: the window
        # this process measured is [first_reading_t, last_reading_t], in the store's seconds.
        self._writer.set_meta({"first_reading_t": t - self.origin})
        self._flush()
        self._thread = threading.Thread(target=self._run, name="greentrack-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread, which takes a last reading and attributes what is left; commit.

        The last reading happens on the sampler thread, never the caller's: a device read that
        hangs then costs the caller ``timeout`` seconds at most, not its exit. Returns False if the
        thread did not finish in time; it is then abandoned (a daemon: it cannot keep the process
        alive, and it touches nothing once it wakes up), and what was recorded is committed.
        """
        self._stop.set()
        self._wake.set()
        joined = True
        if self._thread is not None:
            self._thread.join(timeout + self._settle_s())
            # Still attributing a backlog (not inside a device read): that work ends, wait for it.
            deadline = time.monotonic() + BACKLOG_GRACE_S
            while self._thread.is_alive() and self._in_read_since is None \
                    and time.monotonic() < deadline:
                self._thread.join(0.05)
            joined = not self._thread.is_alive()
        if not joined:
            self._abandoned = True
            if self._in_read_since is not None:
                self.event("warning", "sampler-hung", f"sampler thread did not stop within "
                           f"{timeout:g} s (a device read hung); readings after its last poll "
                           "are missing")
            else:
                self.event("warning", "sampler-slow", "sampler thread was still attributing a "
                           f"backlog of steps {BACKLOG_GRACE_S:g} s after stop; the rest are "
                           "attributed at stop")
            self._guard(lambda: self._account(final=True))
        elif self._thread is None:
            self._final_reading()
        if not self._abandoned:
            self._guard(self._record_dating)
        for st in self.states:
            if st.status != "ok" and st.fail_since is not None:
                st.gap_s += max(0.0, self._clock() - st.fail_since)
                st.fail_since = None
            try:
                st.channel.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
        self._writer.set_meta({"last_reading_t": self._clock() - self.origin})
        self._flush()
        return joined

    def _record_dating(self) -> None:
        """Each counter channel's widest dating error and left-over reads, in its details
        (``dating_error_ms``: how far any counter value may be from the refresh it describes;
        energy can move that far between neighbouring steps, never out of the total)."""
        for st in self.states:
            error = getattr(st.channel, "max_dating_error_s", None)
            if not isinstance(error, float):
                continue
            info = st.channel.info.as_dict()
            info["details"] = {**info["details"], "dating_error_ms": round(error * 1000.0, 2),
                               "deferred_reads": int(getattr(st.channel, "deferred_reads", 0))}
            self._writer.update_channel_info(st.id, info)

    def _settle_s(self) -> float:
        return max((getattr(st.channel, "settle_s", 0.0) for st in self.states
                    if st.status == "ok"), default=0.0)

    def _final_reading(self) -> None:
        # Counters only know the energy up to their last refresh (NVML: every 100 ms): wait for
        # one more refresh so the last step is covered. Training is over by now.
        settle = self._settle_s()
        for st in self.states:  # a channel with reads pending dates them now (samplers/_nvml.py)
            finishing = getattr(st.channel, "finishing", None)
            if finishing is not None:
                self._guard(finishing)
        if settle:
            time.sleep(settle / 2)
            self._guard(lambda: self._poll_all(self._clock()))
            time.sleep(settle / 2)
        self._guard(lambda: self._poll_all(self._clock(), force_slow=True))
        # A counter read a refresh could have fallen inside is taken again when the channel asks
        # (its window has passed: a few ms), for FINAL_WAIT_S at most.
        deadline = self._clock() + FINAL_WAIT_S
        while not self._abandoned and any(st.status == "ok" and getattr(st.channel, "read_pending",
                                                                         False) for st in self.states):
            wake = self._next_wake()
            if wake > deadline:
                break
            time.sleep(max(0.0, wake - self._clock()))
            self._guard(lambda: self._poll_woken(self._clock()))
        if not self._abandoned:
            self._guard(lambda: self._account(final=True))

    def hand_over(self, keys: set[str], t: float) -> list[str]:
        """Stop counting the devices ``keys`` from ``t``: a joined tracker measures them now.
        Returns the keys of this engine's channels that matched."""
        return [st.key for st in self.states if st.key in keys and st.start_hand_over(t)]

    def take_back(self, keys: set[str], t: float,
                  measured: dict[str, tuple[float, float]] | None = None) -> None:
        """Count the devices ``keys`` again from ``t`` (the joined tracker stopped).
        ``measured``: by key, the span the other tracker measured (its first and last points, on
        this host's monotonic clock): energy left out outside it is counted here after all."""
        for st in self.states:
            if st.key in keys:
                st.end_hand_over(t, (measured or {}).get(st.key))

    def schedule(self, now: float) -> None:
        """Set the cadences running from ``now``: slow reads staggered over the slow period."""
        cfg = self.config
        for k, st in enumerate(self.states):
            st.next_slow = now + cfg.counter_interval_s * (1.0 + k / len(self.states))
        self._next_account = now + cfg.counter_interval_s
        self._next_flush = now + cfg.flush_interval_s

    def iterate(self, now: float, measure: bool = True) -> None:
        """One iteration of the sampler thread at ``now``: poll, attribute, commit when due.
        (``bench/_common.VirtualRun`` drives it on a virtual clock, ``measure=False``.)"""
        cfg = self.config
        self._guard(lambda: self._poll_all(now, measure=measure))
        # Reads take time (an NVML counter read ~3 ms): extra polls asked for by then are made now,
        # not at a wake of their own (a read left over once its window has passed, a probe).
        self._guard(lambda: self._poll_woken(self._clock()))
        if self._abandoned:
            return
        for watch in tuple(self.watchers):  # a copy: a watcher may be removed meanwhile
            self._guard(lambda: watch(now))
        if now >= self._next_account:  # nothing waits on it: steps are resolved a little late
            self._guard(lambda: self._account(final=False))
            self._next_account = now + cfg.counter_interval_s
            if measure:  # once per slow period, like the costs it weighs
                self._guard(lambda: self._adapt_slow_cadence(now))
        if now >= self._next_flush:
            self._flush()
            self._next_flush = now + cfg.flush_interval_s

    def slow_period(self, now: float) -> float:
        """The slow cadence now: ``counter_interval_s``, or at least IDLE_COUNTER_INTERVAL_S
        while idle (no step open, none ended within IDLE_AFTER_S)."""
        if now - self._last_step_t1 < IDLE_AFTER_S or self.counter_interval_s >= \
                IDLE_COUNTER_INTERVAL_S or self._open_step():
            return self.counter_interval_s
        return IDLE_COUNTER_INTERVAL_S

    def _open_step(self) -> bool:
        for hold in tuple(self.holds):  # a copy: a hold may be removed meanwhile
            try:
                if hold() is not None:
                    return True
            except Exception:  # noqa: BLE001 - a racing owner: as if one were open
                return True
        return False

    def wants_fast(self, now: float) -> bool:
        """Whether the next poll comes on the fast cadence: while short steps run (one is open, or
        one ended within :data:`FAST_HOLD_S`) and a channel reads anything on fast polls, or
        always when a channel integrates instant power. Otherwise the slow cadence alone."""
        if self._totals_need_fast:
            return True
        if not self._fast_reads or self._step_s >= LONG_STEP_S:
            return False
        if now - self._last_step_t1 < FAST_HOLD_S:
            return True
        return self._open_step()

    def _run(self) -> None:
        cfg = self.config
        now = self._clock()
        self.schedule(now)
        fast = self.wants_fast(now)
        self._pace(fast)
        next_poll = now + (cfg.interval_s if fast else self.counter_interval_s)
        while not self._wait(max(0.0, min(next_poll, self._next_wake()) - self._clock())):
            now = self._clock()
            if self._woken:  # a step began while idle: counter readings now, then its cadence
                self._woken = False
                next_poll = now
                for st in self.states:
                    st.next_slow = min(st.next_slow, now)
            if now < next_poll:  # a channel's own extra poll (a probe, a read left over)
                self._guard(lambda: self._poll_woken(now))
                continue
            self.iterate(now)
            if self._abandoned:
                return
            was, fast = fast, self.wants_fast(now)
            if fast != was:
                self._pace(fast)
            self.fast_polls += fast
            # Dithered by up to +-5%: polls land at varying phases of NVML's 100 ms refresh,
            # which lets the NVML sampler pin that phase down (see samplers/_nvml.py).
            period = cfg.interval_s if fast else self.slow_period(now)
            self.idle = not fast and period > self.counter_interval_s
            next_poll = min(next_poll + period * (0.95 + 0.1 * self._rng.random()),
                            now + period * 1.05)
            if next_poll <= now:
                next_poll = now + period
            next_poll = self._clear_of_reads(next_poll, period)
            self.thread_cpu_s = time.thread_time()
        if not self._abandoned:
            self._final_reading()
        self.thread_cpu_s = time.thread_time()

    def _wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` (less if stop() is called or an idle run's step begins);
        True: stopping."""
        if self._wake.wait(timeout):
            self._wake.clear()
        return self._stop.is_set()

    def wake_from_idle(self) -> None:
        """A step begins while the thread reads at the idle cadence (any thread; never blocks)."""
        self.idle = False
        self._woken = True
        self._wake.set()

    def _pace(self, fast: bool) -> None:
        for pace in self._pacers:
            self._guard(lambda: pace(fast))

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the sampler must never die or raise into training
            self.errors += 1
            warn_once(log, self.run_key, f"internal-error:{type(e).__name__}",
                      "greentrack: internal sampler error (recorded; repeats are recorded only): "
                      "%s", e)
            self.event("error", "internal-error", f"{type(e).__name__}: {e}")

    # -- polling ------------------------------------------------------------------------------
    def _poll_all(self, now: float, force_slow: bool = False, measure: bool = False) -> None:
        """Poll every channel; slow reads for those whose slow tick is due (all: ``force_slow``).
        ``measure``: time the slow reads' CPU (on the sampler thread only)."""
        self.polls += 1
        period = self.slow_period(now)
        for st in self.states:
            if self._abandoned:
                return  # stop() gave up on this thread: touch nothing
            slow = force_slow or now >= st.next_slow
            if slow:
                st.next_slow += period
                if st.next_slow <= now:
                    st.next_slow = now + period
            if st.status == "lost" or (st.status == "failing" and not slow):
                continue  # retry a failing device on the slow cadence only
            self._poll_one(st, slow, measure)
        self.last_sample_t = now

    def _poll_one(self, st: ChannelState, slow: bool, measure: bool = False) -> None:
        """Poll one channel now: its points, or a failure recorded (never raises)."""
        t = self._clock()
        # The CPU of a slow read is measured where the read happens: a counter read left over
        # (samplers/_nvml.py: read_pending) happens at a later poll, and a slow poll that left it
        # read nothing costly.
        pending = bool(getattr(st.channel, "read_pending", False))
        cpu0 = time.thread_time() if measure and (slow or pending) else None
        self._in_read_since = t
        try:
            points = st.channel.poll(t, slow)
        except DeviceLost as e:
            salvage = getattr(st.channel, "salvage", None)  # readings not yet dated (start-up)
            if salvage is not None:
                st.take(salvage())
            self._on_failure(st, t, e, lost=True)
            return
        except SamplerError as e:
            pts = getattr(e, "points", None)
            if pts:  # the read worked but needs a note (counter reset, possible missed wrap)
                st.take(pts)
                self._writer.add_event(t - self.origin, "warning", "estimate", str(e), st.id)
                return
            self._on_failure(st, t, e, lost=False)
            return
        except Exception as e:  # noqa: BLE001 - an unexpected backend bug is a failed read
            self._on_failure(st, t, e, lost=False)
            return
        finally:
            self._in_read_since = None
            if cpu0 is not None:
                # a read left over costs its attempts too: they count towards the one it becomes
                used = st.pending_cpu_s + time.thread_time() - cpu0
                if getattr(st.channel, "read_pending", False):
                    st.pending_cpu_s = used
                else:
                    st.pending_cpu_s = 0.0
                    st.slow_cpu_s = used if st.slow_cpu_s is None else 0.8 * st.slow_cpu_s + 0.2 * used
                    st.slow_wall_s = 0.8 * st.slow_wall_s + 0.2 * (self._clock() - t)
                    st.slow_reads += 1
        if st.status == "failing" and st.fail_since is not None:
            gap = t - st.fail_since
            st.gap_s += gap
            self._writer.add_event(t - self.origin, "info", "gap-end",
                                   f"{st.channel.info.device}: readings back after {gap:.2f} s",
                                   st.id, {"gap_s": gap})
            st.status, st.fail_since = "ok", None
        st.take(points)
        if slow and st.id in self._event_sources:
            self._drain_events(st, t)

    def _next_wake(self) -> float:
        """When to wake for the extra polls live channels ask for (inf: none): the end of the
        first window (``wake_by``), so that one wake serves every channel whose window has come
        (several GPUs, one wake of the thread)."""
        wakes = [w for st, _, by in self._wakers if st.status == "ok" and (w := by()) is not None]
        return min(wakes, default=float("inf"))

    def _poll_woken(self, now: float) -> None:
        """Poll the channels whose extra poll is due (as a fast poll), the most pressing first."""
        due: list[tuple[float, int]] = []
        for i, (st, at, by) in enumerate(self._wakers):
            wake = at() if st.status == "ok" else None
            if wake is not None and wake <= now:
                due.append((by() or wake, i))
        for _, i in sorted(due):
            if self._abandoned:
                return
            self._poll_one(self._wakers[i][0], slow=False, measure=True)

    def _clear_of_reads(self, t: float, period: float) -> float:
        """``t``, or a little later (a quarter of ``period`` at most) so that the slow reads due
        then start where no refresh can fall inside them (``clear_from``): a read left to an extra
        poll costs that poll and a wake of the thread (bench/sampler_cost.py)."""
        limit, at = t + period * CLEAR_SHIFT, t
        for _ in range(3):  # a later time can meet another channel's window: look again
            shift, start = 0.0, at  # channels read one after the other: when each read starts
            for st, fn in self._clearers:
                if st.status != "ok" or not (st.next_slow <= at
                                             or getattr(st.channel, "read_pending", False)):
                    continue
                clear = fn(start)
                if clear is not None:
                    shift = max(shift, clear - start)
                start += st.slow_wall_s
            if shift <= 0.0:
                return at
            if at + shift > limit:
                return t
            at += shift
        return t

    def _drain_events(self, st: ChannelState, t: float) -> None:
        """Record what a channel reported (and its new description, when it changed)."""
        for ev in self._event_sources[st.id].drain_events():
            if ev.info is not None:
                self._writer.update_channel_info(st.id, ev.info.as_dict())
            self._writer.add_event(t - self.origin, ev.level, ev.kind, ev.message, st.id,
                                   ev.details)
            if ev.level == "warning":
                warn_once(log, self.run_key, f"{ev.kind}:{st.channel.info.device}",
                          "greentrack: %s", ev.message)

    def _adapt_slow_cadence(self, now: float) -> None:
        """Stretch (or restore) the slow cadence so slow reads stay within their CPU budget.

        A round of slow reads (one per live channel) costs ``cost`` seconds of CPU every
        ``counter_interval_s``; the budget needs ``cost / SLOW_READ_CPU_BUDGET``. Changes need a
        quarter's margin either way and hold for :data:`CADENCE_HOLD_S`, so a noisy cost cannot
        make the cadence (or the event log) flap."""
        live = [st for st in self.states if st.status != "lost"]
        if any(st.slow_reads < 2 for st in live):
            return  # a cost for every channel first (its first read may be a cold one)
        cost = sum(st.slow_cpu_s or 0.0 for st in live)
        base = self.config.counter_interval_s
        need, cur = cost / SLOW_READ_CPU_BUDGET, self.counter_interval_s
        if need > cur * 1.25 and cur < max(base, MAX_COUNTER_INTERVAL_S):
            want = min(need, max(base, MAX_COUNTER_INTERVAL_S))
        elif need < cur * 0.75 and cur > base:
            want = max(need, base)
        else:
            return
        if now - self._cadence_changed_at < CADENCE_HOLD_S:
            return
        self._cadence_changed_at = now
        self.counter_interval_s = want
        self.counter_interval_max_s = max(self.counter_interval_max_s, want)
        self.cadence_changes += 1
        log.info("greentrack: slow cadence %.3g s -> %.3g s (slow reads cost %.2f ms CPU a round)",
                 cur, want, cost * 1e3)
        if self.cadence_changes > CADENCE_EVENTS:
            return  # counted in the meta from here on
        share = cost / want
        over = (f"; still {share:.1%} of a core at the {want:g} s cap"
                if share > SLOW_READ_CPU_BUDGET * 1.01 else "")
        last = (f" (change {CADENCE_EVENTS}: later changes are only counted in the store's meta)"
                if self.cadence_changes == CADENCE_EVENTS else "")
        self.event("warning" if want > base else "info", "slow-cadence",
                   f"slow reads (energy counters) cost {cost * 1e3:.2f} ms of CPU per round: slow "
                   f"cadence {cur:.3g} s -> {want:.3g} s to keep them within "
                   f"{SLOW_READ_CPU_BUDGET:.1%} of a core{over}; totals stay exact, windows lean "
                   f"more on instant power{last}", cpu_per_round_s=cost, counter_interval_s=want,
                   configured_s=base)

    def _on_failure(self, st: ChannelState, t: float, e: Exception, lost: bool) -> None:
        device = st.channel.info.device
        if st.status == "ok":
            st.fail_since = t
            self._writer.add_event(t - self.origin, "warning", "gap-start",
                                   f"{device}: read failed: {e}", st.id)
            warn_once(log, self.run_key, f"read-failed:{device}", "greentrack: %s read failed "
                      "(recorded as a gap; later gaps of it are recorded, not repeated here): %s",
                      device, e)
        if lost and st.status != "lost":
            self._writer.add_event(t - self.origin, "error", "device-lost",
                                   f"{device}: device lost, no more readings: {e}", st.id)
        st.status = "lost" if lost else "failing"

    # -- accounting ------------------------------------------------------------------------------
    def _account(self, final: bool) -> None:
        # Blocking: stop() may attribute on its own thread only once the sampler thread has let go.
        with self._account_lock:
            if self._abandoned and threading.current_thread() is self._thread:
                return  # stop() gave up on this thread and attributes in its place
            self._attribute(final)

    def _attribute(self, final: bool) -> None:
        taken = self.steps.take()
        if taken:
            taken = self.cleaner.windows(taken, self.origin, self._clock())
        if taken:  # the cadence follows the steps (wants_fast)
            last = taken[-1]
            self._last_step_t1 = max(self._last_step_t1, last.t1)
            self._step_s = max(0.0, last.t1 - last.t0) / max(1, last.n)
        self._waiting.extend(taken)
        if final:  # the last steps' CUDA values: training is over, a short wait costs nothing
            deadline = time.monotonic() + DEVICE_VALUE_WAIT_S
            while (any(s.pending() for s in self._waiting) or self.records.pending_values()) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
        live = [st for st in self.states if st.status != "lost"]
        horizon = min((st.timeline.until or float("-inf") for st in live), default=float("inf"))
        waiting, self._waiting = self._waiting, []
        ready = []
        for span in waiting:
            if not final and (span.t1 > horizon or span.pending()):
                self._waiting.append(span)
            else:
                ready.append(span)
        if ready:
            self._resolve(ready, horizon)
        self.records.attribute(final, horizon, self._energy_at, self.origin)
        res = self.config.resolution_s
        held = [s.t0 for s in self._waiting] + self.records.held()
        for hold in tuple(self.holds):  # a copy: a hold may be removed meanwhile
            try:
                t = hold()
            except Exception:  # noqa: BLE001 - a racing owner: keep everything this time
                t = float("-inf")
            if t is not None:
                held.append(t)
        for st in self.states:
            until = st.timeline.until
            if until is None:
                continue
            # Buckets lie on the run's grid (origin + k x res), but hold only what was read: the
            # first one starts at the channel's first value, which comes after the origin by the
            # store's setup (0.1 s on a loaded host), not at the origin with that time unmeasured.
            b = st.next_bucket
            a = max(b, st.timeline.t[0])
            if a - b >= res:
                b += res * math.floor((a - b) / res)
            while b + res <= until:
                self._writer.add_sample(st.id, a - self.origin, b + res - a,
                                        st.timeline.between(a, b + res))
                a = b = b + res
            st.next_bucket = b
            if final and until > a:
                self._writer.add_sample(st.id, a - self.origin, until - a,
                                        st.timeline.between(a, until))
                st.next_bucket = until
            st.timeline.prune(min([st.next_bucket] + held) - RETAIN_S)

    def _resolve(self, spans: list[StepSpan], horizon: float) -> None:
        """Record resolved steps: each channel's joules for all of them in one pass
        (:meth:`Timeline.steps_between`), then a row per step, stored, tallied and handed to the
        listeners as a batch. One step whose row cannot be made never holds back (or repeats)
        the others."""
        states = [st for st in self.states if st.timeline.t]
        columns: dict[str, list[list[float]]] = {}
        for st in states:  # every window is two finite floats (FieldCleaner.windows)
            columns.setdefault(st.kind, []).append(st.timeline.steps_between(spans))
        # a kind's joules per step: its channels summed (None: no channel of that kind)
        by_kind = {kind: cols[0] if len(cols) == 1 else [sum(v) for v in zip(*cols)]
                   for kind, cols in columns.items()}
        none = repeat(None)
        gpu, cpu, dram = (by_kind.get(kind) or none for kind in ("gpu", "cpu", "dram"))
        n_gpus = sum(st.kind == "gpu" for st in states)
        origin, clean, rows, row_of = self.origin, self.cleaner.clean, [], tuple.__new__
        for span, g, c, d in zip(spans, gpu, cpu, dram):
            try:
                flops, samples, tokens, extra = clean(span)
                phase, t0, t1 = span.phase, span.t0, span.t1
                if type(phase) is not str or len(phase) > 64:
                    phase = phase_name(phase)
                duration = t1 - t0 if t1 > t0 else 0.0
                if t1 > horizon:
                    extra["partial"] = True
                # StepRow(...) without its generated __new__'s call (the same tuple.__new__)
                rows.append(row_of(StepRow, (span.idx, phase, t0 - origin, t1 - origin, duration,
                                             g, c, d, duration * n_gpus, flops, samples, tokens,
                                             span.timeline, extra, span.n)))
            except Exception as e:  # noqa: BLE001
                self.errors += 1
                self.event("error", "internal-error", f"step {span.phase}#{span.idx} not "
                           f"recorded: {type(e).__name__}: {e}")
        # the store's rows and the live sums, each whatever the other does
        self._guard(lambda: self._writer.add_steps(rows))
        self._guard(lambda: self.tally.observe_many(rows))
        for listener in list(self.step_listeners):
            for row in rows:
                try:
                    listener(row)
                except Exception as e:  # noqa: BLE001 - a sink bug must not stop attribution
                    self._listener_failed(listener, e)

    def _listener_failed(self, listener: Callable[[StepRow], None], e: Exception) -> None:
        """A step listener raised: one event and log line per listener (the first failure),
        then counted (meta ``listener_errors``): one that fails at every step of a long run
        would otherwise add an event per step, without bound."""
        self.listener_errors += 1
        if any(seen is listener for seen in self._failed_listeners) or \
                len(self._failed_listeners) >= 16:
            return
        self._failed_listeners.append(listener)
        try:  # the listener's name and error are the user's objects: their text may fail too
            what = f"{str(getattr(listener, '__qualname__', ''))[:80]} failed: " \
                   f"{type(e).__name__}: {str(e)[:200]}"
        except Exception:  # noqa: BLE001
            what = f"failed: {type(e).__name__}"
        msg = f"step listener {what} (further failures are counted in the store's meta " \
              "listener_errors)"
        warn_once(log, self.run_key, f"listener-error:{len(self._failed_listeners)}",
                  "greentrack: %s", msg)
        self.event("warning", "listener-error", msg)

    def _energy_at(self, t: float) -> float:
        """Cumulative energy of every channel at ``t``."""
        return sum(st.timeline.at(t) for st in self.states if st.timeline.t)

    def _flush(self) -> None:
        for st in self.states:
            self._writer.update_channel(st.id, st.timeline.last, _rel(st.timeline.until, self.origin),
                                        st.gap_s, st.status)
        self._writer.set_meta({"heartbeat_unix": time.time(), "sampler_cpu_s": self.thread_cpu_s,
                               "polls": self.polls, "counter_interval_s": self.counter_interval_s,
                               "counter_interval_max_s": self.counter_interval_max_s,
                               "slow_cadence_changes": self.cadence_changes,
                               "bad_step_fields": dict(self.cleaner.bad_fields),
                               "steps_coalesced": self.steps.coalesced,
                               "listener_errors": self.listener_errors})
        try:
            self._writer.flush()
            now = self._clock()
            if now >= self._next_checkpoint:  # a copy of the .gtdb alone loses at most this long
                self._next_checkpoint = now + CHECKPOINT_S
                self._writer.checkpoint()
            if self._flush_failures:
                warn_once(log, self.run_key, "store-recovered", "greentrack: store writable "
                          "again after %d failed commits", self._flush_failures)
                self._writer.add_event(self._clock() - self.origin, "warning", "store-recovered",
                                       f"{self._flush_failures} commits failed before this one")
                self._flush_failures = 0
        except RunStoreError as e:
            self._flush_failures += 1
            if self._flush_failures == 1:
                warn_once(log, self.run_key, "store-write", "greentrack: cannot write the run "
                          "store (will retry; training goes on): %s", e)

    # -- live view, for exporters and progress logs ------------------------------------------
    @property
    def steps_done(self) -> int:
        """Steps resolved so far (coalesced rows count their steps)."""
        return self.tally.steps

    def snapshot(self) -> list[ChannelSnapshot]:
        """Every channel now, for live outputs."""
        out = []
        for st in self.states:
            point = st.timeline.point
            out.append(ChannelSnapshot(st.id, st.channel.info.kind, st.channel.info.device,
                                       st.channel.info.measured, st.channel.info.method,
                                       0.0 if point is None else point[1], st.channel.power_w(),
                                       st.status, st.gap_s, None if point is None else point[0]))
        return out


def _rel(t: float | None, origin: float) -> float | None:
    return None if t is None else t - origin


