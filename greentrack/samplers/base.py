"""The sampler contract: what every backend (NVML, RAPL, estimates) gives the engine.

A *channel* is one energy source on one device: a GPU, a CPU package, a DRAM zone, or an
estimate standing in for one of those. The engine polls channels on a fast and a slow cadence and
receives *finalized points*: ``(t, joules)`` pairs, ``t`` on the monotonic clock and ``joules`` the
energy used since the channel's first point. Points are final when returned: a channel that needs a
later read to know the energy up to ``t`` (the NVML counter shaped by instant power) returns the
points only once that read is in. So "energy between t0 and t1" is always an interpolation between
final points, whatever the backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Kind = Literal["gpu", "cpu", "dram"]
Point = tuple[float, float]

#: BoAmps-style quality bands used for every figure's uncertainty.
QUALITY_HIGH = "high (+-10%)"
QUALITY_MEDIUM = "medium (+-25%)"
QUALITY_LOW = "low (+-50%)"


@dataclass(frozen=True)
class ChannelInfo:
    """How one channel's figures are obtained: recorded in the run, printed in every report.

    Attributes:
        kind: ``gpu``, ``cpu`` or ``dram``.
        device: short stable id within the host (``gpu0``, ``package-0``, ``dram-0``).
        name: hardware model (``NVIDIA H100 80GB HBM3``) when known.
        method: how energy is obtained (``nvml-energy-counter``, ``rapl-powercap``, ...).
        measured: True for a hardware reading, False for an estimate.
        source: data source and year (for estimates) or the interface read (for measurements).
        uncertainty: quality band and why.
        host_scope: True for per-node resources (CPU, DRAM) that one process per node measures.
        details: anything else an auditor may want (UUID, MIG mode, TDP used, counter range...).
    """

    kind: Kind
    device: str
    name: str
    method: str
    measured: bool
    source: str
    uncertainty: str
    host_scope: bool
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Channel(Protocol):
    """One energy source. Implementations live in private modules, one per backend."""

    info: ChannelInfo

    def poll(self, t: float, slow: bool) -> list[Point]:
        """Read the device at monotonic time ``t``; return the newly finalized points.

        ``slow`` is True on the slow cadence (expensive reads such as the NVML energy counter, and
        utilization-based estimates). Raises :class:`~greentrack.common.errors.SamplerError` for a failed
        read, :class:`~greentrack.common.errors.DeviceLost` when the device is gone for good.
        """
        ...

    def power_w(self) -> float | None:
        """Latest power reading in watts for live gauges, or None."""
        ...

    def close(self) -> None:
        """Release handles. Never raises."""
        ...


@dataclass(frozen=True)
class ChannelEvent:
    """Something a channel learned while running that the run must record: a GPU became shared
    and its figure is now an estimated share (``info`` then holds the channel's new description,
    which the store and every report show from then on), or a share could not be computed.

    Attributes:
        level: ``info`` or ``warning``.
        kind: the event kind stored in the run (``gpu-shared``, ``gpu-share-unavailable``...).
        message: one line for people.
        details: small JSON values for tools.
        info: the channel's description from now on, or None when it did not change.
    """

    level: Literal["info", "warning"]
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    info: ChannelInfo | None = None


@runtime_checkable
class EventSource(Protocol):
    """A channel that may report :class:`ChannelEvent` values; the engine drains them after slow
    polls (on the sampler thread) and records them with the channel."""

    def drain_events(self) -> list[ChannelEvent]:
        """The events since the last call (then forgotten). Never raises."""
        ...


@dataclass(frozen=True)
class Note:
    """Something discovery found that the user should know: why a device is not measured, or
    why an estimate stands in for it, and how to unlock the measurement."""

    level: Literal["info", "warning"]
    kind: str
    message: str
    hint: str = ""


@dataclass
class Discovery:
    """What the factory found on this machine."""

    channels: list[Channel] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
