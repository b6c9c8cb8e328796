"""``greentrack merge OUT RUN_DIR...``: node-local run directories of one run become one.

Without a shared filesystem each node of a multi-node job writes its stores into its own copy of
the run directory. Merging reads them as :class:`greentrack.run.Run` does (every directory one
run: the same run id, else refused), keeps each store once (a store is known by host, boot id,
rank and segment, so a directory copied twice adds nothing) and writes a consistent copy of each
(SQLite's backup: committed data, ``-wal`` included) into ``OUT``, with a ``run.json`` naming the
inputs. The inputs are only read (SQLite may add the ``-shm`` index beside a store it reads, as
every reader does; a read-only input is read from a private copy). ``OUT`` must not exist or be
empty, and not lie inside an input; it appears whole or not at all (written beside it, then moved).

Example:
    >>> from greentrack.run.merge import merge_runs
    >>> merge_runs("merged", ["node0/run", "node1/run"])   # doctest: +SKIP
    MergeResult(out=..., run_id='job-42', stores=4, duplicates=0, skipped=[])
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from greentrack.common.errors import ConfigError
from greentrack.common.files import staged_dir
from greentrack.run import Run, run_dirs_of
from greentrack.store import SCHEMA_VERSION, copy_store


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_runs` wrote: ``stores`` copied, ``duplicates`` (copies of a store
    found in several inputs) left out, ``skipped``: unreadable stores, each with why (a store
    copied without its ``-wal``; the merged run is then ``incomplete`` and says why),
    ``directories``: the input directories read (``a+b`` counts two), ``live``: stores still
    being written when they were copied (merged as far as committed)."""

    out: Path
    run_id: str | None
    stores: int
    duplicates: int
    skipped: list[str] = field(default_factory=list)
    directories: int = 0
    live: list[str] = field(default_factory=list)


def merge_runs(out: str | Path, run_dirs: Sequence[str | Path]) -> MergeResult:
    """Merge ``run_dirs`` (directories of one run) into the new directory ``out``.

    Raises:
        ConfigError: ``out`` exists and is not an empty directory; an input is missing or holds
            no store; the inputs hold different runs; a store cannot be copied.
    """

    out = Path(out)
    if os.path.lexists(out) and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("OUT", str(out), "exists and is not an empty directory: merge into a "
                          "new one (inputs are never changed)")
    if not run_dirs:
        raise ConfigError("RUN_DIR", "", "give at least one run directory to merge")
    # links resolved on both sides: OUT through a link into an input (or an input given through
    # a link) is still inside it
    target = Path(os.path.realpath(out))
    for d in (one for arg in run_dirs for one in run_dirs_of(arg)):
        if target.is_relative_to(Path(os.path.realpath(d))):
            raise ConfigError("OUT", str(out), f"is inside the input {d}: merge into a directory "
                              "outside the inputs (they are never changed)")
    with Run.open(run_dirs) as run:
        duplicates = run.copies
        skipped = list(run.unreadable)
        try:
            with staged_dir(out, exclusive=True) as tmp:
                _write(run, tmp)
        except OSError as e:  # an unwritable or missing place for OUT: one line, no traceback
            raise ConfigError("OUT", str(out), f"cannot be written ({e.strerror or e})") from None
        live = [str(seg.path) for seg in run.segments if seg.status == "running"]
        return MergeResult(out, run.run_id, len(run.segments), duplicates, skipped,
                           len(run.run_dirs), live)


def _write(run: "Run", tmp: Path) -> None:
    """Each store of ``run`` (a consistent copy) and the merged ``run.json`` into ``tmp``."""
    names: set[str] = set()
    for seg in run.segments:
        name = seg.path.name
        while name in names:  # two stores, one name (never written so): keep both
            name = f"x{name}"
        names.add(name)
        try:
            copy_store(seg.reader, tmp / name)
        except (sqlite3.Error, OSError) as e:
            raise ConfigError("RUN_DIR", str(seg.path), f"cannot be copied ({e})") from None
    record = {"run_id": run.run_id, "created_unix": time.time(), "format": "greentrack-run",
              "schema_version": SCHEMA_VERSION,
              "merged_from": [str(Path(d).resolve()) for d in run.run_dirs],
              "left_out": run.unreadable}  # the merged run stays incomplete, with the reasons
    (tmp / "run.json").write_text(json.dumps(record))


__all__ = ["MergeResult", "merge_runs"]
