"""A fake ``pynvml`` module that behaves like NVML on an H100, for machines without a GPU.

It is built from the real ``pynvml`` module: the same error classes (``NVMLError`` subclasses with
the same codes), constants and ctypes structs, so code under test cannot tell the two apart at
the module boundary. What it simulates, from measurements on an H100 80GB HBM3, driver 580.159.04, 2026-11-22 (the refresh and
25 ms averaging as Yang et al., arXiv 2312.02741, found on A100/H100; ``bench/nvml_probe.py`` checks
the rest on a GPU host):

* the total-energy counter (mJ since "driver load") updates every 100 ms, and can cost
  milliseconds per call: waiting (``counter_cost_s``, a sleep) or spinning (``counter_cpu_s``,
  CPU time; whether a real driver waits or spins is not yet measured);
* ``NVML_FI_DEV_POWER_INSTANT`` updates every 100 ms and is the mean of only the last 25 ms;
* ``nvmlDeviceGetPowerUsage`` is a 1 s moving average on Hopper (``avg_window_s``);
* pre-Volta GPUs: the counter raises NotSupported and the instant field returns NotSupported;
* faults: the GPU falls off the bus (GpuIsLost), the counter resets (driver reload), reads become
  slow or hang, NVML is missing or refuses (NoPermission);
* processes (:class:`FakeProcess`): ``nvmlDeviceGetComputeRunningProcesses`` lists those alive,
  as the real call's friendly objects (``pid``, ``usedGpuMemory``...); the driver takes a
  per-process utilization sample every ``util_period_s`` (the real period is not documented) for
  each process with non-zero SM utilization in it, keeps the last ``util_buffer`` periods, and
  ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`` / its successor
  ``nvmlDeviceGetProcessesUtilizationInfo`` return the samples newer than ``lastSeenTimeStamp``
  (CPU timestamps in microseconds since the epoch; the real binding's structs, fields and
  argument types as nvidia-ml-py 13.x's ``pynvml.py`` has them: ``c_nvmlProcessUtilizationSample_t``
  pid/timeStamp/smUtil/memUtil/encUtil/decUtil and ``c_nvmlProcessUtilizationInfo_v1_t`` with
  jpgUtil/ofaUtil, a list of structs, ``timeStamp`` passed as ``c_ulonglong``) or raise NotFound
  when there are none. NVML's API reference describes one sample per process with non-zero
  utilization in the last sample period; this fake returns every buffered sample newer than
  ``lastSeenTimeStamp``. Which one a real driver does, whether it lists a process in a period it
  left the SMs idle (smUtil 0), and its sampling period are what ``bash bench/gpu_checks.sh
  --quick`` measures (rows ``util_samples_per_call``, ``util_zero_samples``, ``util_period``). ``util_api``: ``"both"``, ``"legacy"`` (the successor is missing: FunctionNotFound, as on
  drivers before it) or None (NotSupported, as under MIG or before Maxwell).
* the power limit, in milliwatts as NVML has it: ``nvmlDeviceGetPowerManagementLimit``,
  ``...LimitConstraints`` (min, max), ``...DefaultLimit``, ``nvmlDeviceGetEnforcedPowerLimit`` and
  ``nvmlDeviceSetPowerManagementLimit``, which raises NoPermission for a process without the
  privilege (``privileged=False``) and InvalidArgument outside the constraints. The limit is
  driver state, not process state: with ``limit_file`` it is kept in a file, so a test sees what
  a killed process left set. :meth:`FakeGpu.work` plays a step whose power and time follow the
  limit (:func:`capped`).

Power follows a :class:`PowerTrace` on the fake's clock, so tests know the exact true energy.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import os
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

UPDATE_S = 0.1


class PowerTrace:
    """Piecewise-constant power: ``[(duration_s, watts), ...]`` from ``t0``, then ``idle_w``."""

    def __init__(self, segments: list[tuple[float, float]], idle_w: float = 77.0,
                 t0: float = 0.0) -> None:
        self.t0, self.idle_w = t0, idle_w
        self.edges = [t0]
        self.watts = []
        for d, w in segments:
            self.edges.append(self.edges[-1] + d)
            self.watts.append(w)

    def power(self, t: float) -> float:
        if t < self.t0 or t >= self.edges[-1]:
            return self.idle_w
        for i, w in enumerate(self.watts):
            if t < self.edges[i + 1]:
                return w
        return self.idle_w

    def energy(self, t: float) -> float:
        """Exact joules from the trace start (idle before t0 counts from t0 - 1000 s)."""
        base = -1000.0 + self.t0
        total = 0.0
        if t <= self.t0:
            return (t - base) * self.idle_w
        total += (self.t0 - base) * self.idle_w
        for i, w in enumerate(self.watts):
            a, b = self.edges[i], self.edges[i + 1]
            if t <= a:
                return total
            total += (min(t, b) - a) * w
        if t > self.edges[-1]:
            total += (t - self.edges[-1]) * self.idle_w
        return total

    def mean(self, a: float, b: float) -> float:
        return (self.energy(b) - self.energy(a)) / (b - a) if b > a else self.power(a)

    @staticmethod
    def bursty(t0: float = 0.0) -> "PowerTrace":
        """The 17 s trace measured on an H100 80GB HBM3, driver 580.159.04, 2026-11-22: 1 s busy / 1 s idle three times,
        then ten 50 ms bursts; 77 W idle, 731 W peak."""
        segs: list[tuple[float, float]] = [(1.0, 77.0)]
        for _ in range(3):
            segs += [(1.0, 731.0), (1.0, 77.0)]
        for _ in range(10):
            segs += [(0.05, 731.0), (0.45, 77.0)]
        segs += [(5.0, 77.0)]
        return PowerTrace(segs, idle_w=77.0, t0=t0)


class LiveTrace:
    """Power set as it happens by the code that plays the GPU's workload (``set(watts)``), on
    ``time.monotonic``: what the fake NVML reads while a benchmark's "GPU" work runs on the CPU.
    Duck-types :class:`PowerTrace`; the sampler thread reads it while the workload writes it."""

    def __init__(self, idle_w: float = 80.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_w, self.clock = idle_w, clock
        self._lock = threading.Lock()
        # change times, the power from each, and the energy up to each (from 1000 s before)
        t0 = clock()
        self._at, self._w, self._j = [t0 - 1000.0], [idle_w], [0.0]

    def set(self, watts: float) -> None:
        with self._lock:
            t = max(self.clock(), self._at[-1])
            self._j.append(self._j[-1] + (t - self._at[-1]) * self._w[-1])
            self._at.append(t)
            self._w.append(watts)

    def _index(self, t: float) -> int:
        return max(0, bisect.bisect_right(self._at, t) - 1)

    def power(self, t: float) -> float:
        with self._lock:
            return self._w[self._index(t)]

    def energy(self, t: float) -> float:
        with self._lock:
            i = self._index(t)
            return self._j[i] + (t - self._at[i]) * self._w[i]

    def mean(self, a: float, b: float) -> float:
        return (self.energy(b) - self.energy(a)) / (b - a) if b > a else self.power(a)


@dataclass
class FakeProcess:
    """A process using the GPU from ``start`` to ``end`` (fake clock) at ``sm_util`` percent."""

    pid: int
    sm_util: float = 0.0
    start: float = float("-inf")
    end: float = float("inf")
    used_memory: int = 1 << 30

    def alive(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    trace: PowerTrace | LiveTrace = field(default_factory=lambda: PowerTrace([], idle_w=77.0))
    has_counter: bool = True
    has_instant: bool = True
    mig: bool | None = False  # None: MIG not supported (raises NotSupported)
    avg_window_s: float = 1.0
    counter_base_mj: int = 987_654_321
    counter_cost_s: float = 0.0  # wall time of a counter read spent waiting (sleep)
    counter_cpu_s: float = 0.0  # CPU time of a counter read spent spinning (a busy driver)
    lost_at: float | None = None  # fake-clock time after which every read raises GpuIsLost
    reset_at: float | None = None  # counter restarts from 0 at this time (driver reload)
    fail_reads: int = 0  # the next N reads raise NVMLError_Unknown
    hang: threading.Event | None = None  # reads block until this event is set
    noise_w: float = 1.5  # sensor jitter per 100 ms update, as a real board's readings show
    # The energy counter's refresh relative to the power sensor's, in seconds. 0 assumes they
    # refresh together (what greentrack's tick dating assumes; not yet checked on an H100).
    counter_phase_s: float = 0.0
    processes: list[FakeProcess] = field(default_factory=list)
    # False: nvmlDeviceGetComputeRunningProcesses is NotSupported; "mismatch": the driver lacks its
    # _v3 entry point, which the binding's @throwOnVersionMismatch turns into
    # NVMLLibraryMismatchError (an Exception, not an NVMLError)
    list_processes: bool | str = True
    util_api: str | None = "both"
    util_period_s: float = 0.2
    util_buffer: int = 10
    # every buffered sample newer than the timestamp in one answer (True), or one entry a process as
    # NVML's API reference describes (False, the default; see FakeNvml.one_per_process)
    util_every_sample: bool = False
    calls: dict[str, int] = field(default_factory=dict)
    # -- the power limit (mW), its constraints and who may set it --
    limit_mw: int = 700_000
    default_limit_mw: int = 700_000
    min_limit_mw: int = 200_000
    max_limit_mw: int = 700_000
    privileged: bool = True  # False: nvmlDeviceSetPowerManagementLimit raises NoPermission
    limit_supported: bool = True  # False: every limit call raises NotSupported
    limit_file: str | None = None  # keep the limit here (driver state outlives a process)
    limit_sets: list[int] = field(default_factory=list)  # every limit set, in order
    static_w: float = 100.0  # the board's power at the lowest clock: what a cap cannot remove

    def current_limit_mw(self) -> int:
        if self.limit_file is not None:
            try:
                with open(self.limit_file) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                pass
        return self.limit_mw

    def store_limit_mw(self, mw: int) -> None:
        self.limit_mw = mw
        self.limit_sets.append(mw)
        if self.limit_file is not None:
            with open(self.limit_file + ".tmp", "w") as f:
                f.write(str(mw))
            os.replace(self.limit_file + ".tmp", self.limit_file)

    def work(self, base_s: float, demand_w: float) -> tuple[float, float]:
        """Play one step of a GPU kept busy (the next step's kernels are queued): a step that
        takes ``base_s`` at ``demand_w`` uncapped runs at the capped power for the capped time
        (:func:`capped`) under the limit in force when it starts. Needs a :class:`LiveTrace`;
        the caller sets it back to idle when the work ends. Returns (W, s)."""
        assert isinstance(self.trace, LiveTrace), "work() plays on a LiveTrace"
        watts, seconds = capped(base_s, demand_w, self.current_limit_mw() / 1000.0, self.static_w)
        self.trace.set(watts)
        time.sleep(seconds)
        return watts, seconds


def capped(base_s: float, demand_w: float, limit_w: float, static_w: float) -> tuple[float, float]:
    """Power and time of a step under a power cap, for a compute-bound step.

    Dynamic power goes with the cube of the clock (P = static + dynamic x r^3, r the clock's share
    of its uncapped value: voltage follows frequency); the step's time goes with 1 / r. Under a
    cap the board lowers r until P fits: r = ((limit - static) / (demand - static))^(1/3).
    """
    if limit_w >= demand_w:
        return demand_w, base_s
    r = ((limit_w - static_w) / (demand_w - static_w)) ** (1.0 / 3.0)
    return limit_w, base_s / r


class FakeNvml:
    """The fake's state; :meth:`module` returns a module object to put in ``sys.modules``."""

    def __init__(self, gpus: list[FakeGpu], clock: Callable[[], float] = time.monotonic,
                 init_error: int | None = None, driver: str = "580.159.04",
                 tick_phase: float = 0.0371) -> None:
        self.gpus, self.clock, self.init_error, self.driver = gpus, clock, init_error, driver
        # The driver's 100 ms refresh runs on its own clock: its phase against the reader's polls
        # is arbitrary (never exactly aligned, as a virtual clock would otherwise make it).
        self.tick_phase = tick_phase
        self.initialized = 0
        #: NVML's process samples carry CPU timestamps in microseconds since the epoch.
        self.epoch_offset = time.time() - time.monotonic()

    # -- helpers -----------------------------------------------------------------------------
    def _check(self, gpu: FakeGpu, what: str) -> float:
        gpu.calls[what] = gpu.calls.get(what, 0) + 1
        if not self.initialized:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        if gpu.hang is not None:
            gpu.hang.wait()
        t = self.clock()
        if gpu.lost_at is not None and t >= gpu.lost_at:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        if gpu.fail_reads > 0:
            gpu.fail_reads -= 1
            raise _real.NVMLError(_real.NVML_ERROR_UNKNOWN)
        return t

    def _tick(self, t: float) -> float:
        return math.floor((t - self.tick_phase) / UPDATE_S) * UPDATE_S + self.tick_phase

    def sensed_w(self, gpu: FakeGpu, mean_w: float, q: float) -> float:
        """Power as the sensor reports it for update ``q``: the true mean plus a fixed per-update
        jitter (deterministic, so tests are repeatable). The counter carries no jitter."""
        k = int(round((q - self.tick_phase) / UPDATE_S))
        return mean_w + gpu.noise_w * (((k * 2654435761) % 1000) / 500.0 - 1.0)

    def counter_mj(self, gpu: FakeGpu, t: float) -> int:
        q = self._tick(t - gpu.counter_phase_s) + gpu.counter_phase_s
        if gpu.reset_at is not None and t >= gpu.reset_at:
            return int((gpu.trace.energy(q) - gpu.trace.energy(gpu.reset_at)) * 1000)
        return gpu.counter_base_mj + int(gpu.trace.energy(q) * 1000)

    def util_samples(self, gpu: FakeGpu, t: float, last_seen_us: int) -> list[tuple[int, int, int]]:
        """``(pid, timestamp_us, sm_util)`` of the buffered samples newer than ``last_seen_us``."""
        q = math.floor(t / gpu.util_period_s)
        out = []
        for k in range(q - gpu.util_buffer + 1, q + 1):
            a, b = (k - 1) * gpu.util_period_s, k * gpu.util_period_s
            stamp = int(round((b + self.epoch_offset) * 1e6))
            if stamp <= last_seen_us:
                continue
            for p in gpu.processes:
                if p.alive(a) or p.alive(b - 1e-9):
                    if int(p.sm_util) > 0:
                        out.append((p.pid, stamp, int(p.sm_util)))
        return out

    @staticmethod
    def one_per_process(found: list[tuple[int, int, int]], latest: bool) -> list[tuple[int, int, int]]:
        """One ``(pid, timestamp_us, sm_util)`` a process, stamped with its newest sample. NVML's
        API reference: nvmlDeviceGetProcessUtilization returns "one utilization sample structure
        ... per process running, that had some non-zero utilization during the last sample period"
        (``latest``: that period's value); nvmlDeviceGetProcessesUtilizationInfo reads "utilization
        based on all the samples" since ``lastSeenTimeStamp`` (here: their mean).
        https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html"""
        by_pid: dict[int, list[tuple[int, int]]] = {}
        for pid, ts, sm in found:
            by_pid.setdefault(pid, []).append((ts, sm))
        out = []
        for pid, rows in by_pid.items():
            rows.sort()
            value = rows[-1][1] if latest else round(sum(sm for _, sm in rows) / len(rows))
            out.append((pid, rows[-1][0], int(value)))
        return out

    # -- the module --------------------------------------------------------------------------
    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        for name in dir(_real):
            if name.startswith(("NVML", "c_nvml", "nvmlExceptionClass")):  # NVMLError*, constants
                setattr(m, name, getattr(_real, name))
        fake = self

        def nvmlInit() -> None:
            if fake.init_error is not None:
                raise _real.NVMLError(fake.init_error)
            fake.initialized += 1

        def nvmlShutdown() -> None:
            fake.initialized = max(0, fake.initialized - 1)

        def nvmlDeviceGetCount() -> int:
            if not fake.initialized:
                raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
            return len(fake.gpus)

        def nvmlDeviceGetHandleByIndex(i: int) -> FakeGpu:
            if not 0 <= i < len(fake.gpus):
                raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
            return fake.gpus[i]

        def nvmlDeviceGetHandleByUUID(uuid: bytes | str) -> FakeGpu:
            u = uuid.decode() if isinstance(uuid, bytes) else uuid
            for g in fake.gpus:
                if g.uuid == u:
                    return g
            raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)

        def nvmlDeviceGetName(h: FakeGpu) -> str:
            fake._check(h, "name")
            return h.name

        def nvmlDeviceGetUUID(h: FakeGpu) -> str:
            fake._check(h, "uuid")
            return h.uuid

        def nvmlDeviceGetTotalEnergyConsumption(h: FakeGpu) -> int:
            t = fake._check(h, "energy")
            if not h.has_counter:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
            if h.counter_cost_s:
                time.sleep(h.counter_cost_s)
            if h.counter_cpu_s:
                end = time.thread_time() + h.counter_cpu_s
                while time.thread_time() < end:
                    pass
            return fake.counter_mj(h, t)

        def nvmlDeviceGetPowerUsage(h: FakeGpu) -> int:
            t = fake._check(h, "power_usage")
            q = fake._tick(t)
            return int(fake.sensed_w(h, h.trace.mean(q - h.avg_window_s, q), q) * 1000)

        def nvmlDeviceGetFieldValues(h: FakeGpu, ids: list[int]) -> object:
            t = fake._check(h, "field_values")
            values = (_real.c_nvmlFieldValue_t * len(ids))()
            for i, fid in enumerate(ids):
                values[i].fieldId = fid
                values[i].timestamp = int(t * 1e6)
                if fid == _real.NVML_FI_DEV_POWER_INSTANT and h.has_instant:
                    q = fake._tick(t)
                    values[i].valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
                    values[i].value.uiVal = int(fake.sensed_w(h, h.trace.mean(q - 0.025, q), q) * 1000)
                    values[i].nvmlReturn = _real.NVML_SUCCESS
                else:
                    values[i].nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
            return values

        def nvmlDeviceGetMigMode(h: FakeGpu) -> list[int]:
            fake._check(h, "mig")
            if h.mig is None:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
            return [int(h.mig), int(h.mig)]

        def nvmlSystemGetDriverVersion() -> str:
            return fake.driver

        def _limit_check(h: FakeGpu, what: str) -> None:
            fake._check(h, what)
            if not h.limit_supported:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)

        def nvmlDeviceGetPowerManagementLimit(h: FakeGpu) -> int:
            _limit_check(h, "limit")
            return h.current_limit_mw()

        def nvmlDeviceGetEnforcedPowerLimit(h: FakeGpu) -> int:
            _limit_check(h, "enforced_limit")
            return h.current_limit_mw()

        def nvmlDeviceGetPowerManagementDefaultLimit(h: FakeGpu) -> int:
            _limit_check(h, "default_limit")
            return h.default_limit_mw

        def nvmlDeviceGetPowerManagementLimitConstraints(h: FakeGpu) -> list[int]:
            _limit_check(h, "limit_constraints")
            return [h.min_limit_mw, h.max_limit_mw]

        def nvmlDeviceSetPowerManagementLimit(h: FakeGpu, limit: int) -> None:
            # the real binding passes c_uint(limit): an int of milliwatts
            _limit_check(h, "set_limit")
            if not h.privileged:
                raise _real.NVMLError(_real.NVML_ERROR_NO_PERMISSION)
            mw = int(limit)
            if mw != limit or not h.min_limit_mw <= mw <= h.max_limit_mw:
                raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
            h.store_limit_mw(mw)
        def nvmlDeviceGetComputeRunningProcesses(h: FakeGpu) -> list[object]:
            t = fake._check(h, "processes")
            if h.list_processes == "mismatch":
                raise _real.NVMLLibraryMismatchError(
                    "Unversioned function called and the pyNVML version does not match the NVML "
                    "lib version. Either use matching pyNVML and NVML lib versions or use a "
                    "versioned function such as nvmlDeviceGetComputeRunningProcesses_v2")
            if not h.list_processes:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
            return [_real.nvmlStructToFriendlyObject(_real.c_nvmlProcessInfo_t(
                pid=p.pid, usedGpuMemory=p.used_memory, gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF)) for p in h.processes if p.alive(t)]

        def _samples(h: FakeGpu, timeStamp: int, what: str) -> list[tuple[int, int, int]]:
            # the binding passes c_ulonglong(timeStamp): a float is a TypeError there, a negative
            # number wraps around (nvidia-ml-py 13.x, pynvml.py)
            last_seen = ctypes.c_ulonglong(timeStamp).value
            t = fake._check(h, what)
            if h.util_api is None:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
            found = fake.util_samples(h, t, last_seen)
            if not found:
                raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)
            if not h.util_every_sample:  # one entry a process, as NVML's API reference says
                return fake.one_per_process(found, latest=what == "process_util")
            return found

        def nvmlDeviceGetProcessUtilization(h: FakeGpu, timeStamp: int) -> list[object]:
            return [_real.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=ts, smUtil=sm,
                                                           memUtil=sm // 2, encUtil=0, decUtil=0)
                    for pid, ts, sm in _samples(h, timeStamp, "process_util")]

        def nvmlDeviceGetProcessesUtilizationInfo(h: FakeGpu, timeStamp: int) -> list[object]:
            if h.util_api == "legacy":  # _nvmlGetFunctionPointer on a driver without it
                h.calls["processes_util"] = h.calls.get("processes_util", 0) + 1
                raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
            return [_real.c_nvmlProcessUtilizationInfo_v1_t(
                timeStamp=ts, pid=pid, smUtil=sm, memUtil=sm // 2, encUtil=0, decUtil=0,
                jpgUtil=0, ofaUtil=0) for pid, ts, sm in _samples(h, timeStamp, "processes_util")]

        for fn in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
                   nvmlDeviceGetHandleByUUID, nvmlDeviceGetName, nvmlDeviceGetUUID,
                   nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetPowerUsage,
                   nvmlDeviceGetFieldValues, nvmlDeviceGetMigMode, nvmlSystemGetDriverVersion,
                   nvmlDeviceGetPowerManagementLimit, nvmlDeviceGetEnforcedPowerLimit,
                   nvmlDeviceGetPowerManagementDefaultLimit,
                   nvmlDeviceGetPowerManagementLimitConstraints,
                   nvmlDeviceSetPowerManagementLimit,
                   nvmlDeviceGetComputeRunningProcesses, nvmlDeviceGetProcessUtilization,
                   nvmlDeviceGetProcessesUtilizationInfo):
            setattr(m, fn.__name__, fn)
        return m


class VirtualClock:
    """A clock tests advance by hand, for replaying seconds of trace in microseconds."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def wakes(self, channel: Any, until: float, take: Callable[[Any], None]) -> None:
        """Poll ``channel`` at each extra poll it asks for before ``until``, as the engine does for
        one channel: when it is wanted (``wake_by``, else ``wake_at``), unless ``until`` comes
        first (that poll serves); advancing this clock. ``take`` gets each poll's points."""
        wake_at = getattr(channel, "wake_at", None)
        wake_by = getattr(channel, "wake_by", wake_at)
        while wake_at is not None:
            wake = wake_by()
            if wake is None or wake >= until:
                return
            self.t = max(self.t + 1e-6, wake)
            take(channel.poll(self.t, slow=False))

    def drive(self, channel: Any, seconds: float, fast: float = 0.05, slow_every: int = 4) -> Any:
        """Poll ``channel`` as the engine would (a slow read every ``slow_every`` fast polls),
        advancing this clock from its time to ``seconds``; the channel's finalized points as a
        :class:`greentrack.engine.channelstate.Timeline`."""
        from greentrack.engine.channelstate import Timeline
        tl, i = Timeline(), 0
        while self.t <= seconds + 1e-9:
            tl.extend(channel.poll(self.t, slow=(i % slow_every == 0)))
            i += 1
            self.wakes(channel, round(i * fast, 9), tl.extend)
            self.t = max(self.t, round(i * fast, 9))
        return tl
