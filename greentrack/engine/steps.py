"""Steps on their way from the training thread to the store.

The training thread hands each finished step to :meth:`StepQueue.submit`: a tuple appended to a
deque, no lock, no I/O; the step's fields stay in the dict it was given, split into counts and
extras on the sampler thread (:func:`span_of`). Past :data:`MAX_BACKLOG` queued steps (the
sampler attributes about 100,000 a second on a small VM) further steps are merged into one row
per phase whose ``n`` says how many steps it stands for, so memory stays bounded and every step
is counted once. The sampler thread takes them all (:meth:`StepQueue.take`) and, once their energy
is resolved, turns what the user handed over into recordable values (:class:`FieldCleaner`, with
:mod:`greentrack.engine.stepvalues`).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any

from greentrack.common.once import warn_once
from greentrack.engine import stepvalues
from greentrack.store.layout import StepRow

log = logging.getLogger("greentrack")

#: Finished steps queued for the sampler before further ones are coalesced (see the docstring).
MAX_BACKLOG = 20_000
#: Step fields named like a field of :class:`StepSpan` that is no count: kept as ``field_<name>``.
RENAMED_FIELDS = frozenset({"phase", "t0", "t1"})
#: The step fields that are columns of their own (the rest are extras).
COLUMN_FIELDS = frozenset({"flops", "samples", "tokens", "timeline"})
#: Distinct step-field names that get their own ``bad-step-field`` event (the rest are counted).
BAD_FIELD_EVENTS = 20
#: The counts' limits (:data:`stepvalues.COUNT_LIMITS`), as names for :meth:`FieldCleaner.clean`.
_MAX_TEXT, _INF = stepvalues.MAX_TEXT, float("inf")
_MAX_FLOPS, _MAX_SAMPLES, _MAX_TOKENS = (stepvalues.COUNT_LIMITS[k]
                                        for k in ("flops", "samples", "tokens"))


@dataclass(slots=True)
class StepSpan:
    """A finished step window, on the monotonic clock, queued by the training thread."""

    idx: int
    phase: str
    t0: float
    t1: float
    flops: float | None = None
    samples: float | None = None
    tokens: float | None = None
    timeline: str = "host"
    extra: dict[str, Any] = field(default_factory=dict)
    n: int = 1  # steps in this row: more than one only when coalesced (see MAX_BACKLOG)

    def pending(self) -> bool:
        """A CUDA value of this step is still on its way to the host."""
        for v in (self.flops, self.samples, self.tokens):
            if v is not None and type(v) not in _PLAIN and stepvalues.pending(v):
                return True
        if not self.extra:
            return False
        for v in self.extra.values():  # plain values (every extra of a loop's steps) need no call
            if type(v) not in _PLAIN_EXTRA and stepvalues.pending(v):
                return True
        return False


#: Values that are never pending (the common case, answered without a call).
_PLAIN = frozenset({float, int})
_PLAIN_EXTRA = frozenset({float, int, str, bool, type(None)})


#: What :class:`PhaseTally` sums per phase: steps, joules (all kinds; GPU and how many rows had a
#: GPU reading), seconds, FLOPs (and the seconds of the rows that had them), samples, tokens.
PHASE_SUMS = ("n", "energy_j", "gpu_j", "gpu_n", "duration_s", "flops", "flops_s", "samples",
              "tokens")
#: Phases a tally keeps apart; more are summed as ``other`` (a phase name is the user's text).
MAX_TALLY_PHASES = 64
_PHASE = attrgetter("phase")


class PhaseTally:
    """Per-phase sums of one process's resolved step rows: the one live accumulator that the
    exporter's step counters and the training meter's per-step metrics both read (each adds its
    own offsets: earlier segments, what it already reported). Fed on the sampler thread; read
    from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, dict[str, float]] = {}

    def observe_many(self, rows: list[StepRow]) -> None:
        """Add resolved rows: each run of one phase summed first, then added to its sums."""
        with self._lock:
            for phase, run in groupby(rows, key=_PHASE):
                n = energy = gpu_j = gpu_n = duration = flops = flops_s = samples = tokens = 0.0
                for row in run:
                    n += row.n
                    energy += row.energy_j
                    if row.gpu_j is not None:
                        gpu_j += row.gpu_j
                        gpu_n += 1
                    duration += row.duration_s
                    if row.flops:
                        flops += row.flops
                        flops_s += row.duration_s
                    samples += row.samples or 0.0
                    tokens += row.tokens or 0.0
                s = self._sums.get(phase)
                if s is None:
                    if len(self._sums) >= MAX_TALLY_PHASES:
                        phase = "other"
                    s = self._sums.get(phase)
                    if s is None:
                        s = self._sums[phase] = dict.fromkeys(PHASE_SUMS, 0.0)
                s["n"] += n
                s["energy_j"] += energy
                s["gpu_j"] += gpu_j
                s["gpu_n"] += gpu_n
                s["duration_s"] += duration
                s["flops"] += flops
                s["flops_s"] += flops_s
                s["samples"] += samples
                s["tokens"] += tokens

    def phases(self) -> dict[str, dict[str, float]]:
        """Every phase's sums, copied (in the order phases first appeared)."""
        with self._lock:
            return {p: dict(s) for p, s in self._sums.items()}

    def phase(self, name: str) -> dict[str, float]:
        """One phase's sums (zeros before its first step)."""
        with self._lock:
            return dict(self._sums.get(name) or dict.fromkeys(PHASE_SUMS, 0.0))

    @property
    def steps(self) -> int:
        with self._lock:
            return int(sum(s["n"] for s in self._sums.values()))


class StepQueue:
    """Finished steps from any training thread to the sampler thread; see the module docstring."""

    def __init__(self) -> None:
        self._spans: deque[StepSpan | tuple[Any, ...]] = deque()
        #: Steps merged while the backlog is full, one row per phase (training threads, locked).
        self._overflow: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self.coalesced = 0  # steps that went through a merged row

    def __len__(self) -> int:
        return len(self._spans)

    def submit(self, span: StepSpan | tuple[Any, ...]) -> None:
        """Queue a finished step: a :class:`StepSpan`, or the training thread's cheaper form
        ``(idx, phase, t0, t1, timeline, fields)``, ``fields`` the step's values in one dict that
        the queue then owns (see :func:`span_of`). Past :data:`MAX_BACKLOG` queued steps, steps
        are coalesced instead of queued."""
        if self._overflow or len(self._spans) >= MAX_BACKLOG:
            self._coalesce(span_of(span))
        else:
            self._spans.append(span)

    def _coalesce(self, span: StepSpan) -> None:
        with self._lock:
            if len(self._spans) < MAX_BACKLOG // 2:  # the sampler caught up: hand the rows over
                self._release_overflow()
                self._spans.append(span)
                return
            idx, phase, t0, t1, flops, samples, tokens, timeline, extra, n = _fields(span)
            row = self._overflow.get(phase)
            if row is None:
                if len(self._overflow) >= 16:  # bounded either way: a 17th phase is queued
                    self._spans.append(span)
                    return
                self._overflow[phase] = [idx, phase, t0, t1, flops, samples, tokens, timeline,
                                         dict(extra), n]
                return
            row[2], row[3] = min(row[2], t0), max(row[3], t1)
            for k, value in ((4, flops), (5, samples), (6, tokens)):
                row[k] = stepvalues.merge(row[k], value)
            if len(row[8]) < 64:
                row[8].update(extra)
            row[9] += n

    def _release_overflow(self) -> None:
        """Queue the coalesced rows (caller holds ``_lock``)."""
        for row in self._overflow.values():
            self._spans.append(StepSpan(*row))
            self.coalesced += row[9]
        self._overflow.clear()

    def take(self) -> list[StepSpan]:
        """Every step submitted so far, as spans (sampler thread)."""
        with self._lock:
            self._release_overflow()
        popleft = self._spans.popleft  # steps queued meanwhile wait for the next take
        queued = [popleft() for _ in range(len(self._spans))]
        return [span if isinstance(span, StepSpan) else span_of(span) for span in queued]


def span_of(span: StepSpan | tuple[Any, ...]) -> StepSpan:
    """A queued step as a :class:`StepSpan`: ``(idx, phase, t0, t1, timeline, fields)`` split
    into counts (``flops``, ``samples``, ``tokens``; a ``timeline`` field overrides the tuple's)
    and extras (a field named ``phase``, ``t0`` or ``t1`` kept as ``field_<name>``)."""
    if isinstance(span, StepSpan):
        return span
    idx, phase, t0, t1, timeline, fields = span
    if not fields:
        return StepSpan(idx, phase, t0, t1, None, None, None, timeline, {})
    get = fields.get
    extra = {} if fields.keys() <= COLUMN_FIELDS else {
        f"field_{key}" if key in RENAMED_FIELDS else key: value
        for key, value in fields.items() if key not in COLUMN_FIELDS}
    return StepSpan(idx, phase, t0, t1, get("flops"), get("samples"), get("tokens"),
                    get("timeline", timeline), extra)


class FieldCleaner:
    """Counts and extra fields of resolved steps as recordable values; a bad one is dropped, with
    one ``bad-step-field`` event per field name (through ``event``) and a count in
    :attr:`bad_fields`; the log says each field once per run (``run``: the run's key,
    :func:`greentrack.common.once.run_key`), however many segments or trackers drop it."""

    def __init__(self, event: Callable[..., None], run: str = "") -> None:
        self._event = event
        self._run = run or f"cleaner-{id(self)}"
        self.bad_fields: dict[str, int] = {}

    def clean(self, span: StepSpan) -> tuple[float | None, float | None, float | None,
                                            dict[str, Any]]:
        """The step's counts (``flops``, ``samples``, ``tokens``) and extra fields (a new dict)
        as recordable values; a bad one is dropped and reported, the rest of the step kept."""
        flops, samples, tokens = span.flops, span.samples, span.tokens
        if (flops is None or type(flops) is float and 0.0 <= flops <= _MAX_FLOPS) and \
                (samples is None or type(samples) is float and 0.0 <= samples <= _MAX_SAMPLES) \
                and (tokens is None or type(tokens) is float and 0.0 <= tokens <= _MAX_TOKENS):
            if not span.extra:
                return flops, samples, tokens, {}  # the common case (every step of a loop)
        else:
            flops, samples, tokens = self._counts(span)
        extra: dict[str, Any] = {}
        if not span.extra:
            return flops, samples, tokens, extra
        for name, value in span.extra.items():
            kind = type(value)  # the plain values a loop passes (a method's name, an MFU): inline
            if type(name) is str and len(name) <= 64 and (
                    kind is str and len(value) <= _MAX_TEXT or value is None or kind is bool
                    or kind is int and -2**63 < value < 2**63
                    or kind is float and -_INF < value < _INF):
                extra[name] = value
                continue
            clean, why = stepvalues.extra_value(value)
            if why is not None:
                self._bad(str(name), why, span)
            else:
                extra[str(name)[:64]] = clean
        return flops, samples, tokens, extra

    def _counts(self, span: StepSpan) -> tuple[float | None, float | None, float | None]:
        """The step's counts as recordable values, a bad one dropped and reported."""
        counts: list[float | None] = []
        for name, value in (("flops", span.flops), ("samples", span.samples),
                            ("tokens", span.tokens)):
            if value is None or (type(value) is float or type(value) is int and value < 2**63) \
                    and 0 <= value <= stepvalues.COUNT_LIMITS[name]:
                counts.append(value)  # without a call (an int SQLite can hold)
                continue
            value, why = stepvalues.count(name, value)
            counts.append(value)
            if why is not None:
                self._bad(name, why, span)
        return counts[0], counts[1], counts[2]

    def windows(self, spans: list[StepSpan], origin: float, now: float) -> list[StepSpan]:
        """The spans whose window can be placed in this run's time: two real times (made
        floats) from :data:`WINDOW_SLACK_S` before the run's ``origin`` to as long after ``now``.
        The others are dropped, reported as the field ``window`` is (one event, then counted): a
        window handed to ``submit_window`` as text once lost every step the sampler had taken
        with it, and one from -1e300 would have been a step 1e300 s long."""
        earliest, latest = origin - WINDOW_SLACK_S, now + WINDOW_SLACK_S
        kept = []
        for span in spans:
            t0, t1 = span.t0, span.t1
            if not (type(t0) is float and type(t1) is float and earliest <= t0 <= latest
                    and earliest <= t1 <= latest):  # the common case: no call (NaN fails it)
                why = _window_problem(span, earliest, latest)
                if why is not None:
                    self._bad("window", why, span, kept=False)
                    continue
            kept.append(span)
        return kept

    def _bad(self, name: str, why: str, span: StepSpan, kept: bool = True) -> None:
        name = name[:64]
        seen = self.bad_fields.get(name, 0)
        if seen == 0 and len(self.bad_fields) < BAD_FIELD_EVENTS:
            fate = ("the step and its energy are kept" if kept else
                    "the step is not recorded (its energy stays in the run's totals)")
            msg = (f"step field {name!r} dropped ({why}), first at {span.phase} step {span.idx}; "
                   f"{fate}; later drops of this field are counted in the store's meta "
                   "(bad_step_fields)")
            warn_once(log, self._run, f"bad-step-field:{name}", "greentrack: %s", msg)
            self._event("warning", "bad-step-field", msg, field=name, reason=why)
        if seen or len(self.bad_fields) < 10 * BAD_FIELD_EVENTS:
            self.bad_fields[name] = seen + 1


#: A step's window lies within this long before the run's start and after the sampler's clock
#: (a time further out is no time of this run: 1e300, a wall-clock time for a monotonic one).
WINDOW_SLACK_S = 3600.0


def _window_problem(span: StepSpan, earliest: float, latest: float) -> str | None:
    """Why ``span``'s window cannot be placed, or None (its times then made plain floats)."""
    times: list[float] = []
    for name, value in (("t0", span.t0), ("t1", span.t1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{name} is {type(value).__name__}, not a time"
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            return f"{name} is not a time"
        if not math.isfinite(value):
            return f"{name} is {value}"
        if not earliest <= value <= latest:
            return f"{name} is more than an hour outside the run (not its monotonic clock)"
        times.append(value)
    span.t0, span.t1 = times
    return None


def _fields(span: StepSpan) -> tuple[Any, ...]:
    return (span.idx, span.phase, span.t0, span.t1, span.flops, span.samples, span.tokens,
            span.timeline, span.extra, span.n)
