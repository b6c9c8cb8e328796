"""Process mode for measured host zones: a RAPL zone's energy split by the tracked tree's share.

CPU package energy is scaled by the tree's share of the machine's busy CPU time, DRAM energy by
the tree's share of used memory, each recomputed on the slow cadence. The method string says so.

:class:`ScaledChannel` is the split itself (a measured channel's energy times a share that changes
over time), which the shared-GPU channel (``_gpushare.GpuShare``) uses too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from greentrack.samplers._estimate import Utilization
from greentrack.samplers.base import Channel, Point


class ScaledChannel:
    """A channel whose energy is an inner channel's, each interval times the share in force then
    (:attr:`share`, set by the subclass on the slow cadence); its power is the inner power times
    the share. Anything else (settings, hardware calls) is the inner channel's.

    The one place where a measured channel's energy is split: a process tree's share of a RAPL
    zone (:class:`ProcessShare`), a run's share of a shared GPU (``_gpushare.GpuShare``).
    """

    def __init__(self, inner: Channel, share: float) -> None:
        self._inner = inner
        self.share = share
        self._last_inner: float | None = None
        self._energy_j = 0.0

    def _scale(self, points: list[Point]) -> list[Point]:
        """The inner channel's cumulative points as this channel's: each step times the share."""
        out = []
        for tp, e in points:
            if self._last_inner is not None:
                self._energy_j += (e - self._last_inner) * self.share
            self._last_inner = e
            out.append((tp, self._energy_j))
        return out

    def salvage(self) -> list[Point]:
        """The inner channel's readings not yet given out (a lost GPU's start-up reads), at this
        channel's share: through the wrapper, never the whole device's joules."""
        inner = getattr(self._inner, "salvage", None)
        return self._scale(inner()) if callable(inner) else []

    def power_w(self) -> float | None:
        p = self._inner.power_w()
        return None if p is None else p * self.share

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ProcessShare(ScaledChannel):
    """A RAPL zone's energy times the tracked process tree's share (see the module docstring)."""

    def __init__(self, inner: Channel, pid: int) -> None:
        import psutil  # lazy

        super().__init__(inner, 0.0)
        self._psutil = psutil
        self._tree = Utilization("process", pid)
        self._machine = Utilization("machine", pid)
        basis = ("its share of the machine's busy CPU time" if inner.info.kind == "cpu"
                 else "its share of used memory")
        self.info = dataclasses.replace(
            inner.info, method=f"{inner.info.method} x process-tree share",
            source=f"{inner.info.source}, scaled by the tracked process tree's {basis} (psutil)",
            details={**inner.info.details, "process_mode": True})

    def _update_share(self) -> None:
        if self._inner.info.kind == "cpu":
            tree_cap = self._tree.share()  # fraction of all CPUs
            machine = self._machine.share()
            self.share = min(1.0, tree_cap / machine) if machine > 0 else 0.0
        else:
            used = self._psutil.virtual_memory().used / 1e9
            self.share = min(1.0, self._tree.rss_gb() / used) if used > 0 else 0.0

    def poll(self, t: float, slow: bool) -> list[Point]:
        if slow:
            self._update_share()
        return self._scale(self._inner.poll(t, slow))

    def close(self) -> None:
        self._machine.close()
        super().close()
