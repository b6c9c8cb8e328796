"""The exporter's step families, shared by the collector (its own tracker) and the joined
trackers' live totals (:mod:`greentrack.exporters._joined`): one shape, one way to add them."""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Any

from greentrack.engine.steps import PhaseTally
from greentrack.store.layout import StepRow

if TYPE_CHECKING:
    from greentrack.run.resumed import RecordedBefore

#: Per-step energy buckets (J), one process's share of a step: from a small CPU step (~0.1 J:
#: 50 W for 2 ms) through an H100 step (0.3 s at 700 W = 210 J) to a node-wide step of a large
#: model (2 s on 8 GPUs at 700 W = 11 kJ), with headroom to 100 kJ.
STEP_ENERGY_BUCKETS_J = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                         1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5)
MAX_PHASES = 8

class StepStats:
    """The exporter's step families: steps, joules and FLOPs per phase from the engine's
    :class:`~greentrack.engine.steps.PhaseTally` (the one live accumulator), plus a resumed run's
    earlier segments; the per-step energy histogram and the latest MFU from each resolved row
    (``tracker.add_step_listener``, sampler thread). At most :data:`MAX_PHASES` phase labels."""

    def __init__(self, tally: PhaseTally | None = None) -> None:
        self._lock = threading.Lock()
        self.tally = tally if tally is not None else PhaseTally()
        self._labels: dict[str, None] = {}  # in order of first appearance
        self.buckets: dict[str, list[int]] = {}
        self.mfu: dict[str, float] = {}
        self._before: dict[str, dict[str, float]] = {}

    def _label(self, phase: Any) -> str:
        name = str(phase)[:32] or "train"
        if name not in self._labels and len(self._labels) >= MAX_PHASES:
            name = "other"
        if name not in self._labels:
            self._labels[name] = None
            self.buckets[name] = [0] * (len(STEP_ENERGY_BUCKETS_J) + 1)
        return name

    def observe(self, row: StepRow) -> None:
        """Step listener: one resolved row into the histogram (and its MFU)."""
        extra = row.extra or {}
        with self._lock:
            label = self._label(row.phase)
            self.buckets[label][bisect.bisect_left(STEP_ENERGY_BUCKETS_J, row.energy_j)] += 1
            mfu = extra.get("mfu")
            if isinstance(mfu, (int, float)) and not isinstance(mfu, bool) and mfu >= 0:
                self.mfu[label] = float(mfu)

    def seed(self, before: RecordedBefore) -> None:
        """Start from the steps of the run's earlier segments (a resumed run), before any step."""
        with self._lock:
            for phase, n in before.steps.items():
                label = self._label(phase)
                b = self._before.setdefault(label, {"n": 0.0, "energy_j": 0.0, "flops": 0.0})
                b["n"] += n
                b["energy_j"] += before.step_energy_j.get(phase, 0.0)
                b["flops"] += before.flops.get(phase, 0.0)
                for i, k in enumerate(before.step_buckets.get(phase, [])):
                    self.buckets[label][i] += k

    def copy(self) -> dict[str, Any]:
        sums = self.tally.phases()
        with self._lock:
            out: dict[str, Any] = {"count": {}, "energy_j": {}, "flops": {},
                                   "buckets": {p: list(b) for p, b in self.buckets.items()},
                                   "mfu": dict(self.mfu)}
            for label, b in self._before.items():
                out["count"][label] = int(b["n"])
                out["energy_j"][label] = b["energy_j"]
                out["flops"][label] = b["flops"]
            for phase, s in sums.items():
                label = self._label(phase)
                out["buckets"].setdefault(label, list(self.buckets[label]))
                out["count"][label] = out["count"].get(label, 0) + int(s["n"])
                out["energy_j"][label] = out["energy_j"].get(label, 0.0) + s["energy_j"]
                out["flops"][label] = out["flops"].get(label, 0.0) + s["flops"]
            return out


def add_steps(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add a joined tracker's step families (:meth:`StepStats.copy`'s shape) into ``into``; a
    phase beyond :data:`MAX_PHASES` labels is counted as ``other``."""
    for phase, n in other["count"].items():
        label = phase if phase in into["count"] or len(into["count"]) < MAX_PHASES else "other"
        into["count"][label] = into["count"].get(label, 0) + int(n)
        for key in ("energy_j", "flops"):
            into[key][label] = into[key].get(label, 0.0) + float(other[key].get(phase, 0.0))
        mine = into["buckets"].get(label)
        add = other["buckets"][phase]
        into["buckets"][label] = [a + b for a, b in zip(mine, add)] if mine else list(add)
        if phase in other["mfu"]:
            into["mfu"][label] = other["mfu"][phase]
