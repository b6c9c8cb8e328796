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
        self._first: tuple[float, int] | None = None  # first counter read, until the phase is known
        self._energy_j = 0.0
        self._shape: list[tuple[float, float]] = []  # (t, W) since the last counter read
        self._last_power: float | None = None
        self._last_mw: int | None = None
        self._prev_read: float | None = None  # when the previous instant-power read began
        self._tick: float | None = None  # latest NVML update instant seen (monotonic)
        self._tick_lo: float | None = None  # bounds of that instant, narrowed over detections
        self._tick_hi: float | None = None
        #: the widest dating error of any counter value so far (s): half the tick bracket in force
        #: when it was dated (half a period while the phase was unknown). A loaded host widens
        #: the brackets (reads further apart); the intersection narrows them again.
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

    def _read_power(self) -> tuple[float, float]:
        """Power in W, and the time it describes.

        NVML values describe its last ~100 ms update, not the moment of the read. When the value
        changes between two reads, the update happened after the earlier read began and before
        the later one ended: that bracket dates the update tick (timed around the reads
        themselves, so a sampler thread preempted before the read cannot misdate it),
        later ticks follow every 100 ms, and the same ticks date the energy counter (both refresh
        together). The instant field is the mean of the tick's last ~25 ms.
        """
        start = self._clock()
        if self.has_instant:
            mw = _nvml_call(self._nv, self._read_instant_mw)
        else:
            mw = _nvml_call(self._nv, self._nv.nvmlDeviceGetPowerUsage, self._h)
        if mw != self._last_mw:
            if self._prev_read is not None:  # a change seen between two reads dates a tick
                self._observe_tick(self._prev_read, self._clock())
            self._last_mw = mw
        self._prev_read = start
        when = self._latest_tick(start)
        if self.has_instant:
            when -= INSTANT_WINDOW_S / 2.0
        return float(mw) / 1000.0, when

    def _observe_tick(self, a: float, b: float) -> None:
        """A refresh happened in (a, b]. Intersect with the earlier bounds carried forward whole
        periods (polls are dithered, so intervals land at different phases and the intersection
        narrows to a few ms); allow 0.5 ms of drift per period; start over if they disagree."""
        if self._tick_lo is not None and self._tick_hi is not None:
            k = round(((a + b) - (self._tick_lo + self._tick_hi)) / 2.0 / UPDATE_PERIOD_S)
            slack = abs(k) * 0.0005
            lo = max(a, self._tick_lo + k * UPDATE_PERIOD_S - slack)
            hi = min(b, self._tick_hi + k * UPDATE_PERIOD_S + slack)
            if lo < hi:
                self._tick_lo, self._tick_hi = lo, hi
                self._tick = (lo + hi) / 2.0
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
        watts, when = self._read_power()
        self._last_power = watts
        if not self.has_counter:
            return self._integrate(when, watts)
        if not self._shape or when > self._shape[-1][0]:
            self._shape.append((when, watts))
        if not slow and (self._counter_t is not None or self._first is not None):
            return []
        t0 = self._clock()
        mj = int(_nvml_call(self._nv, self._nv.nvmlDeviceGetTotalEnergyConsumption, self._h))
        tc = (t0 + self._clock()) / 2.0  # the read takes milliseconds: take its middle
        if self._counter_t is None and self._first is None and self._tick is None:
            # The refresh phase is not known yet (no power change seen): this value could be
            # dated anywhere in the last 100 ms. Keep it; date it at the next counter read, by
            # which time the fast polls have usually seen a refresh.
            self._first = (tc, mj)
            return []
        points: list[Point] = []
        if self._first is not None:
            (ftc, fmj), self._first = self._first, None
            points = self._on_counter(self._latest_tick(ftc), fmj)
        tick = self._latest_tick(tc)
        if self._counter_t is not None and tick <= self._counter_t:
            return points  # no NVML update since the last read: nothing new to finalize
        return points + self._on_counter(tick, mj)

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

    def _on_counter(self, tc: float, mj: int) -> list[Point]:
        self.max_dating_error_s = max(self.max_dating_error_s, self._dating_error_s())
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
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        if gpus:
            raise ConfigError("gpus", ",".join(map(str, gpus)), f"NVML unavailable ({e})") from None
        return [], [Note("info", "gpu", f"no NVIDIA GPU measured: NVML unavailable ({e})",
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
