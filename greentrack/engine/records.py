"""``Tracker.record`` values (losses, metrics) on their way to the store, each with the run's
cumulative energy at the moment it was recorded.

The training thread appends ``(t, step, {name: value})`` to :attr:`MetricQueue.queue` (values
captured like step values: a CUDA tensor is copied without a sync); the sampler thread resolves a
record once every channel's readings have passed ``t`` and its values are on the host.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from greentrack.engine import stepvalues

Record = tuple[float, "int | None", dict[str, Any]]


class MetricQueue:
    """Records from the training threads to the store; see the module docstring."""

    def __init__(self, event: Callable[..., None], write: Callable[..., None]) -> None:
        self._event = event
        self._write = write  # StoreWriter.add_metric(t, step, name, value, energy_j)
        self.queue: deque[Record] = deque()
        self._waiting: list[Record] = []
        self.bad = 0

    def pending_values(self) -> bool:
        """A CUDA value of a queued record is still on its way to the host."""
        return any(stepvalues.pending(v) for rec in self.queue for v in rec[2].values())

    def held(self) -> list[float]:
        """Times of records still waiting: readings from there on must be kept."""
        return [rec[0] for rec in self._waiting]

    def attribute(self, final: bool, horizon: float, energy_at: Callable[[float], float],
                  origin: float) -> None:
        """Write every record whose time the readings have passed (all of them when ``final``),
        with ``energy_at(t)``: the cumulative energy of every channel at that time."""
        while self.queue:
            self._waiting.append(self.queue.popleft())
        waiting, self._waiting = self._waiting, []
        for rec in waiting:
            t, step, values = rec
            if not final and (t > horizon or stepvalues.pending(step)
                              or any(stepvalues.pending(v) for v in values.values())):
                self._waiting.append(rec)
                continue
            energy = energy_at(t)
            # an int past SQLite's 64 bits (2**70) lost the whole record (OverflowError): checked
            # as any other step value, and only the step is left out
            if step is not None and (type(step) is not int or not 0 <= step < 2**62):
                at, _ = stepvalues.count("step", step)  # a bad step is left out, not the record
                step = int(at) if at is not None and at < 2**62 else None
            for name, value in values.items():
                number = stepvalues.metric_value(value)
                if isinstance(number, str):
                    self.bad += 1
                    if self.bad == 1:
                        self._event("warning", "bad-step-field", f"metric {str(name)[:64]!r} "
                                    f"dropped ({number}); later drops are not reported")
                    continue
                self._write(t - origin, step, str(name)[:64], number, energy)
