"""Shared GPUs: a GPU's energy split among the processes using it, by NVML's per-process utilization.

While NVML lists one compute process on a GPU (or only this run's processes), the GPU's measured
energy is this run's, unchanged. While it lists others too (sweeps, time-slicing), this run gets
its share of the energy measured in each interval::

    share = SM utilization of this run's processes / SM utilization of every process on the GPU

from NVML's per-process samples since the previous update (``nvmlDeviceGetProcessesUtilizationInfo``,
or ``nvmlDeviceGetProcessUtilization`` where the driver lacks it), recomputed every
:data:`SHARE_EVERY_S` and applied to the energy measured until the next update.

What the share means when a process greentrack does not track uses the GPU too: it gets its share
like any other process, and no run counts it. A tracked run never absorbs an untracked process's
energy, and the tracked runs' figures never add up to more than the GPU. When no listed process used
the SMs in an interval (idle, or no samples since the last update: ``NVML_ERROR_NOT_FOUND``), the
energy is split evenly among the listed processes: each holds a context and keeps the GPU awake.

This run's processes are the tracked process, its descendants (``greentrack run`` measures its
child) and the other processes of the same run (another rank that opened a context on this GPU),
less any process that holds a greentrack lease for this GPU itself (it counts its own share). The
other tracked processes are known from the host leases (:mod:`greentrack.common.leases`), which list the
GPUs each tracker measures.

The measurement falls back to the whole GPU, with a recorded note, when NVML lists no process (no
CUDA context yet), none of the PIDs it lists exists here (a container's PID namespace hides the
host's PIDs), or the GPU gives no per-process figures (``NVML_ERROR_NOT_SUPPORTED``: MIG, or a
GPU before Maxwell). A GPU that stays whole keeps its ``measured`` label; one that was shared is
labelled an estimate from the first shared interval on, with the method, in every output.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from greentrack.common.leases import host_lease_dir, live_leases
from greentrack.samplers._share import ScaledChannel
from greentrack.samplers.base import QUALITY_LOW, Channel, ChannelEvent, ChannelInfo, Point

#: How often the process list and utilization are read (on the slow cadence, at most this often).
SHARE_EVERY_S = 1.0
#: ``gpu-shared`` events per GPU: the first sharing, then each time more processes meet (bounded).
MAX_SHARE_EVENTS = 8
METHOD_SUFFIX = " x process share (NVML per-process SM utilization)"

Peers = Callable[[], list[dict[str, Any]]]


def lease_peers() -> list[dict[str, Any]]:
    """The records of every live greentrack lease on this machine (see :mod:`greentrack.common.leases`)."""
    return [rec for _, rec in live_leases(host_lease_dir())]


class GpuShare(ScaledChannel):
    """An NVML GPU channel whose energy is this run's share while the GPU is shared.

    Args:
        inner: the whole-GPU channel (:class:`~greentrack.samplers._nvml.NvmlGpu`).
        pynvml: the NVML module the inner channel reads.
        handle: the GPU's NVML handle.
        pid: the tracked process (its descendants are this run's too).
        run_id: this run's id (other processes of the run are this run's too).
        peers: returns the records of live leases (default: this machine's host leases).
        clock: monotonic clock, for the update cadence.
    """

    def __init__(self, inner: Channel, pynvml: ModuleType, handle: Any, pid: int, *,
                 run_id: str | None = None, peers: Peers = lease_peers, clock: Callable[[], float] = time.monotonic) -> None:
        import psutil  # lazy, like every hardware library

        super().__init__(inner, 1.0)
        self._psutil = psutil
        self._nv = pynvml
        self._h = handle
        self._pid = pid
        self.run_id = run_id
        self._peers = peers
        self._clock = clock
        self.info: ChannelInfo = inner.info
        self.uuid = str(inner.info.details.get("uuid") or "")
        self.processes = 0  # processes listed at the last update
        self._next = float("-inf")
        self._last_seen_us = 0  # NVML's lastSeenTimeStamp: samples after it only
        self._api: str | None = None  # which utilization call works, once known
        self._noted: set[str] = set()
        self._events: list[ChannelEvent] = []
        self._shared_events = 0
        self.max_processes = 0
        self.max_tracked = 0

    # -- the Channel contract ----------------------------------------------------------------
    def poll(self, t: float, slow: bool) -> list[Point]:
        if slow and t >= self._next:
            self._next = t + SHARE_EVERY_S
            self._update(t)
        try:
            points = self._inner.poll(t, slow)
        except Exception as e:
            pts = getattr(e, "points", None)  # a counter reset still carries an estimate
            if pts:
                e.points = self._scale(pts)  # type: ignore[attr-defined]
            raise
        return self._scale(points)

    def drain_events(self) -> list[ChannelEvent]:
        events, self._events = self._events, []
        return events

    # -- the share ---------------------------------------------------------------------------
    def _update(self, t: float) -> None:
        nv = self._nv
        # nvidia-ml-py raises NVMLLibraryMismatchError (not an NVMLError) where the driver lacks
        # the _v3 process list its unversioned call uses
        mismatch = getattr(nv, "NVMLLibraryMismatchError", AttributeError)
        try:
            listed = {int(p.pid) for p in nv.nvmlDeviceGetComputeRunningProcesses(self._h)}
        except (nv.NVMLError, AttributeError, mismatch) as e:
            self._whole("processes", f"NVML cannot list the GPU's processes ({_reason(nv, e)})")
            return
        self.processes = len(listed)
        if not listed:
            self._whole("none", "NVML lists no process on the GPU (no CUDA context yet)")
            return
        if len(listed) == 1 and self._pid in listed:
            self.share = 1.0
            return
        if not any(self._psutil.pid_exists(p) for p in listed):
            # several processes there: the GPU is shared and this run's part cannot be told, so
            # counting it whole overlaps the others (a warning, as when NVML has no per-process
            # figures); one process alone is most likely this run, in a container
            self._whole("namespace", "none of the PIDs NVML lists exists in this PID namespace "
                        "(a container?): this run's processes cannot be told from others",
                        shared=len(listed) > 1)
            return
        leases = self._leases()
        mine = self._mine(listed, leases)
        if listed <= mine:
            self.share = 1.0
            return
        util = self._utilization()
        if util is None:
            return  # _utilization fell back to the whole GPU, with its note
        users = listed | {p for p, u in util.items() if u > 0}
        total = sum(util.get(p, 0.0) for p in users)
        if total > 0:
            self.share = sum(util.get(p, 0.0) for p in users & mine) / total
        else:  # nobody used the SMs: the listed processes keep the GPU awake together
            self.share = len(listed & mine) / len(listed)
        self._shared(t, users, mine, leases)

    def _mine(self, listed: set[int], leases: list[dict[str, Any]]) -> set[int]:
        """This run's processes among ``listed``: this process, its descendants and the run's
        other processes, less those that hold their own lease for this GPU (they count their own
        share)."""
        tree = {p for p in listed if p != self._pid and self._descends(p)}
        own = {_pid(r) for r in leases if self.uuid and self.uuid in (r.get("gpus") or [])}
        run = {_pid(r) for r in leases if self.run_id and r.get("run_id") == self.run_id}
        return ((tree | run) - own | {self._pid}) & listed

    def _descends(self, pid: int) -> bool:
        """Whether ``pid`` descends from the tracked process: its parent chain, walked up (a few
        reads per listed process, not a scan of every process on the machine)."""
        for _ in range(64):
            try:
                pid = int(self._psutil.Process(pid).ppid())
            except self._psutil.Error:
                return False
            if pid == self._pid:
                return True
            if pid <= 1:
                return False
        return False

    def _leases(self) -> list[dict[str, Any]]:
        try:
            return [r for r in self._peers() if isinstance(r, dict) and _pid(r) != self._pid]
        except Exception:  # noqa: BLE001 - leases only name other runs: never fail a reading
            return []

    def _utilization(self) -> dict[int, float] | None:
        """Mean SM utilization (%) per PID over NVML's samples since the last update; {} when
        there are none (NotFound); None when the GPU gives none (the whole GPU is kept)."""
        nv = self._nv
        apis = [self._api] if self._api else ["nvmlDeviceGetProcessesUtilizationInfo",
                                              "nvmlDeviceGetProcessUtilization"]
        for api in apis:
            fn = getattr(nv, api, None)
            if fn is None:
                continue
            try:
                samples = fn(self._h, self._last_seen_us)
            except nv.NVMLError as e:
                code = getattr(e, "value", None)
                if code == nv.NVML_ERROR_NOT_FOUND:
                    self._api = api
                    return {}
                if code in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_FUNCTION_NOT_FOUND) \
                        and self._api is None:
                    continue  # the successor is missing on this driver: try the older call
                self._whole("utilization", f"NVML per-process utilization failed "
                            f"({_reason(nv, e)})", shared=True)
                return None
            self._api = api
            sums: dict[int, list[float]] = {}
            for s in samples:
                ts = int(s.timeStamp)
                if ts <= self._last_seen_us:
                    continue
                sums.setdefault(int(s.pid), []).append(float(s.smUtil))
            self._last_seen_us = max([self._last_seen_us] + [int(s.timeStamp) for s in samples])
            return {p: sum(v) / len(v) for p, v in sums.items()}
        self._whole("utilization", "this GPU gives no per-process utilization "
                    "(NVML_ERROR_NOT_SUPPORTED)", shared=True)
        return None

    def _whole(self, reason: str, why: str, shared: bool = False) -> None:
        """Count the whole GPU for this interval; note why, once per reason."""
        self.share = 1.0
        if reason in self._noted:
            return
        self._noted.add(reason)
        if shared:
            msg = (f"{self.info.device}: used by {self.processes} processes, but {why}: this run "
                   "counts the whole GPU's energy, which overlaps the other processes' share")
            self._events.append(ChannelEvent("warning", "gpu-share-unavailable", msg,
                                             {"processes": self.processes, "reason": reason}))
        else:
            msg = f"{self.info.device}: {why}; the whole GPU's energy is counted while this holds"
            self._events.append(ChannelEvent("info", "gpu-share", msg, {"reason": reason}))

    def _shared(self, t: float, users: set[int], mine: set[int],
                leases: list[dict[str, Any]]) -> None:
        others = users - mine
        tracked_pids = {_pid(r) for r in leases}
        tracked = len(others & tracked_pids)
        grew = len(users) > self.max_processes or tracked > self.max_tracked
        self.max_processes = max(self.max_processes, len(users))
        self.max_tracked = max(self.max_tracked, tracked)
        first = self.info is self._inner.info
        if not (first or grew) or self._shared_events >= MAX_SHARE_EVENTS:
            return
        self._shared_events += 1
        inner = self._inner.info
        self.info = dataclasses.replace(
            inner, method=inner.method + METHOD_SUFFIX, measured=False,
            source=(f"{inner.source}; while other processes use the GPU, this run's share by "
                    f"NVML {self._api} (SM utilization of its processes over all, every "
                    f"{SHARE_EVERY_S:g} s; even split when idle)"),
            uncertainty=(f"{QUALITY_LOW}: SM utilization stands in for each process's power; the "
                         "whole GPU is measured"),
            details={**inner.details, "shared": {
                "processes_max": self.max_processes, "tracked_others_max": self.max_tracked,
                "api": self._api, "since_s_monotonic": round(t, 3)}})
        untracked = len(others) - tracked
        msg = (f"{inner.device} ({self.uuid or inner.name}) is shared: {len(users)} processes "
               f"use it ({len(users & mine)} of this run, {tracked} tracked by other greentrack "
               f"runs, {untracked} untracked); this run's GPU energy is from now its share by "
               f"NVML per-process SM utilization (an estimate; now {self.share:.0%})")
        self._events.append(ChannelEvent("warning", "gpu-shared", msg, {
            "processes": len(users), "mine": len(users & mine), "tracked_others": tracked,
            "untracked": untracked, "share": round(self.share, 4), "api": self._api},
            info=self.info))


def _reason(nv: ModuleType, e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if isinstance(e, nv.NVMLError) else str(e)


def _pid(record: dict[str, Any]) -> int:
    try:
        return int(record.get("pid", -1))
    except (TypeError, ValueError):  # a planted lease file: not a process
        return -1


def share_gpus(channels: list[Any], pid: int, run_id: str | None) -> list[Channel]:
    """Wrap each NVML GPU so that it counts this run's share while it is shared. A MIG-enabled
    GPU stays as it is (NVML has no per-process utilization under MIG)."""
    out: list[Channel] = []
    for ch in channels:
        if ch.info.details.get("mig"):
            out.append(ch)
        else:
            out.append(GpuShare(ch, ch._nv, ch._h, pid, run_id=run_id))
    return out
