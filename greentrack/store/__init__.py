"""The run store: one SQLite database (WAL) per process in the run directory.

Why SQLite in WAL mode: it is in the standard library, a reader never blocks the writer (the run is
readable while it goes), a committed transaction survives SIGKILL of the writer, and one file per
process means ranks on many hosts share a run directory without any locking.

Layout of a run directory::

    RUN_DIR/run.json                          run id, created once by whichever process is first
    RUN_DIR/<host>-r<rank>-<segment>.gtdb     one store per process and segment (resume = new segment)

Tables: ``meta`` (key -> JSON), ``channels`` (how each device is measured, its running total),
``samples`` (energy per channel per time bucket), ``steps``, ``events`` (gaps, errors, estimates),
``metrics`` (``Tracker.record``), ``power_limits`` (a measured power-limit curve, schema 3) and
``rollups`` (per channel and minute: the samples' count, joules and span, kept by triggers as the
samples go in; reports read them instead of every sample, see :func:`.writer.rollup_schema`).
Times are seconds on the process's monotonic clock since the segment start (``t``), plus the wall
clock of the segment start in ``meta`` so wall times are derived, never read mid-run.

The package: :mod:`.layout` (the schema, the run directory), :mod:`.writer` (one process's store),
:mod:`.reader` (reading any store, damaged or hostile ones included: every value read is checked).
"""

from __future__ import annotations

from greentrack.store.layout import (SCHEMA_VERSION, SUFFIX, discard_unused_run_dir, host_identity,
                                     prepare_run_dir, safe_host)
from greentrack.store.reader import (MAX_ENERGY_J, MAX_T_S, VALID_SAMPLE, VALID_STEP, StoreReader,
                                     sql_number, store_paths)
from greentrack.store.writer import StoreWriter, append_event, compact_store, copy_store

__all__ = ["MAX_ENERGY_J", "MAX_T_S", "SCHEMA_VERSION", "SUFFIX", "VALID_SAMPLE", "VALID_STEP",
           "StoreReader", "StoreWriter", "append_event", "compact_store", "copy_store",
           "discard_unused_run_dir", "host_identity", "prepare_run_dir", "safe_host", "sql_number",
           "store_paths"]
