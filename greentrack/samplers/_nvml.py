"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Method, chosen per GPU once at start and recorded:

* ``nvml-energy-counter``: Volta and newer. The total-energy counter (mJ since driver load) is
  the reference, but a read costs ~3 ms on an H100 and it updates every ~100 ms, so it is read on
  the slow cadence only. Between two counter reads the energy is distributed in proportion to the
  instant-power field (``NVML_FI_DEV_POWER_INSTANT``, ~3 us a read), polled on the fast cadence.
  Totals therefore equal the counter delta exactly; windows get the instant-power shape.
* ``nvml-power-integration``: no counter (Pascal and older). Trapezoidal integral of the power
  reading, labelled as such. Where only ``nvmlDeviceGetPowerUsage`` exists, the method says so:
  on Ampere (except A100) and Hopper that reading is a 1 s moving average.

MIG: NVML reports the whole GPU's power for a MIG slice. A MIG-enabled GPU is measured as the
whole GPU and labelled ``mig: whole-GPU energy`` so it is never presented as the slice.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from greentrack.common.config import launcher_int
from greentrack.common.errors import ConfigError, DeviceLost, PermissionDenied, SamplerError
from greentrack.samplers._counter import CounterReset, CounterShaping, shape_points
from greentrack.samplers.base import QUALITY_HIGH, QUALITY_MEDIUM, ChannelInfo, Note, Point

FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT, mW
#: NVML refreshes power and energy every ~100 ms (measured on an H100 80GB HBM3, driver 580.159.04, 2026-11-22;
#: Yang et al., arXiv 2312.02741, on A100/H100).
UPDATE_PERIOD_S = 0.1
#: The instant-power figure is the mean of the last ~25 ms before its update (arXiv 2312.02741).
INSTANT_WINDOW_S = 0.025
#: Drift allowed per refresh period between NVML's clock and this one (s): 0.1%, ten times a
#: crystal's tolerance, and a period up to 0.1 ms off the 100 ms measured. More (not seen) makes
#: the brackets disagree: they start over (_observe_tick).
DRIFT_PER_PERIOD_S = 0.0001
#: A counter read is not started this close before a possible refresh (it takes ~3 ms on an H100).
READ_GUARD_S = 0.005
#: A counter read left over this long is taken whatever the refresh (its value a period in doubt).
OVERDUE_S = 0.5
#: A tick bracket wider than this is narrowed by probe reads (see wake_at) ...
PROBE_WIDTH_S = 0.006
#: ... and this, while the engine polls on the slow cadence alone (no steps, or steps of 2 s and
#: more, where a value dated 5 ms off moves at most 0.25% of a step's energy to its neighbour):
#: the drift allowed widens a bracket ~2 ms a second, and each probe is a wake of the sampler
#: thread (an idle run with 8 GPUs: 8 probes/s at 6 ms, 4.8 at 10; bench/sampler_cost.py).
PROBE_WIDTH_SLOW_S = 0.010
#: Counter reads kept while the refresh phase is unknown (the start-up polls), to date later.
FIRST_READS = 3
FIRSTS_APART_S = 0.03
#: ... dated once half the tick bracket is this narrow, or after FIRSTS_WAIT_S (s).
FIRSTS_BRACKET_S = 0.004
FIRSTS_WAIT_S = 1.0
_T = TypeVar("_T")


def _nvml_call(pynvml: ModuleType, fn: Callable[..., _T], *args: Any) -> _T:
    """Call NVML, translating its errors at the edge (style: Zeus ``_handle_nvml_errors``)."""
    try:
        return fn(*args)
    except pynvml.NVMLError as e:
        code = getattr(e, "value", None)
        if code in (pynvml.NVML_ERROR_GPU_IS_LOST, getattr(pynvml, "NVML_ERROR_RESET_REQUIRED", -1)):
            raise DeviceLost(f"NVML: {e}") from e
        if code == pynvml.NVML_ERROR_NO_PERMISSION:
            raise PermissionDenied(f"NVML: {e}", "run with access to /dev/nvidia* (container: --gpus)") from e
        raise SamplerError(f"NVML: {e}") from e


class NvmlGpu(CounterShaping):
    """One physical GPU. See the module docstring for the method."""

    #: A final reading must wait this long after the end of the run to cover it (one refresh).
    settle_s = UPDATE_PERIOD_S * 1.2

    def __init__(self, pynvml: ModuleType, handle: Any, index: int, *, ordinal: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nv = pynvml
        self._h = handle
        self._clock = clock
        name = _text(_nvml_call(pynvml, pynvml.nvmlDeviceGetName, handle))
        uuid = _text(_nvml_call(pynvml, pynvml.nvmlDeviceGetUUID, handle))
        self.uuid = uuid
        mig = _mig_enabled(pynvml, handle)
        self._counter_mj: int | None = None
        self._counter_t: float | None = None
        #: counter reads (start, end, mJ) taken before the refresh phase was known, dated once it is
        self._firsts: list[tuple[float, float, int]] = []
        self._counter_due = False  # a slow tick asked for a counter read not yet taken
        self._due_since = 0.0  # (poll time) since when
        self._tries = 0  # reads of it taken and found in doubt
        self._bootstrap_probes = 0
        self._next_bootstrap = 0.0
        #: the last power read saw a new value within a period of the read before: a refresh
        #: came between them (a change over a longer gap says nothing of the phase)
        self._changed = False
        #: when this channel asks to be polled again, and until when that poll serves (wake_at)
        self._wake: float | None = None
        self._wake_by: float | None = None
        self._finishing = False
        self._probe_width_s = PROBE_WIDTH_S  # the engine's cadence in force sets it (pace)
        #: counter reads left to a later poll: a refresh could fall inside them (see _clear)
        self.deferred_reads = 0
        self._energy_j = 0.0
        self._shape: list[tuple[float, float]] = []  # (t, W) since the last counter read
        self._last_power: float | None = None
        self._last_mw: int | None = None
        self._prev_read: float | None = None  # when the previous instant-power read began
        self._tick: float | None = None  # latest NVML update instant seen (monotonic)
        self._tick_lo: float | None = None  # bounds of that instant, narrowed over detections
        self._tick_hi: float | None = None
        #: the widest dating error of any counter value so far (s): half the tick bracket in force
        #: when it was dated (half a period while the phase was unknown; a whole one for a start-up
        #: read no later read could date, see _date_firsts). A loaded host widens the brackets
        #: (reads further apart); the intersection narrows them again.
        self.max_dating_error_s = 0.0
        self.has_counter = self._probe(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        self.has_instant = self._probe(self._read_instant_mw)
        if self.has_counter:
            method = "nvml-energy-counter"
            source = ("NVML nvmlDeviceGetTotalEnergyConsumption (counter, read every slow tick) "
                      "shaped by NVML_FI_DEV_POWER_INSTANT" if self.has_instant else
                      "NVML nvmlDeviceGetTotalEnergyConsumption (counter), windows shaped by "
                      "nvmlDeviceGetPowerUsage")
            quality = f"{QUALITY_HIGH}: board sensor, about +-5% between boards"
        else:
            method = "nvml-power-integration"
            source = ("integral of NVML_FI_DEV_POWER_INSTANT" if self.has_instant else
                      "integral of nvmlDeviceGetPowerUsage (a 1 s moving average on Ampere "
                      "except A100 and on Hopper)")
            quality = f"{QUALITY_MEDIUM}: power polled, not counted; short bursts can be missed"
        details: dict[str, Any] = {"uuid": uuid, "nvml_index": index, "cuda_ordinal": ordinal,
                                   "energy_counter": self.has_counter,
                                   "instant_power_field": self.has_instant, "mig": mig}
        if mig:
            details["mig_note"] = ("MIG is enabled: NVML reports the whole GPU's energy; per-slice "
                                   "energy is not measurable")
            method += "; mig: whole-GPU energy"
        self.info = ChannelInfo(kind="gpu", device=f"gpu{ordinal}", name=name, method=method,
                                measured=True, source=source, uncertainty=quality,
                                host_scope=False, details=details)

    # -- reads -------------------------------------------------------------------------------
    def _probe(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except self._nv.NVMLError:
            return False

    def _read_instant_mw(self, *_: Any) -> int:
        values = self._nv.nvmlDeviceGetFieldValues(self._h, [FIELD_POWER_INSTANT])
        v = values[0]
        if v.nvmlReturn != self._nv.NVML_SUCCESS:
            raise self._nv.NVMLError(v.nvmlReturn)
        return int(v.value.uiVal)

    def _read_power(self) -> tuple[float, float | None]:
        """Power in W, and the time it describes (None: it cannot be told, see below).

        NVML values describe its last ~100 ms update, not the moment of the read. When the value
        changes between two reads, the update happened after the earlier read began and before
        the later one ended: that bracket dates the update tick (timed around the reads
        themselves, so a sampler thread preempted before the read cannot misdate it),
        later ticks follow every 100 ms, and the same ticks date the energy counter (both refresh
        together). The instant field is the mean of the tick's last ~25 ms. A read during which
        a tick may have come (the bracket's width around each tick) holds either update's value:
        its power still counts as the latest, but it is not dated (not part of the shape).
        """
        mw, start, end = self._power_read()
        if self._tick is not None and not self._clear(start, end):
            return float(mw) / 1000.0, None
        when = self._latest_tick(start)
        if self.has_instant:
            when -= INSTANT_WINDOW_S / 2.0
        return float(mw) / 1000.0, when

    def _power_read(self) -> tuple[int, float, float]:
        """One power read (mW) and when it began and ended; a change since the last read
        brackets a tick."""
        start = self._clock()
        if self.has_instant:
            mw = _nvml_call(self._nv, self._read_instant_mw)
        else:
            mw = _nvml_call(self._nv, self._nv.nvmlDeviceGetPowerUsage, self._h)
        end = self._clock()
        self._changed = False
        if mw != self._last_mw:
            if self._prev_read is not None:  # a change seen between two reads dates a tick
                self._changed = end - self._prev_read < UPDATE_PERIOD_S
                self._observe_tick(self._prev_read, end)
            self._last_mw = mw
        self._prev_read = start
        return mw, start, end

    def wake_at(self) -> float | None:
        """From when an extra poll serves this channel (the engine's clock), or None; it is
        wanted by :meth:`wake_by`. Two reasons:

        * **Probe reads.** Polls on a regular cadence land at nearly one phase of the refresh, so
          the changes they see bracket it only within ~50 ms for seconds (every counter value up
          to 25 ms in doubt), and the bracket widens by the drift allowed while nothing narrows
          it. While the window a refresh may fall in is wider than PROBE_WIDTH_S (at the slow
          cadence alone, PROBE_WIDTH_SLOW_S: see :meth:`pace`), a read is asked
          for inside the next one (best in its middle; of what is left of it, from inside); a read
          inside it that saw no change asks for one more as it closes. A change seen by the first
          cuts off the window's later part, one seen by the second its earlier part. Only changes
          within a period are evidence: two refreshes can carry one value. With no change seen
          yet, polls a period or more apart can never bracket one: a read a quarter to half a
          period after the last is asked for (eight times, then once a second: a power that never
          changes shows no phase).
        * **A counter read left over** (a refresh could have fallen inside it): asked for once the
          window has passed.

        Each is a ~3 us instant-power read on the sampler thread (and the counter read that was
        due); nothing waits for it. The engine wakes at the first ``wake_by`` of its channels and
        polls every channel whose ``wake_at`` has come then: one wake for several GPUs; a regular
        poll serves too."""
        return self._wake

    def wake_by(self) -> float | None:
        """When the poll this channel asks for (:meth:`wake_at`) is wanted at the latest."""
        return self._wake_by

    def pace(self, fast: bool) -> None:
        """The engine polls on the fast cadence (True) or on the slow one alone (False): probes
        keep the refresh phase known within PROBE_WIDTH_S or PROBE_WIDTH_SLOW_S. The dating error
        stated (``max_dating_error_s``) is the widest either way."""
        self._probe_width_s = PROBE_WIDTH_S if fast else PROBE_WIDTH_SLOW_S

    def clear_from(self, t: float) -> float | None:
        """The first time from ``t`` at which a counter read may start clear of a refresh (``t``
        itself when it may), or None while the refresh phase is unknown. The engine times its
        polls by it, so that a slow read is rarely left over to an extra poll."""
        if not self.has_counter or self._tick_lo is None:
            return None
        lo, hi = self._zone(t)
        return t if lo > t + READ_GUARD_S else hi + 1e-4

    def _plan_wake(self, now: float) -> None:
        wants: list[tuple[float, float]] = []  # (from, until)
        if self._tick_lo is None or self._tick_hi is None:
            if self._prev_read is not None and (self._bootstrap_probes < 8
                                                or now >= self._next_bootstrap):
                self._bootstrap_probes += 1
                self._next_bootstrap = now + 1.0
                wants.append((self._prev_read + UPDATE_PERIOD_S / 4.0,
                              self._prev_read + UPDATE_PERIOD_S / 2.0))
        else:
            lo, hi = self._zone(now)
            if self._counter_due and lo <= now + READ_GUARD_S:
                wants.append((hi + 1e-4, hi + 1e-4))  # the read left over, once the window passed
            if hi - lo > self._probe_width_s:  # the bracket, widened by the drift since
                if now <= lo:
                    wants.append(_middle(lo, hi))
                elif self._changed:  # this read cut the window: the next one's middle
                    wants.append(_middle(*self._zone(hi + 1e-6)))
                elif hi - now > (hi - lo) / 2.0:  # inside, most of it to come: its middle
                    wants.append(_middle(now, hi))
                else:  # inside, no change yet: read as it closes
                    wants.append((hi + 1e-4, hi + 1e-4))
        self._wake = min(a for a, _ in wants) if wants else None
        self._wake_by = min(b for _, b in wants) if wants else None

    def _read_counter_mj(self) -> int:
        return int(_nvml_call(self._nv, self._nv.nvmlDeviceGetTotalEnergyConsumption, self._h))

    def _clear_read(self) -> tuple[int, float, float] | None:
        """The counter and the tick its value describes, read where no refresh can fall inside
        the read: not started within READ_GUARD_S of a possible refresh, and taken again if one
        could have come during the read (a read takes ~3 ms on an H100, longer when a loaded host
        preempts the sampler). None: left to a later poll (wake_at asks for one). Dated by the read's middle
        instead, a loaded host's values were a whole period off, 100 ms of the GPU's power moved
        between steps (a CI run: 44 J/step for 35). The third value is the dating error the read
        adds to the bracket's."""
        if self._tick_lo is None:  # the phase never showed (a power that never changes): guessed
            start = self._clock()
            mj = self._read_counter_mj()
            end = self._clock()
            return mj, self._latest_tick((start + end) / 2.0), (end - start) / 2.0
        # Left over past OVERDUE_S (no extra poll came: a caller that ignores wake_at, or a
        # bracket too wide to leave room), or once a read was taken and met a possible refresh
        # (a host that slows reads down: each try costs the read again), it is read and dated in
        # doubt, a period more.
        overdue = self._clock() - self._due_since >= OVERDUE_S or self._tries >= 1
        if not overdue and self._zone(self._clock())[0] <= self._clock() + READ_GUARD_S:
            return None  # a refresh may come now: left to a poll after it (wake_at)
        start = self._clock()
        mj = self._read_counter_mj()
        end = self._clock()
        if self._clear(start, end):
            return mj, self._latest_tick(start), 0.0
        if overdue:
            return mj, self._latest_tick((start + end) / 2.0), UPDATE_PERIOD_S
        self.deferred_reads += 1  # the read took long enough to meet one: taken again later
        self._tries += 1
        return None

    def _zone(self, t: float) -> tuple[float, float]:
        """The first window, ending after ``t``, in which a refresh may come (the bracket
        carried forward whole periods, widened by the drift allowed)."""
        assert self._tick_lo is not None and self._tick_hi is not None
        lo, hi = self._tick_lo - DRIFT_PER_PERIOD_S, self._tick_hi + DRIFT_PER_PERIOD_S
        k = math.floor((t - hi) / UPDATE_PERIOD_S) + 1
        drift = abs(k) * DRIFT_PER_PERIOD_S  # (a window far from the bracket: it may have drifted)
        return lo + k * UPDATE_PERIOD_S - drift, hi + k * UPDATE_PERIOD_S + drift

    def _clear(self, start: float, end: float) -> bool:
        """No refresh can have come between ``start`` and ``end`` (False: the phase is unknown)."""
        return self._tick_lo is not None and self._zone(start)[0] > end

    def _observe_tick(self, a: float, b: float) -> None:
        """A refresh happened in (a, b]. Intersect with the earlier bounds carried forward whole
        periods, allowing DRIFT_PER_PERIOD_S of drift a period, when exactly one carried window
        meets (a, b] (a wider interval, from a read the host delayed, could meet two, and the
        intersection with the wrong one holds no refresh: a loaded CI host's values were dated
        5 ms off a bracket said to hold within 3); start over if none does (the clocks drifted
        apart further). An interval of a period or more says nothing about the phase."""
        if b - a >= UPDATE_PERIOD_S:
            return
        if self._tick_lo is not None and self._tick_hi is not None:
            lo0, hi0 = self._tick_lo, self._tick_hi
            met = []
            for k in range(math.floor((a - hi0) / UPDATE_PERIOD_S) - 1,
                           math.ceil((b - lo0) / UPDATE_PERIOD_S) + 2):
                slack = abs(k) * DRIFT_PER_PERIOD_S
                lo = max(a, lo0 + k * UPDATE_PERIOD_S - slack)
                hi = min(b, hi0 + k * UPDATE_PERIOD_S + slack)
                if lo < hi:
                    met.append((lo, hi))
            if len(met) > 1 and b - a >= hi0 - lo0:
                return
            if len(met) > 1:  # in doubt, but narrower than the bracket held: it replaces it
                met = []
            if met:
                self._tick_lo, self._tick_hi = met[0]
                self._tick = (met[0][0] + met[0][1]) / 2.0
                return
        self._tick_lo, self._tick_hi = a, b
        self._tick = (a + b) / 2.0

    def _dating_error_s(self) -> float:
        """How far a value dated by :meth:`_latest_tick` now may be from its refresh (s)."""
        if self._tick_lo is None or self._tick_hi is None:
            return UPDATE_PERIOD_S / 2.0
        return (self._tick_hi - self._tick_lo) / 2.0

    def _latest_tick(self, t: float) -> float:
        """Best estimate of the last NVML update at or before ``t`` (earlier than the tick seen
        too: updates come every period, so the phase dates a read kept from before it was known)."""
        if self._tick is None:
            return t - UPDATE_PERIOD_S / 2.0
        return self._tick + ((t - self._tick) // UPDATE_PERIOD_S) * UPDATE_PERIOD_S

    def power_w(self) -> float | None:
        return self._last_power

    # -- the power limit (greentrack.process.calibration), in NVML's unit, the milliwatt ---------------
    def power_limit_mw(self) -> int:
        """The power management limit in force now (``nvmlDeviceGetPowerManagementLimit``)."""
        return int(_nvml_call(self._nv, self._nv.nvmlDeviceGetPowerManagementLimit, self._h))

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """The lowest and highest limit the board accepts
        (``nvmlDeviceGetPowerManagementLimitConstraints``)."""
        lo, hi = _nvml_call(self._nv, self._nv.nvmlDeviceGetPowerManagementLimitConstraints, self._h)
        return int(lo), int(hi)

    def set_power_limit_mw(self, mw: int) -> None:
        """Set the limit (``nvmlDeviceSetPowerManagementLimit``: root or CAP_SYS_ADMIN, else
        :class:`PermissionDenied`). It holds until set again or the driver reloads; the process
        ending does not undo it."""
        _nvml_call(self._nv, self._nv.nvmlDeviceSetPowerManagementLimit, self._h, int(mw))

    # -- the Channel contract ----------------------------------------------------------------
    def poll(self, t: float, slow: bool) -> list[Point]:
        try:
            return self._poll(t, slow)
        finally:
            self._plan_wake(self._clock())

    def finishing(self) -> None:
        """The run is over (the engine's final reading): date the start-up reads now."""
        self._finishing = True

    @property
    def read_pending(self) -> bool:
        """A counter read asked for is not taken yet (a refresh could have fallen inside it)."""
        return self._counter_due

    def _poll(self, t: float, slow: bool) -> list[Point]:
        watts, when = self._read_power()
        self._last_power = watts
        if not self.has_counter:
            return [] if when is None else self._integrate(when, watts)
        if when is not None and (not self._shape or when > self._shape[-1][0]):
            self._shape.append((when, watts))
        if slow and not self._counter_due:
            self._counter_due, self._due_since, self._tries = True, t, 0
        points: list[Point] = []
        if self._counter_t is None:
            if self._firsts and self._firsts_datable(t):
                points = self._date_firsts()
            else:
                # The refresh phase is not known yet, or only loosely: a value could be from any
                # time in the last 100 ms. Keep a few start-up reads, at different phases of the
                # refresh (FIRSTS_APART_S apart), and date them once the phase is known closely
                # (_firsts_datable): the run's first step is measured from the first of them.
                # The slow cadence's reads meanwhile are kept too, to date with them.
                if self._counter_due or (self._firsts and len(self._firsts) < FIRST_READS
                                         and t - self._firsts[-1][0] >= FIRSTS_APART_S):
                    start = self._clock()
                    mj = self._read_counter_mj()
                    self._firsts.append((start, self._clock(), mj))
                    self._counter_due = False
                return []
        if not self._counter_due:
            return points
        read = self._clear_read()
        if read is None:
            return points  # left to the next poll
        self._counter_due = False
        mj, tick, error = read
        if self._counter_t is not None and tick <= self._counter_t:
            return points  # no NVML update since the last read: nothing new to finalize
        return points + self._on_counter(tick, mj, error)

    def _firsts_datable(self, now: float) -> bool:
        """The start-up reads are dated once the tick bracket is narrow (the first change seen
        brackets a tick only within the ~50 ms between two polls: a read would be in doubt, and
        dated up to 25 ms off) or a second has passed (a loaded host's brackets narrow slowly)."""
        return ((self._tick is not None and self._dating_error_s() <= FIRSTS_BRACKET_S)
                or now - self._firsts[0][0] >= FIRSTS_WAIT_S or self._finishing)

    def _date_firsts(self) -> list[Point]:
        """Date the start-up reads now that the phase is known. A read no refresh can have come
        during is dated at the refresh before it. A read in doubt (a refresh may have come during
        it: its value is that refresh's or the one before's) is dated by the next clear read when
        that one describes the refresh in question: the same value, that refresh; another, the one
        before (the counter moves at every refresh). Left out otherwise: a CI run that started
        its timeline at the next read lost the run's first 22 ms. If none is clear, the first,
        dated by its middle, a whole period in doubt."""
        firsts, self._firsts = self._firsts, []
        if self._counter_t is not None or not firsts:
            return []
        clear = [(i, self._latest_tick(a), mj) for i, (a, b, mj) in enumerate(firsts)
                 if self._clear(a, b)]
        if not clear:
            start, end, mj = firsts[0]
            # phase known: one refresh or the one before; unknown: half a period and half the read
            error = UPDATE_PERIOD_S if self._tick_lo is not None else (end - start) / 2.0
            return self._on_counter(self._latest_tick((start + end) / 2.0), mj, error)
        dated: list[tuple[float, int]] = []
        for i, (a, b, mj) in enumerate(firsts):
            if self._clear(a, b):
                dated.append((self._latest_tick(a), mj))
                continue
            later = next(((t, v) for j, t, v in clear if j > i), None)
            refresh = self._latest_tick(self._zone(a)[1])  # the one that may have come during it
            if later is not None and abs(later[0] - refresh) < UPDATE_PERIOD_S / 2.0:
                dated.append((refresh if mj == later[1] else refresh - UPDATE_PERIOD_S, mj))
        points: list[Point] = []
        for tick, mj in dated:
            if self._counter_t is None or tick > self._counter_t:
                points += self._on_counter(tick, mj)
        return points

    def salvage(self) -> list[Point]:
        """What the start-up reads hold, dated as well as can be now: the engine calls it when the
        GPU is lost before they were (its energy so far is kept, not dropped)."""
        try:
            return self._date_firsts()
        except Exception:  # noqa: BLE001 - salvage is best effort; the loss is recorded anyway
            return []

    def _integrate(self, t: float, watts: float) -> list[Point]:
        if not self._shape:
            self._shape = [(t, watts)]
            return [(t, 0.0)]
        tp, wp = self._shape[-1]
        if t <= tp:
            return []
        pts = shape_points(tp, t, [(tp, wp), (t, watts)], None)
        start = self._energy_j
        self._energy_j += pts[-1][1]
        self._shape = [(t, watts)]
        return [(x, start + e) for x, e in pts]

    def _on_counter(self, tc: float, mj: int, read_error: float = 0.0) -> list[Point]:
        self.max_dating_error_s = max(self.max_dating_error_s,
                                      self._dating_error_s() + read_error)
        prev_mj, prev_t = self._counter_mj, self._counter_t
        self._counter_mj, self._counter_t = mj, tc
        if prev_mj is None or prev_t is None:
            # keep the power shape from this point on (and the sample that holds at it)
            before = [x for x in self._shape if x[0] <= tc]
            self._shape = before[-1:] + [x for x in self._shape if x[0] > tc]
            return [(tc, 0.0)]
        delta_j = (mj - prev_mj) / 1000.0
        if delta_j < 0:
            # The counter went backwards: the driver was reloaded or the GPU reset. The hardware
            # count for this interval is lost; fall back to the power integral for it.
            raise CounterReset(f"NVML energy counter went backwards ({prev_mj} -> {mj} mJ); "
                               "interval estimated from instant power",
                               self._spread(prev_t, tc, None))
        return self._spread(prev_t, tc, delta_j)

    def close(self) -> None:
        self._shape = []


def _middle(lo: float, hi: float) -> tuple[float, float]:
    """When a probe read in a window serves (from an eighth in) and when it is best (its middle):
    a read anywhere inside cuts it, one in the middle by half."""
    return lo + (hi - lo) / 8.0, (lo + hi) / 2.0


# -- discovery ---------------------------------------------------------------------------------

def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _mig_enabled(pynvml: ModuleType, handle: Any) -> bool:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        return bool(current == getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1))
    except (pynvml.NVMLError, AttributeError):
        return False


def _visible(env: dict[str, str], uuids: list[str]) -> list[tuple[int, bool]]:
    """NVML indices of the GPUs CUDA makes visible, in CUDA ordinal order, each with a MIG flag.

    ``CUDA_VISIBLE_DEVICES`` holds indices, UUIDs (``GPU-...``, prefixes allowed, as CUDA
    accepts) or MIG UUIDs (``MIG-...``, whose parent GPU NVML can only report whole). CUDA stops
    at the first invalid entry, and so does this. Indices map to NVML's PCI order, which is
    CUDA's order when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (and on any node of identical GPUs).
    """
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [(i, False) for i in range(len(uuids))]
    out: list[tuple[int, bool]] = []
    for entry in (e.strip() for e in raw.split(",")):
        if (entry.isascii() and entry.isdigit()) and int(entry) < len(uuids):
            out.append((int(entry), False))
        elif entry.startswith("GPU-"):
            hits = [i for i, u in enumerate(uuids) if u.startswith(entry)]
            if len(hits) != 1:
                break
            out.append((hits[0], False))
        elif entry.startswith("MIG-"):
            # A MIG UUID names a slice; NVML's handle for it cannot report energy. Which parent?
            # With one MIG-enabled GPU visible it is unambiguous; otherwise we cannot tell.
            out.append((-1, True))
        else:
            break
    return out


#: Per pynvml module, NVML's error when its library is not on this host: looked for once per
#: process (a failed load searches the library path again at every start; no driver appears
#: under a running process).
_NO_LIBRARY: dict[ModuleType, str] = {}


def open_gpus(gpus: tuple[int | str, ...] | None, env: dict[str, str] | None = None,
              pynvml: ModuleType | None = None) -> tuple[list[NvmlGpu], list[Note]]:
    """The GPUs to measure: those named in ``gpus`` (CUDA ordinals or UUIDs), else every visible
    one, else (under a launcher with several visible GPUs) this local rank's GPU.

    No NVML or no GPU is a normal state: it returns no channels and a note saying why. Naming a
    GPU that does not exist raises :class:`ConfigError`.
    """
    env = dict(os.environ) if env is None else env
    notes: list[Note] = []
    if pynvml is None:
        try:
            import pynvml as _pynvml  # lazy: only when a tracker starts
        except ImportError:
            return [], [Note("info", "gpu", "nvidia-ml-py is not installed: no NVIDIA GPU measured",
                             "pip install nvidia-ml-py")]
        pynvml = _pynvml
    unavailable = _NO_LIBRARY.get(pynvml)
    if unavailable is None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            unavailable = str(e)
            if getattr(e, "value", None) == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1):
                _NO_LIBRARY[pynvml] = unavailable
    if unavailable is not None:
        if gpus:
            raise ConfigError("gpus", ",".join(map(str, gpus)), f"NVML unavailable ({unavailable})")
        return [], [Note("info", "gpu", f"no NVIDIA GPU measured: NVML unavailable ({unavailable})",
                         "install the NVIDIA driver; in a container pass the GPUs (--gpus all)")]
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
    except pynvml.NVMLError as e:
        return [], [Note("warning", "gpu", f"NVML failed while listing GPUs: {e}", "see `greentrack doctor`")]
    visible = _visible(env, uuids)
    if any(idx < 0 for idx, _ in visible):
        mig_parents = [i for i, h in enumerate(handles) if _mig_enabled(pynvml, h)]
        resolved = []
        for idx, is_mig in visible:
            if idx < 0 and len(mig_parents) == 1:
                idx = mig_parents[0]
            if idx >= 0 and (idx, is_mig) not in resolved:
                resolved.append((idx, is_mig))
        if any(idx < 0 for idx, _ in visible) and len(mig_parents) != 1:
            notes.append(Note("warning", "gpu", "CUDA_VISIBLE_DEVICES names MIG slices whose parent "
                              "GPU cannot be identified: not measured",
                              "NVML cannot measure a MIG slice; measure the whole GPU by index"))
        visible = resolved
    chosen = _choose(gpus, visible, uuids, env)
    channels: list[NvmlGpu] = []
    for ordinal, nvml_index in chosen:
        try:
            channels.append(NvmlGpu(pynvml, handles[nvml_index], nvml_index, ordinal=ordinal))
        except (SamplerError, pynvml.NVMLError) as e:
            notes.append(Note("warning", "gpu", f"GPU {ordinal} (NVML {nvml_index}) not measured: {e}",
                              "see `greentrack doctor`"))
    for ch in channels:
        if ch.info.details.get("mig"):
            notes.append(Note("warning", "gpu", f"{ch.info.device}: {ch.info.details['mig_note']}",
                              "report MIG runs as whole-GPU energy, or disable MIG to attribute"))
        if not ch.has_counter:
            notes.append(Note("info", "gpu", f"{ch.info.device}: no energy counter (pre-Volta); "
                              "energy is integrated from power readings", ""))
    return channels, notes


def _choose(gpus: tuple[int | str, ...] | None, visible: list[tuple[int, bool]], uuids: list[str],
            env: dict[str, str]) -> list[tuple[int, int]]:
    """(CUDA ordinal, NVML index) pairs to measure."""
    ordinals = list(enumerate(idx for idx, _ in visible))
    if gpus:
        out = []
        for g in gpus:
            if isinstance(g, int):
                if g >= len(ordinals):
                    listing = ", ".join(str(o) for o, _ in ordinals) or "none"
                    raise ConfigError("gpus", g, f"no such GPU; visible CUDA ordinals: {listing}")
                out.append(ordinals[g])
            else:
                hits = [(o, i) for o, i in ordinals if uuids[i].startswith(g)]
                if len(hits) != 1:
                    raise ConfigError("gpus", g, "matches no visible GPU UUID (see `greentrack doctor`)")
                out.append(hits[0])
        return out
    local_rank = launcher_int("LOCAL_RANK", -1, env)
    local_world = launcher_int("LOCAL_WORLD_SIZE", 2, env)
    # One process per GPU (torchrun, Lightning DDP): each rank measures its own GPU.
    if local_rank >= 0 and local_world > 1 and len(ordinals) > 1:
        return [ordinals[local_rank % len(ordinals)]]
    return ordinals


@functools.lru_cache(maxsize=1)
def driver_version() -> str | None:
    try:
        import pynvml
        return _text(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # noqa: BLE001 - only for metadata
        return None
