"""Process mode for measured host zones: a RAPL zone's energy split by the tracked tree's share.

CPU package energy is scaled by the tree's share of the machine's busy CPU time, DRAM energy by
the tree's share of used memory, each recomputed on the slow cadence. The method string says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from greentrack.samplers.base import Channel, Point


class ProcessShare:
    def __init__(self, inner: Channel, pid: int) -> None:
        import psutil  # lazy
        from greentrack.samplers._estimate import Utilization

        self._psutil = psutil
        self._inner = inner
        self._tree = Utilization("process", pid)
        self._machine = Utilization("machine", pid)
        self._share = 0.0
        self._last_inner: float | None = None
        self._energy_j = 0.0
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
            self._share = min(1.0, tree_cap / machine) if machine > 0 else 0.0
        else:
            used = self._psutil.virtual_memory().used / 1e9
            self._share = min(1.0, self._tree.rss_gb() / used) if used > 0 else 0.0

    def poll(self, t: float, slow: bool) -> list[Point]:
        if slow:
            self._update_share()
        out = []
        for tp, e in self._inner.poll(t, slow):
            if self._last_inner is not None:
                self._energy_j += (e - self._last_inner) * self._share
            self._last_inner = e
            out.append((tp, self._energy_j))
        return out

    def power_w(self) -> float | None:
        p = self._inner.power_w()
        return None if p is None else p * self._share

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
