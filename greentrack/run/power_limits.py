"""The measured power-limit curves of a run (store table ``power_limits``, written by
:mod:`greentrack.process.calibration`), as typed records: one curve per store that calibrated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from greentrack.run.segment import Segment


class PowerLimitPoint(NamedTuple):
    """One limit's measurement: per training step, the mean and standard deviation of the joules
    (all kinds this process measures; GPU apart, None without a GPU channel) and seconds."""

    limit_w: float
    reference: bool  # the limit in force before the calibration (measured last, once restored)
    steps: int
    warmup_steps: int
    j_per_step: float
    j_per_step_sd: float
    gpu_j_per_step: float | None
    gpu_j_per_step_sd: float | None
    s_per_step: float
    s_per_step_sd: float

    @property
    def energy_j(self) -> float:
        """Joules per step (the figure the curve is minimized on)."""
        return self.j_per_step


@dataclass(frozen=True)
class PowerLimitCurve:
    """One store's curve: the GPUs it set, its points by limit, and the training steps the store
    ran (what a saving per step is multiplied by)."""

    host: str
    rank: int
    store: str
    devices: tuple[str, ...]
    points: tuple[PowerLimitPoint, ...]
    train_steps: int

    @property
    def reference(self) -> PowerLimitPoint | None:
        """The point at the original limit; None when the calibration did not reach it."""
        return next((p for p in self.points if p.reference), None)

    def as_dict(self) -> dict[str, Any]:
        """The curve as the report's ``power_limit_curves`` and ``advise --json`` show it."""
        return {"host": self.host, "rank": self.rank, "store": self.store,
                "devices": list(self.devices), "train_steps": self.train_steps,
                "complete": self.reference is not None,
                "points": [p._asdict() for p in self.points]}


def curves(segments: list["Segment"]) -> list[PowerLimitCurve]:
    """Every store's curve, in store order (stores without one, older ones included, have none)."""
    out = []
    for seg in segments:
        rows = seg.reader.power_limits()
        if not rows:
            continue
        points = tuple(PowerLimitPoint(
            float(r["limit_w"]), bool(r["reference"]), int(r["steps"]), int(r["warmup_steps"]),
            float(r["j_per_step"]), float(r["j_per_step_sd"]),
            None if r["gpu_j_per_step"] is None else float(r["gpu_j_per_step"]),
            None if r["gpu_j_per_step_sd"] is None else float(r["gpu_j_per_step_sd"]),
            float(r["s_per_step"]), float(r["s_per_step_sd"])) for r in rows)
        devices = tuple(sorted({d for r in rows for d in r["devices"]}))
        out.append(PowerLimitCurve(seg.host, seg.rank, seg.path.name, devices, points,
                                   int(seg.phases.get("train", (0, 0.0))[0])))
    return out
