"""A fake ``amdsmi`` module for machines without an AMD GPU.

The real package (amdsmi 7.0.2 on PyPI) cannot be imported without ROCm's ``libamd_smi.so``: it
prints "Could not load libamd_smi.so" and raises KeyError. This fake is built from its source
(``amdsmi/__init__.py``, ``amdsmi_interface.py``, ``amdsmi_exception.py``, ``amdsmi_wrapper.py``):

* the same function names and signatures, returning the same dictionaries (``amdsmi_get_energy_count``
  -> ``energy_accumulator`` / ``counter_resolution`` / ``timestamp``; ``amdsmi_get_power_info`` ->
  ``socket_power`` / ``current_socket_power`` / ``average_socket_power`` ..., with ``"N/A"`` where the
  library reads 0xFFFF);
* handles are ``ctypes.c_void_p`` (``amdsmi_wrapper.amdsmi_processor_handle``), and a function given
  anything else raises ``AmdSmiParameterException``, as the real interface checks;
* the same exception classes (``AmdSmiException`` > ``AmdSmiLibraryException(err_code)`` >
  ``AmdSmiRetryException`` / ``AmdSmiTimeoutException``; ``AmdSmiParameterException``) and status
  codes (``AMDSMI_STATUS_*`` values from ``amdsmi_wrapper.py``), raised as ``_check_res`` raises them.

What it simulates (assumptions, labelled): the accumulator counts ``resolution_uj`` (15.259 uJ,
2^-16 J) ticks and wraps at ``2**counter_bits``; it refreshes every ``update_s`` (AMD does not
document the period; 1 ms here); ``timestamp`` is in ns on the fake clock; MI300-style GPUs report
``current_socket_power``, MI200-style ones only ``average_socket_power`` (a 1 s mean here);
secondary compute partitions answer energy and power with ``AMDSMI_STATUS_NOT_SUPPORTED`` (the first
partition carries the GPU's figures). Faults: the device disappears (``AMDSMI_STATUS_NOT_FOUND``),
reads are refused (``AMDSMI_STATUS_NO_PERM``), fail once (``AMDSMI_STATUS_BUSY``), the counter
resets, the library or driver is missing at init.
"""

from __future__ import annotations

import ctypes
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from tests.fakes.fake_pynvml import LiveTrace, PowerTrace


class amdsmi_wrapper:  # noqa: N801 - the real module's name
    """The constants of ``amdsmi/amdsmi_wrapper.py`` this fake uses (same values)."""

    AMDSMI_STATUS_SUCCESS = 0
    AMDSMI_STATUS_INVAL = 1
    AMDSMI_STATUS_NOT_SUPPORTED = 2
    AMDSMI_STATUS_TIMEOUT = 8
    AMDSMI_STATUS_RETRY = 9
    AMDSMI_STATUS_NO_PERM = 10
    AMDSMI_STATUS_INIT_ERROR = 18
    AMDSMI_STATUS_BUSY = 30
    AMDSMI_STATUS_NOT_FOUND = 31
    AMDSMI_STATUS_NOT_INIT = 32
    AMDSMI_STATUS_DRIVER_NOT_LOADED = 34
    AMDSMI_INIT_AMD_CPUS = 1
    AMDSMI_INIT_AMD_GPUS = 2
    AMDSMI_INIT_AMD_APUS = 3
    amdsmi_processor_handle = ctypes.c_void_p


_W = amdsmi_wrapper
_ERR_INFO = {
    _W.AMDSMI_STATUS_INVAL: "AMDSMI_STATUS_INVAL - Invalid parameters",
    _W.AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    _W.AMDSMI_STATUS_TIMEOUT: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
    _W.AMDSMI_STATUS_RETRY: "AMDSMI_STATUS_RETRY - Retry operation",
    _W.AMDSMI_STATUS_NO_PERM: "AMDSMI_STATUS_NO_PERM - Permission Denied",
    _W.AMDSMI_STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
    _W.AMDSMI_STATUS_BUSY: "AMDSMI_STATUS_BUSY - Device busy",
    _W.AMDSMI_STATUS_NOT_FOUND: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
    _W.AMDSMI_STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    _W.AMDSMI_STATUS_DRIVER_NOT_LOADED: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
}


# -- amdsmi_exception.py, same classes ---------------------------------------------------------
class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _ERR_INFO.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self) -> str:
        return "Error code:\n\t{err_code} | {err_info}".format(err_code=self.err_code,
                                                               err_info=self.err_info)

    def get_error_info(self, detailed: bool = True) -> str:
        return self.err_info if detailed else str(self.err_info).split(" - ")[0]

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(_W.AMDSMI_STATUS_RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(_W.AMDSMI_STATUS_TIMEOUT)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, receivedValue: Any, expectedType: Any, msg: str | None = None) -> None:
        super().__init__(msg)
        self.err_code = None
        self.err_msg = msg or (f"Invalid parameter:\nActual type: {type(receivedValue)}\n"
                               f"Expected type: {expectedType}")

    def __str__(self) -> str:
        return self.err_msg


class AmdSmiInitFlags(IntEnum):
    INIT_AMD_CPUS = _W.AMDSMI_INIT_AMD_CPUS
    INIT_AMD_GPUS = _W.AMDSMI_INIT_AMD_GPUS
    INIT_AMD_APUS = _W.AMDSMI_INIT_AMD_APUS


def _check_res(ret_code: int) -> None:
    """As the real ``amdsmi_interface._check_res``."""
    if ret_code == _W.AMDSMI_STATUS_RETRY:
        raise AmdSmiRetryException()
    if ret_code == _W.AMDSMI_STATUS_TIMEOUT:
        raise AmdSmiTimeoutException()
    if ret_code != _W.AMDSMI_STATUS_SUCCESS:
        raise AmdSmiLibraryException(ret_code)


@dataclass
class FakeAmdGpu:
    name: str = "AMD Instinct MI300X"
    uuid: str = "8cff74b5-0000-1000-80f1-2a9c5e1b7d01"
    hip_uuid: str = "GPU-2a9c5e1b7d01a3c4"
    serial: str = "0x2A9C5E1B7D01A3C4"  # asic_serial as the library formats it
    bdf: str = "0000:0c:00.0"
    hip_id: int | None = 0  # None: amdsmi_get_gpu_enumeration_info not supported (older ROCm)
    trace: PowerTrace | LiveTrace = field(default_factory=lambda: PowerTrace([], idle_w=140.0))
    has_counter: bool = True
    resolution_uj: float = 15.259
    counter_bits: int = 64
    counter_base_ticks: int = 123_456_789
    update_s: float = 0.001
    power_style: str = "current"  # "current" (MI300) or "average" (MI200)
    power_cap_w: float = 750.0
    partition_id: int = 0
    compute_partition: str | None = "SPX"  # None: NOT_SUPPORTED
    lost_at: float | None = None
    reset_at: float | None = None
    no_perm: bool = False
    fail_reads: int = 0
    calls: dict[str, int] = field(default_factory=dict)


class FakeAmdSmi:
    """The fake's state; :meth:`module` returns a module object to put in ``sys.modules``."""

    def __init__(self, gpus: list[FakeAmdGpu], clock: Callable[[], float] = time.monotonic,
                 init_error: int | None = None) -> None:
        self.gpus, self.clock, self.init_error = gpus, clock, init_error
        self.initialized = 0
        self._handles = [ctypes.c_void_p(0x1000 + i) for i in range(len(gpus))]

    def _gpu(self, handle: Any, what: str) -> tuple[FakeAmdGpu, float]:
        if not isinstance(handle, _W.amdsmi_processor_handle):
            raise AmdSmiParameterException(handle, _W.amdsmi_processor_handle)
        if not self.initialized:
            _check_res(_W.AMDSMI_STATUS_NOT_INIT)
        matches = [g for h, g in zip(self._handles, self.gpus) if h.value == handle.value]
        if not matches:
            _check_res(_W.AMDSMI_STATUS_INVAL)
        gpu = matches[0]
        gpu.calls[what] = gpu.calls.get(what, 0) + 1
        t = self.clock()
        if gpu.lost_at is not None and t >= gpu.lost_at:
            _check_res(_W.AMDSMI_STATUS_NOT_FOUND)
        return gpu, t

    def _reading(self, handle: Any, what: str) -> tuple[FakeAmdGpu, float]:
        gpu, t = self._gpu(handle, what)
        if gpu.no_perm:
            _check_res(_W.AMDSMI_STATUS_NO_PERM)
        if gpu.fail_reads > 0:
            gpu.fail_reads -= 1
            _check_res(_W.AMDSMI_STATUS_BUSY)
        if gpu.partition_id > 0:  # the first partition carries the GPU's energy and power
            _check_res(_W.AMDSMI_STATUS_NOT_SUPPORTED)
        return gpu, t

    def ticks(self, gpu: FakeAmdGpu, t: float) -> tuple[int, int]:
        """The accumulator and its timestamp (ns) at fake time ``t``."""
        q = math.floor(t / gpu.update_s) * gpu.update_s
        energy_j = gpu.trace.energy(q)
        if gpu.reset_at is not None and q >= gpu.reset_at:
            energy_j -= gpu.trace.energy(gpu.reset_at)
            base = 0
        else:
            base = gpu.counter_base_ticks
        n = base + int(energy_j * 1e6 / gpu.resolution_uj)
        return n % (1 << gpu.counter_bits), int(round(q * 1e9))

    def module(self) -> types.ModuleType:
        m = types.ModuleType("amdsmi")
        fake = self
        for cls in (AmdSmiException, AmdSmiLibraryException, AmdSmiRetryException,
                    AmdSmiTimeoutException, AmdSmiParameterException, AmdSmiInitFlags):
            setattr(m, cls.__name__, cls)
        m.amdsmi_wrapper = amdsmi_wrapper  # type: ignore[attr-defined]

        def amdsmi_init(flag: AmdSmiInitFlags = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
            if not isinstance(flag, AmdSmiInitFlags):
                raise AmdSmiParameterException(flag, AmdSmiInitFlags)
            if fake.init_error is not None:
                _check_res(fake.init_error)
            fake.initialized += 1

        def amdsmi_shut_down() -> None:
            fake.initialized = max(0, fake.initialized - 1)

        def amdsmi_get_processor_handles() -> list[ctypes.c_void_p]:
            if not fake.initialized:
                _check_res(_W.AMDSMI_STATUS_NOT_INIT)
            return list(fake._handles)

        def amdsmi_get_gpu_device_uuid(processor_handle: Any) -> str:
            return fake._gpu(processor_handle, "uuid")[0].uuid

        def amdsmi_get_gpu_device_bdf(processor_handle: Any) -> str:
            return fake._gpu(processor_handle, "bdf")[0].bdf

        def amdsmi_get_gpu_asic_info(processor_handle: Any) -> dict[str, Any]:
            g = fake._gpu(processor_handle, "asic")[0]
            return {"market_name": g.name, "vendor_id": "0x1002", "vendor_name": "Advanced Micro "
                    "Devices Inc. [AMD/ATI]", "subvendor_id": "0x1002", "device_id": "0x74a1",
                    "rev_id": "0x00", "asic_serial": g.serial, "oam_id": 0,
                    "num_compute_units": 304, "target_graphics_version": "gfx942",
                    "subsystem_id": "0x74a1"}

        def amdsmi_get_gpu_board_info(processor_handle: Any) -> dict[str, Any]:
            g = fake._gpu(processor_handle, "board")[0]
            return {"model_number": "102-G30211-0C", "product_serial": "PCB" + g.serial[-8:],
                    "fru_id": "N/A", "product_name": g.name, "manufacturer_name": "AMD"}

        def amdsmi_get_gpu_enumeration_info(processor_handle: Any) -> dict[str, Any]:
            g = fake._gpu(processor_handle, "enumeration")[0]
            if g.hip_id is None:
                _check_res(_W.AMDSMI_STATUS_NOT_SUPPORTED)
            return {"drm_render": 128 + fake.gpus.index(g), "drm_card": fake.gpus.index(g),
                    "hsa_id": fake.gpus.index(g) + 1, "hip_id": g.hip_id, "hip_uuid": g.hip_uuid}

        def amdsmi_get_gpu_kfd_info(processor_handle: Any) -> dict[str, Any]:
            g = fake._gpu(processor_handle, "kfd")[0]
            return {"kfd_id": 0x1000 + fake.gpus.index(g), "node_id": fake.gpus.index(g) + 1,
                    "current_partition_id": g.partition_id}

        def amdsmi_get_gpu_compute_partition(processor_handle: Any) -> str:
            g = fake._gpu(processor_handle, "compute_partition")[0]
            if g.compute_partition is None:
                _check_res(_W.AMDSMI_STATUS_NOT_SUPPORTED)
            return str(g.compute_partition)

        def amdsmi_get_energy_count(processor_handle: Any) -> dict[str, Any]:
            g, t = fake._reading(processor_handle, "energy")
            if not g.has_counter:
                _check_res(_W.AMDSMI_STATUS_NOT_SUPPORTED)
            acc, stamp = fake.ticks(g, t)
            return {"energy_accumulator": acc, "counter_resolution": g.resolution_uj,
                    "timestamp": stamp}

        def amdsmi_get_power_info(processor_handle: Any) -> dict[str, Any]:
            g, t = fake._reading(processor_handle, "power")
            q = math.floor(t / g.update_s) * g.update_s
            now_w = int(round(g.trace.mean(q - 0.001, q)))
            avg_w = int(round(g.trace.mean(q - 1.0, q)))
            current = now_w if g.power_style == "current" else "N/A"
            average = avg_w if g.power_style == "average" else "N/A"
            return {"socket_power": now_w if g.power_style == "current" else avg_w,
                    "current_socket_power": current, "average_socket_power": average,
                    "gfx_voltage": "N/A", "soc_voltage": "N/A", "mem_voltage": "N/A",
                    "power_limit": int(g.power_cap_w)}

        def amdsmi_get_power_cap_info(processor_handle: Any) -> dict[str, Any]:
            g = fake._gpu(processor_handle, "power_cap")[0]
            cap_uw = int(g.power_cap_w * 1e6)
            return {"power_cap": cap_uw, "default_power_cap": cap_uw, "dpm_cap": 0,
                    "min_power_cap": 0, "max_power_cap": cap_uw}

        def amdsmi_get_gpu_driver_info(processor_handle: Any) -> dict[str, Any]:
            fake._gpu(processor_handle, "driver")
            return {"driver_name": "amdgpu", "driver_version": "6.12.12", "driver_date": "N/A"}

        def amdsmi_get_lib_version() -> dict[str, Any]:
            return {"major": 25, "minor": 5, "release": 1, "build": "fake"}

        for fn in (amdsmi_init, amdsmi_shut_down, amdsmi_get_processor_handles,
                   amdsmi_get_gpu_device_uuid, amdsmi_get_gpu_device_bdf, amdsmi_get_gpu_asic_info,
                   amdsmi_get_gpu_board_info, amdsmi_get_gpu_enumeration_info,
                   amdsmi_get_gpu_kfd_info, amdsmi_get_gpu_compute_partition,
                   amdsmi_get_energy_count, amdsmi_get_power_info, amdsmi_get_power_cap_info,
                   amdsmi_get_gpu_driver_info, amdsmi_get_lib_version):
            setattr(m, fn.__name__, fn)
        return m
