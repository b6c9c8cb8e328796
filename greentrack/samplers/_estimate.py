"""Estimates for what cannot be read: labelled ``measured=False`` everywhere they appear.

CPU: ``P = sockets x TDP x u``, ``u`` the CPU utilization over the last slow tick (the whole
machine in ``machine`` mode, the tracked process tree in ``process`` mode), read from psutil's
cumulative CPU times (never the blocking ``cpu_percent(interval=...)`` that slowed codecarbon
3.0.2 runs tenfold). The linear TDP x utilization model is Green Algorithms' (Lannelongue et al.,
Adv. Sci. 2021); TDP comes from codecarbon's maintained CPU table, or ``cpu_tdp_w``.

DRAM: ``P = GB x dram_w_per_gb``, GB the machine's total memory (``machine``) or the tree's
resident memory (``process``); default 0.3725 W/GB (Green Algorithms, 2021). codecarbon's
conventions differ by up to 5x (3 W per 8 GB in v2, ~5 W per DIMM in v3; codecarbon issue #629
shows a 1 TB host estimated at 378 W), hence the low quality band.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greentrack.common.codecarbon_data import cpu_power_table, cpu_table_key, version
from greentrack.samplers._quickread import QuickRead
from greentrack.samplers.base import QUALITY_LOW, ChannelInfo, Point

DEFAULT_W_PER_CORE = 4.0  # codecarbon's DEFAULT_POWER_PER_CORE, when the CPU is not in the table
GREEN_ALGORITHMS = "Green Algorithms (Lannelongue, Grealey, Inouye, Adv. Sci. 2021)"


@functools.cache  # read once per process: /proc/cpuinfo holds ~2 KiB per logical CPU
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@functools.cache  # scanned once per process: one sysfs file per logical CPU
def socket_count() -> int:
    ids = set()
    for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/physical_package_id"):
        try:
            ids.add(p.read_text().strip())
        except OSError:
            continue
    return max(1, len(ids))


def lookup_tdp(model: str) -> tuple[float, str] | None:
    """TDP in watts per socket from codecarbon's CPU table, with the matched name; None when the
    model is not in it (ambiguous fuzzy matches count as not found: no guess posing as a fact).
    Searched once per process, model and table file (the search took 9 ms of every start)."""
    key = (model, cpu_table_key())
    if key not in _TDP_FOUND:
        _TDP_FOUND[key] = _search_tdp(model)
    return _TDP_FOUND[key]


_TDP_FOUND: dict[tuple[str, tuple[str, int] | None], tuple[float, str] | None] = {}


def _search_tdp(model: str) -> tuple[float, str] | None:
    table = cpu_power_table()
    if not table:
        return None
    names = [name for name, _ in table]
    cleaned = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|@\s*[\d.]+\s*GHz|\d+-Core", " ", model)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    for candidate in (model, cleaned):
        for name, tdp in table:
            if name.lower() == candidate.lower():
                return tdp, name
    try:
        from rapidfuzz import fuzz, process, utils  # codecarbon's own matcher library
    except ImportError:
        return None
    hits = process.extract(cleaned, names, processor=utils.default_process,
                           scorer=fuzz.token_set_ratio, score_cutoff=100, limit=2)
    if len(hits) == 1 or (len(hits) == 2 and hits[0][1] != hits[1][1]):
        return table[hits[0][2]][1], hits[0][0]
    return None


#: The kernel's CPU counters (proc(5): the first line of /proc/stat, in USER_HZ ticks).
PROC_STAT = "/proc/stat"


class _ProcStat:
    """The machine's cumulative CPU times, from a /proc/stat kept open and read with one
    ``pread``: psutil opens, inspects, reads and closes the file each time, six system calls,
    each of which lets go of the GIL, and a training thread that holds it (a Python-bound loop)
    then waits out a hand-over per call (``bench/sampler_interference.py``, issue 25). The
    figures are psutil's ``cpu_times()``: the same first line, the same ten fields (user ..
    guest_nice), divided by the same clock ticks, so either source continues the other."""

    def __init__(self) -> None:
        fd = os.open(PROC_STAT, os.O_RDONLY)
        self._fd = fd
        self._reader = QuickRead(fd)  # one system call, and the GIL kept through it
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        # closed with this object, whoever forgets to call close()
        self._closer = weakref.finalize(self, os.close, fd)

    def times(self) -> tuple[float, float]:
        """(busy, total) CPU seconds: all fields but idle and iowait, and all ten fields."""
        head = self._reader.pread(1024, 0).split(b"\n", 1)[0].split()
        if len(head) < 5 or head[0] != b"cpu":
            raise OSError(f"{PROC_STAT}: unexpected first line {head[:3]!r}")
        fields = [int(x) / self._tick for x in head[1:11]]
        total = sum(fields)
        return total - fields[3] - fields[4], total

    def close(self) -> None:
        self._closer()


class Utilization:
    """CPU share over successive calls, from cumulative CPU times (non-blocking)."""

    def __init__(self, mode: str, pid: int) -> None:
        import psutil  # lazy
        self._psutil = psutil
        self.mode, self.pid = mode, pid
        self._ncpu = psutil.cpu_count() or 1
        self._stat: _ProcStat | None = None
        if mode == "machine":
            try:
                self._stat = _ProcStat()
            except OSError:  # not Linux, or no /proc: psutil's own way
                self._stat = None
        self._last = self._sample()

    def _tree(self) -> list[Any]:
        try:
            root = self._psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except self._psutil.Error:
            return []

    def _sample(self) -> tuple[float, float]:
        """(busy CPU seconds, elapsed capacity seconds) counters."""
        if self.mode == "machine":
            if self._stat is not None:
                try:
                    return self._stat.times()
                except (OSError, ValueError):  # read what psutil reads, its way, from now on
                    self._stat.close()
                    self._stat = None
            ct = self._psutil.cpu_times()
            busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
            return busy, sum(ct)
        busy = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                # children_* hold the times of reaped children, so a finished worker still counts.
                busy += t.user + t.system + t.children_user + t.children_system
            except self._psutil.Error:
                continue
        return busy, os.times().elapsed * self._ncpu

    def share(self) -> float:
        busy, cap = self._sample()
        (pbusy, pcap), self._last = self._last, (busy, cap)
        if cap - pcap <= 0:
            return 0.0
        return min(1.0, max(0.0, (busy - pbusy) / (cap - pcap)))

    def close(self) -> None:
        if self._stat is not None:
            self._stat.close()

    def rss_gb(self) -> float:
        total = 0
        for p in self._tree():
            try:
                total += p.memory_info().rss
            except self._psutil.Error:
                continue
        return total / 1e9


class _Integrating:
    """Base of the estimate channels: integrates a power model on the slow cadence."""

    info: ChannelInfo
    #: a fast poll reads nothing: the estimate changes on the slow tick (the engine's cadence)
    fast_reads = False

    def __init__(self, power_fn: Callable[[], float]) -> None:
        self._power_fn = power_fn
        self._t: float | None = None
        self._energy_j = 0.0
        self._power: float | None = None

    def poll(self, t: float, slow: bool) -> list[Point]:
        if self._t is not None and not slow:
            return []
        watts = self._power_fn()
        if self._t is None:
            self._t, self._power = t, watts
            return [(t, 0.0)]
        # The utilization is that of the interval just ended: power held over it.
        self._energy_j += watts * max(0.0, t - self._t)
        self._t, self._power = t, watts
        return [(t, self._energy_j)]

    def power_w(self) -> float | None:
        return self._power

    def close(self) -> None:
        pass


class CpuEstimate(_Integrating):
    def __init__(self, mode: str, pid: int, tdp_w: float | None) -> None:
        self.util = Utilization(mode, pid)
        model, sockets = cpu_model(), socket_count()
        # tdp_source completes "TDP <W> W/socket x <n> socket(s) ..." (doctor and reports)
        if tdp_w is not None:
            tdp, tdp_source = tdp_w, "from the cpu_tdp_w setting (user)"
        else:
            found = lookup_tdp(model)
            if found:
                tdp, matched = found
                tdp_source = (f"from codecarbon {version()} CPU TDP table "
                              f"(data/hardware/cpu_power.csv), entry {matched!r}")
            else:
                cores = os.cpu_count() or 1
                tdp = DEFAULT_W_PER_CORE * cores / sockets
                tdp_source = (f"= {DEFAULT_W_PER_CORE:g} W per logical core x {cores} core(s), "
                              "codecarbon's default per-core figure, as this CPU is not in "
                              "codecarbon's CPU table")
        self.tdp_w = tdp
        super().__init__(lambda: sockets * tdp * self.util.share())
        self.info = ChannelInfo(
            kind="cpu", device="cpu-estimate", name=model, method="tdp-utilization-estimate",
            measured=False,
            source=f"{GREEN_ALGORITHMS} model P = TDP x utilization; TDP {tdp:g} W/socket x "
                   f"{sockets} socket(s) {tdp_source}; utilization from psutil ({mode} mode)",
            uncertainty=f"{QUALITY_LOW}: TDP is a thermal design figure, not a measurement",
            host_scope=True, details={"tdp_w": tdp, "sockets": sockets, "tdp_source": tdp_source})

    def close(self) -> None:
        self.util.close()


class DramEstimate(_Integrating):
    def __init__(self, mode: str, pid: int, w_per_gb: float) -> None:
        import psutil  # lazy
        self.util = Utilization(mode, pid) if mode == "process" else None
        total_gb = psutil.virtual_memory().total / 1e9
        if self.util is not None:
            util = self.util
            super().__init__(lambda: util.rss_gb() * w_per_gb)
            basis = "resident memory of the tracked process tree"
        else:
            super().__init__(lambda: total_gb * w_per_gb)
            basis = f"installed memory ({total_gb:.1f} GB)"
        self.info = ChannelInfo(
            kind="dram", device="dram-estimate", name=f"{total_gb:.1f} GB RAM",
            method="dram-per-gb-estimate", measured=False,
            source=f"{w_per_gb:g} W/GB x {basis}; default figure from {GREEN_ALGORITHMS}",
            uncertainty=f"{QUALITY_LOW}: conventions differ by up to 5x between tools",
            host_scope=True, details={"w_per_gb": w_per_gb, "total_gb": round(total_gb, 3)})
