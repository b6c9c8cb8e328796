"""The read model's classes (see :mod:`greentrack.run`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.common.jobinfo import merge_jobs
from greentrack.common.units import J_PER_KWH
from greentrack.run.power_limits import curves
from greentrack.run.segment import Segment, bin_width, segment
from greentrack.store import StoreReader, store_paths

if TYPE_CHECKING:
    from greentrack.run.power_limits import PowerLimitCurve


#: Events that say part of the record is missing or doubtful: every summary and report repeats them.
RECORD_WARNINGS = frozenset({"bad-step-field", "row-rejected", "host-shared", "sampler-hung",
                             "sampler-slow", "steps-open", "internal-error", "gather-gap",
                             "gpu-shared", "gpu-share-unavailable"})
KINDS = ("gpu", "cpu", "dram")
#: A segment counts as resumed after an earlier one of its process if it started no earlier than
#: this many seconds before that one ended (clocks of one host; more overlap: two live processes).
RESUME_OVERLAP_S = 1.0


class Replayed(NamedTuple):
    """Training steps done again after a resume (:meth:`Run.replayed`): an earlier segment of a
    process (host and rank) recorded them, then a later one resumed from a checkpoint taken
    before them and redid their step numbers. Their joules were spent and are in the run's
    energy, but bought no progress."""

    steps: float
    energy_j: float
    #: resumes that redid steps
    resumes: int


class RunSummary(TypedDict):
    """A run's record, summed (:meth:`Run.summary`): the ``greentrack summary --json`` document
    without its footprint (``greentrack.reports.summary.Summary`` adds it)."""

    run_id: str | None
    run_dir: str
    run_dirs: list[str]
    status: str
    duration_s: float
    energy_j: dict[str, float | None]  # by kind and ``total``; None: no channel of that kind
    energy_kwh: float
    gpu_seconds: float
    steps: int  # step rows, every phase and rank
    steps_by_phase: dict[str, int]
    optimizer_steps: int
    steps_energy_j: float
    #: training steps done again after a resume, and their joules (:meth:`Run.replayed`)
    replayed_steps: float
    replayed_energy_j: float
    mode: str | list[str]
    stores: int
    hosts: list[str]
    job: dict[str, dict[str, str]]
    gaps: int
    sources: list[dict[str, Any]]  # each device: how it was measured (Device.as_source)
    warnings: list[str]


class RunTotals(RunSummary):
    """:class:`RunSummary` with the energy of each phase's steps (the integrations' totals)."""

    phase_energy_j: dict[str, float]


@dataclass(frozen=True)
class Device:
    """One device of the run, however many segments and ranks measured it.

    ``energy_j`` and ``gap_s`` are summed over its stores; ``status`` is the last store's.
    """

    identity: str
    kind: str
    device: str
    name: str
    host: str
    rank: int
    method: str
    measured: bool
    source: str
    uncertainty: str
    energy_j: float
    gap_s: float
    status: str
    stores: int

    def as_source(self) -> dict[str, Any]:
        """The ``sources`` entry of ``greentrack summary --json``."""
        return {"kind": self.kind, "device": self.device, "name": self.name, "host": self.host,
                "rank": self.rank, "method": self.method, "measured": self.measured,
                "estimated": not self.measured, "source": self.source,
                "uncertainty": self.uncertainty, "energy_j": self.energy_j, "gap_s": self.gap_s,
                "status": self.status, "stores": self.stores}


@dataclass(frozen=True)
class StoreEnergy:
    """One store's energy as the footprint counts it (:mod:`greentrack.carbon.runs`): its span,
    joules by kind (None: no channel of that kind), GPU-seconds, the settings it recorded at
    start and, when asked for, its energy over wall time (:meth:`Run.energy_bins`)."""

    path: Path
    settings: dict[str, Any]
    start_unix: float
    end_unix: float
    energy_j: dict[str, float | None]
    gpu_seconds: float
    bins: tuple[tuple[float, float, float], ...] = ()


class Run:
    """A run directory, read. Use as a context manager (the stores stay open for queries).

    Raises (from :meth:`open`):
        ConfigError: ``run_dir`` is missing, holds no run, or none of its stores can be read
            (one that cannot is a warning when another can).
    """

    def __init__(self, run_dir: Path, segments: list[Segment], stores: int,
                 warnings: list[str], run_dirs: list[Path] | None = None) -> None:
        self.run_dir = run_dir
        #: every directory read (node-local directories of one run: several)
        self.run_dirs = run_dirs or [run_dir]
        self.segments = segments
        self.stores = stores
        self.warnings = warnings
        #: stores found more than once (copies of one store, counted once)
        self.copies = 0
        #: why each store of the run that could not be read is missing (a copy without its
        #: ``-wal``, a damaged file, one a merge left out): the run is then ``incomplete``
        self.unreadable: list[str] = []
        self._replayed: dict[tuple[str, int], Replayed] | None = None

    @classmethod
    def open(cls, run_dir: str | Path | Sequence[str | Path], now: float | None = None, *,
             note_copies: bool = True, known: Closed | None = None) -> "Run":
        """Read a run directory, or several directories of one run (node-local directories,
        copies; a list, or one text joining them with ``+``, see :func:`run_dirs_of`): a store found in more than one (same host, boot id, rank and segment) is read
        once, the most complete copy (closed before running, less damage first, then the latest
        heartbeat), and
        noted in :attr:`warnings` unless ``note_copies`` is False (copies expected, as in the
        integrations' gather).

        ``known``: stores read earlier by :func:`read_closed`, used as they were when their
        files have not changed since (the stop of a resumed run then reads only its own store);
        the others are closed.

        Raises:
            ConfigError: a directory is missing or holds no store, none of the stores can be
                read, or the directories hold different runs (one line naming the directory).
        """
        known = dict(known or {})
        try:
            return cls._open(run_dir, now, note_copies, known)
        finally:
            for _, seg in known.values():  # not used: the store changed, or is gone
                seg.reader.close()

    @classmethod
    def _open(cls, run_dir: str | Path | Sequence[str | Path], now: float | None,
              note_copies: bool, known: Closed) -> "Run":
        dirs = (run_dirs_of(run_dir) if isinstance(run_dir, (str, Path))
                else [p for d in run_dir for p in run_dirs_of(d)])
        if not dirs:
            raise ConfigError("RUN_DIR", "", "give at least one run directory")
        listed = [(d, store_paths(d)) for d in dirs]  # every directory checked before reading
        now = time.time() if now is None else now
        warnings: list[str] = []
        unreadable: list[str] = []
        read: list[tuple[Segment, Path]] = []
        for directory, paths in listed:
            record = run_record(directory)
            unreadable.extend(f"{directory}: {why}" for why in record.get("left_out") or ()
                              if isinstance(why, str))
            for path in paths:
                earlier = known.pop(path, None)
                if earlier is not None and earlier[0] == _file_key(path):
                    read.append((earlier[1], directory))
                    continue
                if earlier is not None:
                    earlier[1].reader.close()
                try:
                    reader = StoreReader(path)
                except RunStoreError as e:
                    unreadable.append(str(e))
                    continue
                read.append((segment(reader, now), directory))
        try:
            mine = _own_stores(read, dirs, warnings)
        except ConfigError:
            for seg, _ in read:
                seg.reader.close()
            raise
        found: dict[tuple[str, ...], tuple[Segment, Path]] = {}
        copies = 0
        for seg, directory in mine:
            key = store_identity(seg)
            old = found.get(key)
            if old is None:
                found[key] = (seg, directory)
                continue
            keep, drop = (seg, old[0]) if _more_complete(seg, old[0]) else (old[0], seg)
            copies += 1
            if note_copies:
                warnings.append(_copy_note(seg, directory, *old, keep))
            found[key] = (keep, directory if keep is seg else old[1])
            drop.reader.close()
        warnings[:0] = unreadable
        segments = [seg for seg, _ in found.values()]
        if not segments:  # nothing recorded can be read: an error, never an empty run
            raise ConfigError("RUN_DIR", str(dirs[0]), "none of its stores can be read: "
                              + "; ".join(warnings))
        segments.sort(key=lambda s: s.start_unix)
        for seg in segments:
            warnings.extend(_said_once(seg))
        run = cls(dirs[0], segments, len(segments) + len(unreadable), warnings, dirs)
        run.copies = copies
        run.unreadable = unreadable
        run.add_damage()
        return run

    def add_damage(self) -> None:
        """Add the stores' damaged-row notes to :attr:`warnings` (once each)."""
        for seg in self.segments:
            for d in seg.reader.damaged:
                line = f"{seg.path.name}: damaged {d}"
                if line not in self.warnings:
                    self.warnings.append(line)

    def close(self) -> None:
        for seg in self.segments:
            seg.reader.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- figures -----------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        ids = sorted({str(s.meta["run_id"]) for s in self.segments if s.meta.get("run_id")})
        return ids[0] if ids else None

    @property
    def status(self) -> str:
        """The least finished of its stores' statuses; ``incomplete`` also when one of its
        stores cannot be read (:attr:`unreadable` says why), unless it runs or failed."""
        statuses = [s.status for s in self.segments]
        if self.unreadable:
            statuses.append("incomplete")
        for s in ("running", "failed", "incomplete", "stopped"):
            if s in statuses:
                return s
        return "completed"

    @property
    def mode(self) -> str | list[str]:
        modes = sorted({str(s.meta.get("mode", "machine")) for s in self.segments})
        return modes[0] if len(modes) == 1 else modes

    @property
    def settings(self) -> dict[str, Any]:
        """The settings recorded when the run started (its first segment)."""
        return dict(self.segments[0].meta.get("settings") or {})

    @property
    def labels(self) -> dict[str, str]:
        """The run's labels (``precision``, ``method``...), merged over its stores (a later
        segment's value wins)."""
        return _labels(self)

    @property
    def job(self) -> dict[str, dict[str, str]]:
        """What the scheduler and launcher call the job (Slurm, Kubernetes, torchrun), merged
        over the stores (:func:`greentrack.common.jobinfo.merge_jobs`)."""
        return merge_jobs([s.meta.get("job") for s in self.segments])

    @property
    def hosts(self) -> list[str]:
        """The hosts the run's stores were written on, in order of first appearance."""
        return list(dict.fromkeys(s.host for s in self.segments))

    @property
    def start_unix(self) -> float:
        return min(s.start_unix for s in self.segments)

    @property
    def duration_s(self) -> float:
        return union_length([(s.start_unix, s.end_unix) for s in self.segments])

    @property
    def end_unix(self) -> float:
        """When the last store ended (or, running, now)."""
        return max(s.end_unix for s in self.segments)

    @property
    def gpu_seconds(self) -> float:
        """GPU-seconds: per GPU, the wall-clock time any store of the run measured it (a GPU that
        two trackers of the run saw at once, a wrapper and its script, counts once)."""
        return float(sum(gpu_seconds_once(self.segments).values()))

    @property
    def host_seconds(self) -> dict[str, float]:
        """Per host, the seconds it ran (the union of its stores' spans)."""
        spans: dict[str, list[tuple[float, float]]] = {}
        for s in self.segments:
            spans.setdefault(s.host, []).append((s.start_unix, s.end_unix))
        return {h: union_length(v) for h, v in spans.items()}

    @property
    def resolution_s(self) -> float:
        """The finest time-series resolution the stores recorded (seconds)."""
        return min(float((s.meta.get("settings") or {}).get("resolution_s") or 1.0)
                   for s in self.segments)

    @property
    def bin_s(self) -> float:
        """The width of the run's energy bins (:func:`greentrack.run.segment.bin_width`): one
        grid for the report's time series and every time-resolved intensity integration."""
        return bin_width(max(self.duration_s, self.resolution_s), self.resolution_s)

    def energy_j(self) -> dict[str, float | None]:
        """Joules by kind (None: no channel of that kind at all, never a silent 0) and total."""
        out: dict[str, float | None] = dict.fromkeys(KINDS)
        for store in self.store_energies():
            for kind, v in store.energy_j.items():
                if v is not None:
                    out[kind] = (out[kind] or 0.0) + v
        out["total"] = sum(v for v in out.values() if v is not None)
        return out

    def store_energies(self, bins: dict[Path, list[tuple[float, float, float]]] | None = None
                       ) -> list[StoreEnergy]:
        """Each store's :class:`StoreEnergy`, with its bins when ``bins`` (by store path, as
        :meth:`energy_bins` gives them) holds them."""
        out = []
        gpu_s = gpu_seconds_once(self.segments)
        for seg in self.segments:
            energy: dict[str, float | None] = dict.fromkeys(KINDS)
            for c in seg.channels:
                energy[c["kind"]] = (energy.get(c["kind"]) or 0.0) + float(c["energy_j"] or 0.0)
            out.append(StoreEnergy(seg.path, dict(seg.meta.get("settings") or {}),
                                   seg.start_unix, seg.end_unix, energy, gpu_s[seg.path],
                                   tuple((bins or {}).get(seg.path, ()))))
        return out

    def energy_bins(self) -> dict[Path, list[tuple[float, float, float]]]:
        """Per store, its channels' energy over wall time in bins of :attr:`bin_s` (the grid
        the report's time series and every time-resolved intensity use)."""
        out: dict[Path, list[tuple[float, float, float]]] = {}
        for seg in self.segments:
            per_channel = seg.energy_bins(self.bin_s, self.resolution_s)
            out[seg.path] = [b for cid in sorted(per_channel) for b in per_channel[cid]]
        return out

    def phase_sums(self) -> dict[str, dict[str, float]]:
        """Per phase, every store's step sums added (:meth:`Segment.step_phases`: steps,
        duration, joules, FLOPs, samples, tokens and how many rows recorded each)."""
        out: dict[str, dict[str, float]] = {}
        for seg in self.segments:
            for phase, sums in seg.phase_sums.items():
                p = out.setdefault(phase, dict.fromkeys(sums, 0.0))
                for k, v in sums.items():
                    p[k] += v
        return out

    def power_limit_curves(self) -> list["PowerLimitCurve"]:
        """The measured power-limit curves, one per store that calibrated
        (:mod:`greentrack.process.calibration`); none for a run without (or an older store)."""
        return curves(self.segments)

    def steps_by_phase(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for seg in self.segments:
            for phase, (n, _) in seg.phases.items():
                out[phase] = out.get(phase, 0) + n
        return out

    def optimizer_steps(self) -> int:
        """Training steps as the framework counts them (its global step): one rank's ``train``
        steps over all its segments (the most of any rank), a step done again after a resume
        once (:meth:`replayed`); never evaluation, sanity-check or other ranks' copies of the
        same step."""
        per_rank: dict[tuple[str, int], float] = {}
        for seg in self.segments:
            n = seg.phases.get("train", (0, 0.0))[0]
            key = (seg.host, seg.rank)
            per_rank[key] = per_rank.get(key, 0) + n
        again = self._replayed_by_process()
        return max((int(round(n - again[k].steps)) if k in again else int(n)
                    for k, n in per_rank.items()), default=0)

    def replayed(self) -> Replayed:
        """Training steps done again after resuming from a checkpoint, every process: steps of a
        segment numbered at or after the first step of a later segment of the same host and rank
        that started after it ended and continued from a checkpoint (its first step number above
        0; a segment that starts again from step 0 is a new training, not a resume). The
        checkpoint's step is that first number, so the steps from it on were recorded twice."""
        parts = self._replayed_by_process().values()
        return Replayed(sum(p.steps for p in parts), sum(p.energy_j for p in parts),
                        sum(p.resumes for p in parts))

    def _replayed_by_process(self) -> dict[tuple[str, int], Replayed]:
        if self._replayed is not None:
            return self._replayed
        mine: dict[tuple[str, int], list[Segment]] = {}
        for seg in self.segments:  # in start order
            mine.setdefault((seg.host, seg.rank), []).append(seg)
        out: dict[tuple[str, int], Replayed] = {}
        for key, segs in mine.items():
            steps = joules = 0.0
            resumes = set()
            for i, seg in enumerate(segs):
                if "train" not in seg.phases:
                    continue
                later = [(s.first_idx["train"], j) for j, s in enumerate(segs[i + 1:], i + 1)
                         if s.first_idx.get("train", 0) > 0
                         and s.start_unix >= seg.end_unix - RESUME_OVERLAP_S]
                if not later:
                    continue
                first, j = min(later)
                n, e = seg.steps_from("train", first)
                if n > 0:
                    steps, joules = steps + n, joules + e
                    resumes.add(j)
            if steps > 0:
                out[key] = Replayed(steps, joules, len(resumes))
        self._replayed = out
        return out

    def phase_energy_j(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for seg in self.segments:
            for phase, (_, e) in seg.phases.items():
                out[phase] = out.get(phase, 0.0) + e
        return out

    def steps_inside_j(self) -> tuple[dict[str, float], float, float]:
        """Energy spent inside step windows, per phase: ``(joules by phase, union s, sum s)``.

        Each store's step rows carry the joules of that store's devices over their windows (the
        engine attributes them once). Where a store's windows overlap (union shorter than their
        sum), its phases' joules are scaled by union / sum so no second is counted twice."""
        out: dict[str, float] = {}
        union_s = sum_s = 0.0
        for seg in self.segments:
            u, s = seg.step_cover()
            union_s, sum_s = union_s + u, sum_s + s
            scale = u / s if s > u > 0 else 1.0
            for phase, (_, e) in seg.phases.items():
                out[phase] = out.get(phase, 0.0) + e * scale
        return out, union_s, sum_s

    @property
    def gaps(self) -> int:
        # one gap per interruption: a loss is recorded as gap-start then device-lost
        return sum(1 for s in self.segments for e in s.events if e["kind"] == "gap-start")

    def devices(self) -> list[Device]:
        """Every device once (see the module docstring), in order of first appearance."""
        found: dict[str, Device] = {}
        for seg in self.segments:
            for c in seg.channels:
                key = device_identity(seg.host, seg.rank, c)
                old = found.get(key)
                found[key] = Device(
                    identity=key, kind=c["kind"], device=c["device"], name=c["name"] or c["device"],
                    host=seg.host, rank=old.rank if old else seg.rank, method=c["method"],
                    measured=bool(c["measured"]), source=c["source"] or c["method"],
                    uncertainty=c["uncertainty"] or "",
                    energy_j=(old.energy_j if old else 0.0) + float(c["energy_j"] or 0.0),
                    gap_s=(old.gap_s if old else 0.0) + float(c["gap_s"] or 0.0),
                    status=str(c["status"]), stores=(old.stores if old else 0) + 1)
        return list(found.values())

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        return [e for s in self.segments for e in s.events if not kinds or e["kind"] in kinds]

    def summary_by_phase(self) -> RunTotals:
        """:meth:`summary` and the energy of each phase's steps: one read of the run."""
        return RunTotals(**self.summary(), phase_energy_j=self.phase_energy_j())

    def summary(self) -> RunSummary:
        """The ``greentrack summary --json`` document, without the footprint."""
        energy = self.energy_j()
        by_phase = self.steps_by_phase()
        replayed = self.replayed()
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir),
            "run_dirs": [str(d) for d in self.run_dirs], "status": self.status,
            "duration_s": self.duration_s, "energy_j": energy,
            "energy_kwh": float(energy["total"] or 0.0) / J_PER_KWH,
            "gpu_seconds": self.gpu_seconds, "steps": sum(by_phase.values()),
            "steps_by_phase": by_phase, "optimizer_steps": self.optimizer_steps(),
            "steps_energy_j": sum(self.phase_energy_j().values()),
            "replayed_steps": replayed.steps, "replayed_energy_j": replayed.energy_j,
            "mode": self.mode, "stores": self.stores, "hosts": self.hosts, "job": self.job,
            "gaps": self.gaps,
            "sources": [d.as_source() for d in self.devices()], "warnings": list(self.warnings),
        }


def _said_once(seg: Segment) -> list[str]:
    """A store's warnings for the summary, the runs met on this host said once with how many
    more there were (each is a ``host-shared`` event of its own, all kept in the events)."""
    out: list[str] = []
    shared_at, more = -1, 0
    for e in seg.events:
        if e["kind"] not in RECORD_WARNINGS:
            continue
        if e["kind"] == "host-shared":
            if shared_at >= 0:
                more += 1
                continue
            shared_at = len(out)
        out.append(f"{seg.path.name}: {e['message']}")
    if more:
        out[shared_at] += (f" (and {more} more run{'s' if more > 1 else ''} met on this host, "
                           "each in the run's host-shared events)")
    return out


def device_identity(host: str, rank: int, channel: dict[str, Any]) -> str:
    """Who a channel measures, across segments and ranks (``greentrack.engine.engine.channel_key`` is
    the same idea within one machine): a GPU's UUID; a host zone by host and device."""
    details = channel.get("details") or {}
    uuid = details.get("uuid") if isinstance(details, dict) else None
    if channel["kind"] == "gpu" and uuid:
        base = f"gpu:{uuid}"
    elif channel.get("host_scope"):
        base = f"{host}:{channel['kind']}:{channel['device']}"
    else:
        base = f"{host}:r{rank}:{channel['kind']}:{channel['device']}"
    return f"{base}:{channel['method']}"


#: Stores read ahead of :meth:`Run.open` (:func:`read_closed`): path -> (file key, segment).
Closed = dict[Path, tuple[Any, Segment]]
#: Statuses a store's own writer recorded at its close: such a store no longer changes.
CLOSED = ("completed", "failed", "stopped")


def read_closed(run_dir: Path) -> Closed:
    """The stores of ``run_dir`` their writers closed, read now, for :meth:`Run.open` to reuse
    (``known=``) while their files stay as they are: a resumed run's tracker reads its earlier
    segments in the background after its start, so its stop reads one store whatever their
    number. A store that cannot be read, or still runs, is left to :meth:`Run.open`."""
    out: Closed = {}
    for path in store_paths(run_dir):
        try:
            reader = StoreReader(path)
        except RunStoreError:
            continue
        if reader.meta.get("status") not in CLOSED:
            reader.close()
            continue
        out[path] = (_file_key(path), segment(reader, time.time()))
    return out


def _file_key(path: Path) -> Any:
    """What changes when a store is written: its file's and its ``-wal``'s size and mtime."""
    key: list[tuple[int, int] | None] = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
            key.append((st.st_size, st.st_mtime_ns))
        except OSError:
            key.append(None)
    return tuple(key)


def run_dirs_of(arg: str | Path) -> list[Path]:
    """The directories one ``RUN_DIR`` argument names: itself, or, where no such path exists and
    it holds ``+``, the directories it joins (``node0/run+node1/run``: node-local directories of
    one run, as ``greentrack report`` and ``compare`` take them)."""
    text = str(arg)
    if "+" in text and not Path(text).exists():
        pieces = text.split("+")
        # a directory whose own name holds '+' (``x+y/run+node1/run``): the split into paths
        # that exist, longest pieces first; else the longest existing pieces as far as they go
        # (so the error names the piece that is missing)
        found = _existing_split(pieces) if len(pieces) <= 32 else None
        parts = [Path(p) for p in (found or _greedy_split(pieces)) if p]
        if parts:
            return parts
    return [Path(arg)]


def _greedy_split(pieces: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(pieces):
        k = next((k for k in range(len(pieces), i, -1)
                  if Path("+".join(pieces[i:k])).exists()), i + 1)
        out.append("+".join(pieces[i:k]))
        i = k
    return out


def _existing_split(pieces: list[str]) -> list[str] | None:
    for k in range(len(pieces), 0, -1):
        head = "+".join(pieces[:k])
        if head and Path(head).exists():
            rest = _existing_split(pieces[k:]) if k < len(pieces) else []
            if rest is not None:
                return [head, *rest]
    return None


def run_record(directory: Path) -> dict[str, Any]:
    """A run directory's ``run.json`` (the run's id, what a merge left out), or {} where there is
    none or it cannot be read."""
    import json
    try:
        record = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _own_stores(read: list[tuple[Segment, Path]], dirs: list[Path],
                warnings: list[str]) -> list[tuple[Segment, Path]]:
    """The stores that belong to the run: a directory holds one run, the one its ``run.json``
    names (else the run most of its stores belong to). A store of another run (copied in) is
    left out with a warning, never summed; directories of different runs are refused.

    Raises:
        ConfigError: the directories hold different runs.
    """
    from collections import Counter
    own: dict[Path, str] = {}
    for directory in dirs:
        named = run_record(directory).get("run_id")
        if isinstance(named, str) and named:
            own[directory] = named
            continue
        ids = Counter(str(seg.meta["run_id"]) for seg, d in read
                      if d == directory and isinstance(seg.meta.get("run_id"), str))
        if ids:
            own[directory] = ids.most_common(1)[0][0]
    first: tuple[str, Path] | None = None
    for directory in dirs:
        if directory not in own:
            continue
        if first is None:
            first = (own[directory], directory)
        elif own[directory] != first[0]:
            raise ConfigError("RUN_DIR", str(directory), f"holds run {own[directory]}, not run "
                              f"{first[0]} of {first[1]}: only directories of one run can be "
                              "read together")
    kept = []
    for seg, directory in read:
        run_id = seg.meta.get("run_id")
        if isinstance(run_id, str) and directory in own and run_id != own[directory]:
            warnings.append(f"{seg.path.name}: a store of run {run_id}, not of run "
                            f"{own[directory]} (its directory's): left out, not counted "
                            "(copied in? read it from a directory of its own)")
            seg.reader.close()
            continue
        kept.append((seg, directory))
    return kept


def store_identity(seg: Segment) -> tuple[str, ...]:
    """Who wrote a store, wherever a copy of it is found: host, boot id, rank and segment (each
    process's store has its own segment id). A store without a segment id (damaged meta) is known
    by its file name and start instead."""
    meta = seg.meta
    if isinstance(meta.get("segment"), str):
        return (seg.host, str(meta.get("boot_id", "")), str(seg.rank), str(meta["segment"]))
    return ("?", seg.path.name, repr(meta.get("started_unix")))


def _copy_note(seg: Segment, directory: Path, old: Segment, old_dir: Path, kept: Segment) -> str:
    if seg.path.name == old.path.name:
        return f"{seg.path.name}: in {old_dir} and {directory}: counted once"
    return (f"{old.path.name} and {seg.path.name} are copies of one store (the same host, boot id, "
            f"rank and segment): counted once, from {kept.path.name}")


def _more_complete(a: Segment, b: Segment) -> bool:
    """Of two copies of one store: a closed one, then the one with less damage (unreadable rows,
    values out of range), then the one with the later heartbeat; the first on a tie."""
    def rank(s: Segment) -> tuple[bool, int, float]:
        last = s.meta.get("ended_unix") or s.meta.get("heartbeat_unix") or 0.0
        return s.meta.get("status") != "running", -len(s.reader.damaged), float(last)
    return rank(a) > rank(b)


def gpu_seconds_once(segments: list[Segment]) -> dict[Path, float]:
    """Each store's GPU-seconds, every GPU counted once over time: a store is given, of each GPU
    it measured (known by its machine's boot id and its UUID), the part of its span no earlier
    store of the run already covered. They add up to the run's GPU-seconds."""
    covered: dict[tuple[str, str], list[tuple[float, float]]] = {}
    out: dict[Path, float] = {}
    for seg in sorted(segments, key=lambda s: (s.start_unix, str(s.path))):
        own = 0.0
        span = (seg.start_unix, max(seg.start_unix, seg.end_unix))
        for c in seg.channels:
            if c["kind"] != "gpu":
                continue
            details = c.get("details")
            uuid = details.get("uuid") if isinstance(details, dict) else None
            key = (str(seg.meta.get("boot_id") or seg.host), str(uuid or c["device"]))
            seen = covered.setdefault(key, [])
            own += union_length([*seen, span]) - union_length(seen) if seen else span[1] - span[0]
            seen.append(span)
        out[seg.path] = own
    return out


def union_length(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``[a, b]`` spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


# -- labels, recorded metrics and energy to a target (greentrack compare --target) --------------


def _labels(run: Run) -> dict[str, str]:
    out: dict[str, str] = {}
    for seg in run.segments:
        labels = seg.meta.get("labels")
        if isinstance(labels, dict):
            out.update(labels)
    return out
