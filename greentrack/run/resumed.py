"""What a resumed process continues from: the totals its earlier segments recorded.

A run resumed from a checkpoint (Lightning, Hugging Face ``resume_from_checkpoint``, or a
:class:`greentrack.Tracker` started again on the same run directory) writes a new store. Live
outputs that count from this process's start, such as the Prometheus exporter's ``*_total``
counters, add :func:`recorded_before` so they carry the run's total, not the last segment's.

Only finished stores of the same host and rank count (a store still written by a live process,
this one included, is not a previous segment): the same series in Prometheus (same ``host`` and
``rank`` labels) then keeps growing across segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from greentrack.run.model import Run, gpu_seconds_once


@dataclass(frozen=True)
class RecordedBefore:
    """Totals of earlier, finished segments of one process (host and rank) of a run.

    Keys mirror the exporter's labels: energy by ``(kind, device, source)`` with source
    ``measured`` or ``estimated``, gap seconds by ``(kind, device)``, steps by phase.
    """

    segments: int = 0
    energy_j: dict[tuple[str, str, str], float] = field(default_factory=dict)
    gap_s: dict[tuple[str, str], float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    steps: dict[str, int] = field(default_factory=dict)
    step_energy_j: dict[str, float] = field(default_factory=dict)
    step_buckets: dict[str, list[int]] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    #: the stores summed (their footprint gives the emissions, above the read model)
    paths: tuple[Path, ...] = ()
    #: their location-based grams, once a caller has computed their footprint
    emissions_g: float = 0.0

    @property
    def total_energy_j(self) -> float:
        return sum(self.energy_j.values())


def recorded_before(run: Run, host: str, rank: int,
                    edges_j: tuple[float, ...]) -> RecordedBefore:
    """Sum the finished stores of ``host`` and ``rank`` in ``run``; ``edges_j`` are the step
    histogram's bucket edges (joules)."""
    energy: dict[tuple[str, str, str], float] = {}
    gaps: dict[tuple[str, str], float] = {}
    steps: dict[str, int] = {}
    step_j: dict[str, float] = {}
    flops: dict[str, float] = {}
    buckets: dict[str, list[int]] = {}
    mine = [s for s in run.segments if s.host == host and s.rank == rank and s.status != "running"]
    for seg in mine:
        for c in seg.channels:
            key = (str(c["kind"]), str(c["device"]), "measured" if c["measured"] else "estimated")
            energy[key] = energy.get(key, 0.0) + float(c["energy_j"] or 0.0)
            gaps[key[:2]] = gaps.get(key[:2], 0.0) + float(c["gap_s"] or 0.0)
        for phase, p in seg.step_phases().items():
            steps[phase] = steps.get(phase, 0) + int(p["n"])
            step_j[phase] = step_j.get(phase, 0.0) + p["energy_j"]
            flops[phase] = flops.get(phase, 0.0) + p["flops"]
        for phase, counts in seg.step_buckets(edges_j).items():
            old = buckets.get(phase, [0] * len(counts))
            buckets[phase] = [a + b for a, b in zip(old, counts)]
    once = gpu_seconds_once(run.segments)  # as the report counts them
    return RecordedBefore(len(mine), energy, gaps, sum(once[s.path] for s in mine), steps,
                          step_j, buckets, flops, tuple(s.path for s in mine))


def energy_before_j(run: Run, own_store: Path) -> float | None:
    """Joules the other stores of the process that writes ``own_store`` (same host and rank)
    recorded: what a resumed or later stage of a training process continues from, the steps done
    after its checkpoint (done again now) included. None when ``own_store`` is not in ``run`` or
    it has no other store of that process."""
    own = next((s for s in run.segments if s.path.resolve() == own_store.resolve()), None)
    if own is None:
        return None
    before = [s for s in run.segments if s is not own and s.host == own.host and s.rank == own.rank]
    if not before:
        return None
    return sum(float(c["energy_j"] or 0.0) for s in before for c in s.channels)


__all__ = ["RecordedBefore", "energy_before_j", "recorded_before"]
