"""AMD Instinct GPUs through AMD SMI (ROCm's ``amdsmi`` Python package over ``libamd_smi.so``).

Method, chosen per GPU once at start and recorded:

* ``amdsmi-energy-counter``: ``amdsmi_get_energy_count`` returns the accumulator (a 64-bit count
  of ``counter_resolution`` microjoules, 15.3 uJ on current Instinct firmware) and its timestamp
  (ns). It is read on the slow cadence; between two reads the energy is distributed in proportion
  to the socket power (``amdsmi_get_power_info``: ``current_socket_power``, where the firmware gives
  it, else ``average_socket_power``; whole watts), polled on the fast cadence. Totals equal the
  counter's delta.
* ``amdsmi-power-integration``: no energy counter (``AMDSMI_STATUS_NOT_SUPPORTED``): the integral of
  the power readings, labelled as such.

Counter range: AMD SMI documents none. A count that steps back is taken as a wrap at 2^32 ticks
(65.5 kJ at 15.3 uJ, about 87 s at 750 W: the slow cadence reads far more often) when that gives at
most :data:`PLAUSIBLE_CAP_FACTOR` x the power cap over the interval, else as a wrap at 2^64, else
as a reset (the interval is then estimated from power and flagged, as NVML's counter reset is).

Partitions (MI300 compute partitions, CPX/DPX...): each partition is its own device to HIP and to
AMD SMI, but energy and power are the physical GPU's, read through its first partition. A
partition is measured as the whole GPU and labelled ``partition: whole-GPU energy``, like a MIG
slice on NVIDIA; two partitions of one GPU are measured once.

Visible devices follow ROCm: ``ROCR_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs) selects at the
runtime level, then ``HIP_VISIBLE_DEVICES`` (or ``CUDA_VISIBLE_DEVICES``, which HIP also reads)
indexes what is left; parsing stops at the first invalid entry. Indices are HIP's order
(``amdsmi_get_gpu_enumeration_info``'s ``hip_id`` where the library has it, else AMD SMI's order).

Tested on a fake built from the amdsmi 7.0.2 package's own function names, return dictionaries
and exceptions (``tests/fakes/fake_amdsmi.py``); not yet on an AMD GPU.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from greentrack.common.errors import DeviceLost, PermissionDenied, SamplerError
from greentrack.samplers._counter import CounterReset, CounterShaping
from greentrack.samplers._nvml import _choose
from greentrack.samplers.base import QUALITY_HIGH, QUALITY_MEDIUM, ChannelInfo, Note, Point

# amdsmi_status_t values (amdsmi_wrapper.py of the amdsmi package; stable across releases).
STATUS_NOT_SUPPORTED = 2
STATUS_NO_PERM = 10
STATUS_NOT_FOUND = 31
STATUS_DRIVER_NOT_LOADED = 34
STATUS_AMDGPU_RESTART_ERR = 54
#: A step back in the count is a wrap only if the energy it implies stays under this x the cap.
PLAUSIBLE_CAP_FACTOR = 2.0
#: The power assumed for that check when the power cap cannot be read.
FALLBACK_CAP_W = 1500.0
POWER_FIELDS = ("current_socket_power", "average_socket_power", "socket_power")
_T = TypeVar("_T")


def _amd_call(amdsmi: ModuleType, fn: Callable[..., _T], *args: Any) -> _T:
    """Call AMD SMI, translating its errors at the edge (as ``_nvml._nvml_call`` does NVML's)."""
    try:
        return fn(*args)
    except amdsmi.AmdSmiLibraryException as e:
        code = e.get_error_code()
        if code in (STATUS_NOT_FOUND, STATUS_DRIVER_NOT_LOADED, STATUS_AMDGPU_RESTART_ERR):
            raise DeviceLost(f"amdsmi: {_one_line(e)}") from e
        if code == STATUS_NO_PERM:
            raise PermissionDenied(f"amdsmi: {_one_line(e)}", "run with access to /dev/kfd and "
                                   "/dev/dri (the render group; container: --device /dev/kfd "
                                   "--device /dev/dri)") from e
        raise SamplerError(f"amdsmi: {_one_line(e)}") from e
    except amdsmi.AmdSmiException as e:
        raise SamplerError(f"amdsmi: {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _unsupported(e: SamplerError) -> bool:
    """True when AMD SMI answered ``AMDSMI_STATUS_NOT_SUPPORTED``: a capability, not a failure."""
    code = getattr(e.__cause__, "err_code", None)
    return code == STATUS_NOT_SUPPORTED


class AmdGpu(CounterShaping):
    """One physical AMD GPU (or the partition of one). See the module docstring for the method."""

    #: AMD SMI's refresh interval is not documented: wait one slow period's worth at the end.
    settle_s = 0.05

    def __init__(self, amdsmi: ModuleType, handle: Any, energy_handle: Any, *, ordinal: int,
                 identity: dict[str, Any], partition: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._smi = amdsmi
        self._h = energy_handle  # the physical GPU's first partition: where energy is read
        self._clock = clock
        self.uuid = str(identity.get("uuid") or "")
        self._counter: tuple[float, int, int] | None = None  # (t, ticks, timestamp_ns)
        self._energy_j = 0.0
        self._shape: list[tuple[float, float]] = []
        self._last_power: float | None = None
        self._started = False
        self.wraps = 0
        self.power_field = self._probe_power()
        first = self._probe_counter()
        self.has_counter = first is not None
        self.resolution_uj = float(first["counter_resolution"]) if first else None
        self.cap_w = self._power_cap_w()
        if self.has_counter:
            method = "amdsmi-energy-counter"
            source = (f"AMD SMI amdsmi_get_energy_count (accumulator x {self.resolution_uj:g} uJ, "
                      f"read every slow tick) shaped by amdsmi_get_power_info {self.power_field}")
            quality = f"{QUALITY_HIGH}: on-board energy accumulator"
        else:
            method = "amdsmi-power-integration"
            source = f"integral of AMD SMI amdsmi_get_power_info {self.power_field} (whole watts)"
            quality = f"{QUALITY_MEDIUM}: power polled, not counted; short bursts can be missed"
        details: dict[str, Any] = {**identity, "energy_counter": self.has_counter,
                                   "counter_resolution_uj": self.resolution_uj,
                                   "power_field": self.power_field, "power_cap_w": self.cap_w,
                                   "partition": partition}
        if partition:
            details["partition_note"] = (f"compute partition {partition}: AMD SMI reports the "
                                         "whole GPU's energy; per-partition energy is not measurable")
            method += "; partition: whole-GPU energy"
        self.info = ChannelInfo(kind="gpu", device=f"gpu{ordinal}", name=str(identity.get("name")),
                                method=method, measured=True, source=source, uncertainty=quality,
                                host_scope=False, details=details)
        del handle  # identity came from it; reads go to energy_handle

    # -- reads -------------------------------------------------------------------------------
    def _probe_power(self) -> str | None:
        """The power field this GPU fills; None if it gives none. A refused or failed read is not
        "no power": it raises, and the GPU is not measured (a note says why)."""
        try:
            info = _amd_call(self._smi, self._smi.amdsmi_get_power_info, self._h)
        except SamplerError as e:
            if _unsupported(e):
                return None
            raise
        for name in POWER_FIELDS:
            if isinstance(info.get(name), int) and info[name] > 0:
                return name
        return None

    def _probe_counter(self) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = _amd_call(self._smi, self._smi.amdsmi_get_energy_count, self._h)
            return out
        except SamplerError as e:
            if _unsupported(e):
                return None
            raise

    def _power_cap_w(self) -> float | None:
        try:
            cap = _amd_call(self._smi, self._smi.amdsmi_get_power_cap_info, self._h)["power_cap"]
            return float(cap) / 1e6 if isinstance(cap, (int, float)) and cap > 0 else None  # uW
        except (SamplerError, KeyError, AttributeError):
            return None

    def _read_power(self) -> float | None:
        if self.power_field is None:
            return None
        info = _amd_call(self._smi, self._smi.amdsmi_get_power_info, self._h)
        value = info.get(self.power_field)
        return float(value) if isinstance(value, int) else None  # "N/A" in a transient read

    def power_w(self) -> float | None:
        return self._last_power

    # -- the Channel contract ----------------------------------------------------------------
    def poll(self, t: float, slow: bool) -> list[Point]:
        start = self._clock()
        watts = self._read_power()
        if watts is not None:
            self._last_power = watts
            if not self._shape or start > self._shape[-1][0]:
                self._shape.append((start, watts))
        if not self.has_counter:
            return self._integrate()
        if not slow and self._counter is not None:
            return []
        t0 = self._clock()
        count = _amd_call(self._smi, self._smi.amdsmi_get_energy_count, self._h)
        tc = (t0 + self._clock()) / 2.0
        ticks, stamp = int(count["energy_accumulator"]), int(count["timestamp"])
        if self._counter is None:
            self._counter = (tc, ticks, stamp)
            before = [x for x in self._shape if x[0] <= tc]
            self._shape = before[-1:] + [x for x in self._shape if x[0] > tc]
            return [(tc, 0.0)]
        prev_t, prev_ticks, prev_stamp = self._counter
        if stamp == prev_stamp and ticks == prev_ticks:
            return []  # not refreshed since the last read: nothing new to finalize
        self._counter = (tc, ticks, stamp)
        delta = ticks - prev_ticks
        if delta < 0:
            unwrapped = self._unwrap(delta, tc - prev_t)
            if unwrapped is None:
                raise CounterReset(f"AMD SMI energy count went backwards ({prev_ticks} -> "
                                   f"{ticks} ticks); interval estimated from power",
                                   self._spread(prev_t, tc, None))
            delta = unwrapped
        return self._spread(prev_t, tc, delta * (self.resolution_uj or 0.0) / 1e6)

    def _unwrap(self, delta: int, dt: float) -> int | None:
        """The count stepped back by ``-delta`` ticks: a wrap, if one explains it plausibly."""
        limit_j = PLAUSIBLE_CAP_FACTOR * (self.cap_w or FALLBACK_CAP_W) * max(dt, 0.001)
        for bits in (32, 64):
            wrapped = delta + (1 << bits)
            if 0 <= wrapped * (self.resolution_uj or 0.0) / 1e6 <= limit_j:
                self.wraps += 1
                return wrapped
        return None

    def _integrate(self) -> list[Point]:
        """Power-integration mode: the step integral up to the latest power reading."""
        if not self._shape:
            return []
        if not self._started:
            self._started = True
            self._shape = self._shape[-1:]
            return [(self._shape[0][0], 0.0)]
        if len(self._shape) < 2:
            return []
        self._shape = self._shape[-2:]
        return self._spread(self._shape[0][0], self._shape[1][0], None)

    def close(self) -> None:
        self._shape = []


# -- discovery ---------------------------------------------------------------------------------

#: One import attempt of the real package per process, whatever the number of threads starting
#: trackers at once (a failed import half-way left other threads a module without its names).
_IMPORT_LOCK = threading.Lock()
_REAL: list[tuple[ModuleType | None, str]] = []


def _library_problem() -> str | None:
    """Why ROCm's ``libamd_smi.so`` cannot be loaded, or None: the places ``amdsmi`` itself
    tries, in its order (``amdsmi_wrapper.find_smi_library``: ``ROCM_HOME``/``ROCM_PATH``, the
    linker, beside the package, ``/opt/rocm/lib``). The package prints to stdout and raises at
    import when none loads; asking first means it is never imported then, so nothing of the
    process (``sys.stdout`` included) is touched to keep it quiet."""
    import ctypes
    import os
    spec = importlib.util.find_spec("amdsmi")
    beside = [os.path.join(p, "libamd_smi.so") for p in (spec.submodule_search_locations or [])] \
        if spec is not None else []
    rocm = os.getenv("ROCM_HOME", os.getenv("ROCM_PATH"))
    places = ([os.path.join(rocm, "lib/libamd_smi.so")] if rocm else []) + ["libamd_smi.so"] + \
        beside + [os.path.join(os.getenv("ROCM_PATH", "/opt/rocm"), "lib", "libamd_smi.so")]
    error = "no libamd_smi.so found"
    for place in places:
        try:
            ctypes.CDLL(place)
            return None
        except OSError as e:
            error = str(e)
    return error


def import_amdsmi() -> tuple[ModuleType | None, str]:
    """The ``amdsmi`` module, or None and why. A module already imported (or a stand-in placed
    in ``sys.modules``) is used as it is; else the real package is imported once per process,
    and only when its library can load (:func:`_library_problem`)."""
    module = sys.modules.get("amdsmi")
    if module is not None:
        return module, ""
    with _IMPORT_LOCK:
        if _REAL and "amdsmi" not in sys.modules:
            return _REAL[0]
        try:
            missing = importlib.util.find_spec("amdsmi") is None
        except ValueError:  # a module without a spec in sys.modules: importable as it is
            missing = False
        if missing:
            result: tuple[ModuleType | None, str] = (None, "amdsmi is not installed")
        elif (problem := _library_problem()) is not None:
            result = (None, f"amdsmi cannot load ROCm's libamd_smi.so ({problem})")
        else:
            try:
                import amdsmi  # lazy: only when no NVIDIA GPU was found
                result = (amdsmi, "")
            except Exception as e:  # noqa: BLE001 - any failure of a vendor import: not available
                result = (None, f"amdsmi cannot load ROCm's libamd_smi.so ({type(e).__name__}: {e})")
        _REAL[:] = [result]
        return result


def _try(amdsmi: ModuleType, fn_name: str, handle: Any) -> Any:
    fn = getattr(amdsmi, fn_name, None)
    if fn is None:
        return None
    try:
        return _amd_call(amdsmi, fn, handle)
    except SamplerError:
        return None


def _identity(amdsmi: ModuleType, handle: Any, index: int) -> dict[str, Any]:
    asic = _try(amdsmi, "amdsmi_get_gpu_asic_info", handle) or {}
    board = _try(amdsmi, "amdsmi_get_gpu_board_info", handle) or {}
    enum = _try(amdsmi, "amdsmi_get_gpu_enumeration_info", handle) or {}
    kfd = _try(amdsmi, "amdsmi_get_gpu_kfd_info", handle) or {}
    name = asic.get("market_name")
    if not name or name == "N/A":
        name = board.get("product_name") or "AMD GPU"
    serial = asic.get("asic_serial")
    return {"uuid": _try(amdsmi, "amdsmi_get_gpu_device_uuid", handle) or "",
            "name": name, "serial": None if serial in (None, "N/A") else serial,
            "board_serial": board.get("product_serial"),
            "bdf": _try(amdsmi, "amdsmi_get_gpu_device_bdf", handle),
            "amdsmi_index": index, "hip_id": _int_or_none(enum.get("hip_id")),
            "hip_uuid": enum.get("hip_uuid") or None,
            "partition_id": _int_or_none(kfd.get("current_partition_id")),
            "compute_partition": _text_or_none(_try(amdsmi, "amdsmi_get_gpu_compute_partition",
                                                    handle))}


def _text_or_none(v: Any) -> str | None:
    return str(v) if v not in (None, "", "N/A") else None


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) else None


def _visible(env: dict[str, str], ids: list[dict[str, Any]]) -> list[int]:
    """Indices (into ``ids``, HIP order) of the GPUs ROCm makes visible, in HIP ordinal order."""
    order = list(range(len(ids)))
    rocr = env.get("ROCR_VISIBLE_DEVICES")
    if rocr is not None:
        order = _select(rocr, order, ids, uuids=True)
    hip = env.get("HIP_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES"))
    if hip is not None:
        order = _select(hip, order, ids, uuids=False)
    return order


def _select(raw: str, order: list[int], ids: list[dict[str, Any]], uuids: bool) -> list[int]:
    out: list[int] = []
    for entry in (e.strip() for e in raw.split(",")):
        if entry.isascii() and entry.isdigit() and int(entry) < len(order):
            out.append(order[int(entry)])
        elif uuids and entry.startswith("GPU-"):
            hits = [i for i in order if any(str(ids[i].get(k) or "").startswith(entry)
                                            for k in ("hip_uuid", "uuid"))]
            if len(hits) != 1:
                break
            out.append(hits[0])
        else:
            break
    return out


def _physical(ids: list[dict[str, Any]], i: int) -> int | None:
    """The index of the partition that reads the physical GPU's energy (partition 0 of the same
    ASIC serial), or None when it cannot be identified."""
    me = ids[i]
    if not me.get("partition_id"):
        return i
    serial = me.get("serial")
    hits = [j for j, x in enumerate(ids) if serial and x.get("serial") == serial
            and x.get("partition_id") == 0]
    return hits[0] if len(hits) == 1 else None


def open_gpus(gpus: tuple[int | str, ...] | None, env: dict[str, str],
              amdsmi: ModuleType | None = None) -> tuple[list[AmdGpu], list[Note]]:
    """The AMD GPUs to measure: those named in ``gpus`` (HIP ordinals or UUIDs), else every
    visible one, else (under a launcher with several visible GPUs) this local rank's GPU.

    No amdsmi or no AMD GPU is a normal state: no channels and a note saying why.
    """
    if amdsmi is None:
        amdsmi, why = import_amdsmi()
        if amdsmi is None:
            hint = ("pip install 'greentrack[amd]' (AMD SMI's Python package; it needs ROCm's "
                    "amd-smi-lib)" if why == "amdsmi is not installed" else
                    "install ROCm's amd-smi-lib (libamd_smi.so), or point ROCM_PATH at the ROCm "
                    "install")
            return [], [Note("info", "gpu", f"no AMD GPU measured: {why}", hint)]
    try:
        amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
        handles = list(amdsmi.amdsmi_get_processor_handles())
    except amdsmi.AmdSmiException as e:
        return [], [Note("info", "gpu", f"no AMD GPU measured: AMD SMI unavailable "
                         f"({_one_line(e)})", "load the amdgpu driver; in a container pass "
                         "--device /dev/kfd --device /dev/dri")]
    if not handles:
        return [], [Note("info", "gpu", "no AMD GPU measured: AMD SMI lists no GPU", "")]
    ids = [_identity(amdsmi, h, i) for i, h in enumerate(handles)]
    if all(x["hip_id"] is not None for x in ids):  # HIP's order, where the library says it
        perm = sorted(range(len(ids)), key=lambda i: ids[i]["hip_id"])
        handles, ids = [handles[i] for i in perm], [ids[i] for i in perm]
    visible = _visible(env, ids)
    chosen = _choose(gpus, [(i, False) for i in visible], [x["uuid"] for x in ids], env)
    channels: list[AmdGpu] = []
    notes: list[Note] = []
    measured: set[int] = set()
    for ordinal, i in chosen:
        phys = _physical(ids, i)
        if phys is None:
            notes.append(Note("warning", "gpu", f"GPU {ordinal} is compute partition "
                              f"{ids[i]['partition_id']} of a GPU whose first partition AMD SMI "
                              "does not list: not measured", "measure the whole GPU's first "
                              "partition, or make it visible to this process"))
            continue
        if phys in measured:
            continue  # another partition of the same GPU: measured once
        measured.add(phys)
        part = ids[i]["compute_partition"]
        partitioned = ids[i]["partition_id"] not in (None, 0) or (part not in (None, "SPX"))
        try:
            channels.append(AmdGpu(amdsmi, handles[i], handles[phys], ordinal=ordinal,
                                   identity=ids[i], partition=part if partitioned else None))
        except SamplerError as e:
            notes.append(Note("warning", "gpu", f"GPU {ordinal} (AMD SMI {i}) not measured: {e}",
                              getattr(e, "hint", "") or "see `greentrack doctor`"))
    for ch in channels:
        if ch.info.details.get("partition"):
            notes.append(Note("warning", "gpu", f"{ch.info.device}: {ch.info.details['partition_note']}",
                              "report partitioned runs as whole-GPU energy"))
        if not ch.has_counter:
            notes.append(Note("info", "gpu", f"{ch.info.device}: no AMD SMI energy counter; energy "
                              "is integrated from power readings", ""))
        if ch.power_field is None and not ch.has_counter:
            notes.append(Note("warning", "gpu", f"{ch.info.device}: AMD SMI gives neither energy "
                              "nor power: this GPU reads as 0 W", "update ROCm / the GPU firmware"))
    return channels, notes


def lib_version(amdsmi: ModuleType) -> str | None:
    try:
        v = amdsmi.amdsmi_get_lib_version()
        return f"{v['major']}.{v['minor']}.{v['release']}"
    except Exception:  # noqa: BLE001 - metadata only
        return None

