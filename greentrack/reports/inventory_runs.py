"""The inventory's runs: found under roots, each read once, its energy cut at time windows.

:func:`find_runs` walks the roots for run directories (a directory holding a ``run.json`` or a
``*.gtdb`` store; its sub-directories are not searched further) and groups the directories of one
run (node-local copies, the same ``run_id`` in their ``run.json``) so :meth:`greentrack.run.Run.open`
reads them as one run, each store once (host, boot id, rank and segment:
:func:`greentrack.run.store_identity`).

:func:`window_stores` gives a run's stores as the footprint counts them
(:class:`greentrack.run.StoreEnergy`), cut to a window of wall time: a store inside it is taken
whole (the very object the report uses, so one run's inventory equals its report); a store that
crosses an edge is cut by its own energy over time: each channel keeps the share of its joules
that its stored samples put inside the window (a sample spread evenly over its span, as the
report's bins do), a channel without samples the share of its span's time. GPU-seconds are cut by
time. The footprint of the cut stores comes from :func:`greentrack.carbon.runs.profile_of_stores`
and :func:`greentrack.carbon.footprint.footprint`: the same path as every report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from greentrack.carbon.footprint import Footprint, Work, footprint
from greentrack.carbon.runs import Explicit, Memo, profile_of_stores
from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.run import Run, Segment, StoreEnergy
from greentrack.run.model import run_record
from greentrack.store import SUFFIX, StoreReader

Window = tuple[float, float]


def is_run_dir(names: Iterable[str]) -> bool:
    """A directory whose entries are ``names`` holds a run: a ``run.json`` or a store."""
    return any(n == "run.json" or n.endswith(SUFFIX) for n in names)


def find_runs(roots: Sequence[str | Path]) -> list[list[Path]]:
    """The run directories under ``roots``, grouped by run: the directories whose ``run.json``
    (else first store) names one run id are one run (node-local copies); a directory where
    neither names one is a run of its own. A directory reached twice (overlapping roots, links)
    counts once. Sorted by path.

    Raises:
        ConfigError: a root does not exist or is not a directory.
    """
    seen: set[str] = set()
    groups: dict[str, list[Path]] = {}
    for root in roots:
        top = Path(root)
        if not top.is_dir():
            raise ConfigError("ROOT", str(root), "does not exist" if not top.exists() else
                              "is not a directory (give directories holding run directories)")
        for here, dirs, files in os.walk(top, followlinks=False):
            if not is_run_dir(files):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                continue
            dirs[:] = []  # a run's own sub-directories (.joins) hold no other run
            path = Path(here)
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            run_id = run_record(path).get("run_id") or _stored_run_id(path, files)
            key = f"id:{run_id}" if isinstance(run_id, str) and run_id else f"dir:{real}"
            groups.setdefault(key, []).append(path)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: str(g[0]))


def _stored_run_id(path: Path, files: Iterable[str]) -> str | None:
    """The run id a directory's first store records (a copy of a run's stores without its
    ``run.json``), None when none can be read."""
    for name in sorted(files):
        if name.endswith(SUFFIX):
            try:
                reader = StoreReader(path / name)
            except RunStoreError:
                continue
            try:
                run_id = reader.meta.get("run_id")
            finally:
                reader.close()
            return run_id if isinstance(run_id, str) else None
    return None


@dataclass(frozen=True)
class Cut:
    """A run's stores inside a window: what the footprint counts, and the measured share.

    Attributes:
        stores: the stores cut to the window (none: the run used no energy in it).
        measured_j / estimated_j: the window's joules of measured and of estimated channels.
        binned: the same stores, a cut one with its energy over time inside the window (what
            a time-resolved intensity integrates); one taken whole as it is.
        whole: every store lies inside the window (the stores are the run's own, uncut).
    """

    stores: tuple[StoreEnergy, ...]
    binned: tuple[StoreEnergy, ...]
    measured_j: float
    estimated_j: float
    whole: bool
    #: per store: its window's measured and estimated joules
    split: tuple[tuple[float, float], ...] = ()


def _share(bins: Sequence[tuple[float, float, float]], lo: float, hi: float,
           window: Window) -> float:
    """The share of a channel's energy inside ``window``: by its bins, else by time."""
    a, b = window
    total = sum(e for _, _, e in bins)
    if total > 0:
        inside = 0.0
        for x, y, e in bins:
            if y <= x:
                inside += e if a <= x < b else 0.0
            else:
                inside += e * max(0.0, min(y, b) - max(x, a)) / (y - x)
        return inside / total
    if hi <= lo:
        return 1.0 if a <= lo < b else 0.0
    return max(0.0, min(hi, b) - max(lo, a)) / (hi - lo)


def _clip(bins: Iterable[tuple[float, float, float]], window: Window
          ) -> tuple[tuple[float, float, float], ...]:
    a, b = window
    out = []
    for x, y, e in bins:
        if y <= x:
            if a <= x < b:
                out.append((x, y, e))
            continue
        lo, hi = max(x, a), min(y, b)
        if hi > lo:
            out.append((lo, hi, e * (hi - lo) / (y - x)))
    return tuple(out)


def _inside(store: StoreEnergy, window: Window) -> bool:
    return window[0] <= store.start_unix and store.end_unix <= window[1]


def _outside(store: StoreEnergy, window: Window) -> bool:
    a, b = window
    if store.end_unix <= store.start_unix:
        return not a <= store.start_unix < b
    return store.end_unix <= a or store.start_unix >= b


def window_stores(run: Run, stores: Sequence[StoreEnergy], window: Window) -> Cut:
    """``stores`` (the run's :meth:`~greentrack.run.Run.store_energies`) cut to ``window``
    (see the module docstring)."""
    by_path = {seg.path: seg for seg in run.segments}
    kept: list[StoreEnergy] = []
    binned: list[StoreEnergy] = []
    split: list[tuple[float, float]] = []
    whole = True
    for store in stores:
        seg = by_path[store.path]
        if _outside(store, window):
            whole = False
            continue
        if _inside(store, window):
            kept.append(store)
            binned.append(store)
            split.append((
                sum(float(c["energy_j"] or 0.0) for c in seg.channels if c["measured"]),
                sum(float(c["energy_j"] or 0.0) for c in seg.channels if not c["measured"])))
            continue
        whole = False
        cut, with_bins, m, e = _cut(run, seg, store, window)
        kept.append(cut)
        binned.append(with_bins)
        split.append((m, e))
    return Cut(tuple(kept), tuple(binned), sum(m for m, _ in split), sum(e for _, e in split),
               whole, tuple(split))


def _cut(run: Run, seg: Segment, store: StoreEnergy, window: Window
         ) -> tuple[StoreEnergy, StoreEnergy, float, float]:
    """One store crossing an edge of ``window``, cut by its channels' energy over time."""
    bins = seg.energy_bins(run.bin_s, run.resolution_s)
    energy: dict[str, float | None] = {k: None if v is None else 0.0
                                       for k, v in store.energy_j.items()}
    measured = estimated = 0.0
    clipped: list[tuple[float, float, float]] = []
    for c in seg.channels:
        own = bins.get(int(c["id"]), [])
        e = float(c["energy_j"] or 0.0) * _share(own, store.start_unix, store.end_unix, window)
        energy[c["kind"]] = (energy.get(c["kind"]) or 0.0) + e
        if c["measured"]:
            measured += e
        else:
            estimated += e
        clipped.extend(_clip(own, window))
    lo, hi = max(store.start_unix, window[0]), min(store.end_unix, window[1])
    span = store.end_unix - store.start_unix
    time_share = (hi - lo) / span if span > 0 else 1.0
    cut = replace(store, start_unix=lo, end_unix=max(lo, hi), energy_j=energy,
                  gpu_seconds=store.gpu_seconds * time_share, bins=())
    return cut, replace(cut, bins=tuple(clipped)), measured, estimated


def cut_footprint(run: Run, cut: Cut, explicit: Explicit, memo: Memo | None = None) -> Footprint:
    """The footprint of a run's stores cut to a window: :func:`profile_of_stores` at each
    store's recorded settings, as the run's report computes it (its energy over time read only
    when a part's intensity is a time series). ``memo``: settings resolved for earlier runs
    under the same ``explicit`` (:class:`greentrack.carbon.runs.Memo`)."""
    def with_bins() -> list[StoreEnergy]:
        # a store taken whole: its bins on the run's grid (the report's); a cut one: its own
        whole = ({s.path: s for s in run.store_energies(run.energy_bins())}
                 if any(b is s for s, b in zip(cut.stores, cut.binned)) else {})
        return [whole[s.path] if b is s else b for s, b in zip(cut.stores, cut.binned)]
    return footprint(profile_of_stores(list(cut.stores), explicit, Work(), with_bins, memo=memo))


def host_cuts(cut: Cut, hosts: dict[Path, str]) -> dict[str, Cut]:
    """``cut`` by the host that wrote each store (a multi-node run's energy per node)."""
    out: dict[str, list[tuple[StoreEnergy, StoreEnergy, tuple[float, float]]]] = {}
    for s, b, m in zip(cut.stores, cut.binned, cut.split):
        out.setdefault(hosts.get(s.path, "?"), []).append((s, b, m))
    return {h: Cut(tuple(s for s, _, _ in v), tuple(b for _, b, _ in v),
                   sum(m[0] for _, _, m in v), sum(m[1] for _, _, m in v), False,
                   tuple(m for _, _, m in v)) for h, v in out.items()}


__all__ = ["Cut", "Window", "cut_footprint", "find_runs", "host_cuts", "is_run_dir",
           "window_stores"]
