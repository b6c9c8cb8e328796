"""Writes one process's store (see :mod:`greentrack.store`)."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.common.units import is_number
from greentrack.store.layout import _SCHEMA, SCHEMA_VERSION, SUFFIX, StepRow, safe_host
from greentrack.store.reader import VALID_STEP, valid_sample

#: Width of a rollup cell (seconds): the ``rollups`` table holds, per channel and cell, what the
#: reports read of the samples (count, joules, first start, last start, last end), so a report of
#: a week-long run reads ~10^5 rollup rows instead of ~10^7 samples.
ROLLUP_S = 60.0


def rollup_schema(offset_s: float, width_s: float = ROLLUP_S) -> str:
    """The ``rollups`` table and the triggers that keep it as samples are inserted.

    Cell ``k`` of a channel holds its usable samples (:func:`~greentrack.store.reader.valid_sample`)
    with ``k * width_s - offset_s <= t < (k + 1) * width_s - offset_s``: the offset is half the
    store's resolution, as the reports' bin edges (:mod:`greentrack.run.segment`), so a bucket is
    never near an edge. The cell is kept in SQLite by a trigger, so every writer of samples (the
    engine, a bench, a repair tool) keeps it; a sample changed or deleted afterwards, an unusable
    or replaced one inserted, deletes meta ``rollup`` and readers go back to the samples (which
    then report the damage). No UPSERT (a store must open with any SQLite 3) nor ``OR IGNORE``
    (the samples' ``INSERT OR REPLACE`` would override it inside the trigger)."""
    new = valid_sample("NEW.")
    # floor for t >= -3600 (usable times): CAST truncates towards zero, so shift above it first
    cell = f"CAST((NEW.t + {offset_s!r}) / {width_s!r} + 100 AS INTEGER) - 100"
    stale = "BEGIN DELETE FROM meta WHERE key = 'rollup'; END;"
    return f"""
CREATE TABLE IF NOT EXISTS rollups (
    channel_id INTEGER NOT NULL, k INTEGER NOT NULL, n INTEGER NOT NULL, energy_j REAL NOT NULL,
    lo REAL NOT NULL, tmax REAL NOT NULL, hi REAL NOT NULL,
    PRIMARY KEY (channel_id, k)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS rollup_replace BEFORE INSERT ON samples WHEN EXISTS (
    SELECT 1 FROM samples WHERE channel_id = NEW.channel_id AND t = NEW.t) {stale}
CREATE TRIGGER IF NOT EXISTS rollup_add AFTER INSERT ON samples WHEN {new} BEGIN
    INSERT INTO rollups SELECT NEW.channel_id, {cell}, 0, 0.0, NEW.t, NEW.t, NEW.t + NEW.dt
    WHERE NOT EXISTS (SELECT 1 FROM rollups WHERE channel_id = NEW.channel_id AND k = {cell});
    UPDATE rollups SET n = n + 1, energy_j = energy_j + NEW.energy_j, lo = MIN(lo, NEW.t),
        tmax = MAX(tmax, NEW.t), hi = MAX(hi, NEW.t + NEW.dt)
    WHERE channel_id = NEW.channel_id AND k = {cell};
END;
CREATE TRIGGER IF NOT EXISTS rollup_unusable AFTER INSERT ON samples WHEN NOT {new} {stale}
CREATE TRIGGER IF NOT EXISTS rollup_update AFTER UPDATE ON samples {stale}
CREATE TRIGGER IF NOT EXISTS rollup_delete AFTER DELETE ON samples {stale}
"""


def rollup_meta(offset_s: float, width_s: float = ROLLUP_S) -> dict[str, float]:
    """Meta ``rollup``: the cells' width and offset; present while the rollups are whole."""
    return {"width_s": width_s, "offset_s": offset_s}


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                               check_same_thread=False)
        # a damaged page can hold invalid UTF-8: read it as replacement characters, not a crash
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
    else:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        # Created without fsync (seven of them, most of a start's time on a busy disk): a new
        # store's schema and identity are safe from a crash of this process (they are in the
        # OS's cache) and reach the disk at the first periodic checkpoint; StoreWriter then
        # sets synchronous=NORMAL.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA journal_mode=WAL")
    return conn


class StoreWriter:
    """Writes one process's store. Thread-safe: the engine thread and ``Tracker.stop`` share it.

    Writes are buffered and committed by :meth:`flush` in one transaction, so what SIGKILL can lose
    is bounded by the flush interval.
    """

    def __init__(self, run_dir: Path, rank: int, meta: dict[str, Any]) -> None:
        self.segment = uuid.uuid4().hex[:8]
        self.path = run_dir / f"{safe_host()}-r{rank}-{self.segment}{SUFFIX}"
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self.rows_rejected = 0
        resolution: Any = (meta.get("settings") or {}).get("resolution_s")
        # half a bucket: the reports' bin edges (greentrack.run.segment); settings are checked
        # before a store is made, this only keeps a writer given odd meta from failing
        offset = float(resolution) / 2.0 if is_number(resolution, 1e-6, 86400.0) else 0.5
        try:
            self._conn = _connect(self.path, readonly=False)
            self._conn.executescript(_SCHEMA + rollup_schema(offset) + _inbox_schema())
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise RunStoreError(f"store {self.path.name}: {e}") from None
            raise ConfigError("run_dir", str(run_dir), f"cannot create the store ({e})") from None
        self.set_meta({**meta, "segment": self.segment, "schema_version": SCHEMA_VERSION,
                       "rollup": rollup_meta(offset)})
        self.flush()
        self.checkpoint()  # the schema and the run's identity in the .gtdb itself, not only the -wal
        # from now on each checkpoint syncs the WAL and the file: a power loss costs at most
        # the commits since the last one
        self._conn.execute("PRAGMA synchronous=NORMAL")

    # -- buffered writes (cheap; committed by flush) -----------------------------------------
    def _queue(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append((sql, args))

    def set_meta(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self._queue(_SET_META, (k, _json(v)))

    def add_channel(self, channel_id: int, info: dict[str, Any]) -> None:
        self._queue(
            "INSERT INTO channels (id, kind, device, name, method, measured, source, uncertainty, "
            "host_scope, details) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (channel_id, info["kind"], info["device"], info["name"], info["method"],
             int(info["measured"]), info["source"], info["uncertainty"], int(info["host_scope"]),
             json.dumps(info["details"])))

    def update_channel_info(self, channel_id: int, info: dict[str, Any]) -> None:
        """A channel's new description (a GPU that became shared is an estimated share from then
        on): method, measured, source, uncertainty and details are replaced."""
        self._queue("UPDATE channels SET method=?, measured=?, source=?, uncertainty=?, details=? "
                    "WHERE id=?", (info["method"], int(info["measured"]), info["source"],
                                   info["uncertainty"], json.dumps(info["details"]), channel_id))

    def update_channel(self, channel_id: int, energy_j: float, until_t: float | None,
                       gap_s: float, status: str) -> None:
        self._queue(_UPDATE_CHANNEL, (energy_j, until_t, gap_s, status, channel_id))

    def add_sample(self, channel_id: int, t: float, dt: float, energy_j: float) -> None:
        self._queue(_ADD_SAMPLE, (channel_id, t, dt, energy_j))

    def add_step(self, row: StepRow) -> None:
        self.add_steps([row])

    def add_steps(self, rows: list[StepRow]) -> None:
        """Queue step rows (one lock for the batch; an empty ``extra`` needs no JSON encoder)."""
        queued = [(_ADD_STEP, (*row[:13], _json(row.extra) if row.extra else "{}", row.n))
                  for row in rows]
        with self._lock:
            self._pending += queued

    def add_metric(self, t: float, step: int | None, name: str, value: float,
                   energy_j: float) -> None:
        self._queue("INSERT INTO metrics (t, step, name, value, energy_j) VALUES (?,?,?,?,?)",
                    (t, step, name, value, energy_j))

    def add_power_limit(self, point: dict[str, Any]) -> None:
        """One measured point of a power-limit curve (the ``power_limits`` columns by name)."""
        cols = ("limit_w", "reference", "devices", "steps", "warmup_steps", "t0", "t1",
                "j_per_step", "j_per_step_sd", "gpu_j_per_step", "gpu_j_per_step_sd",
                "s_per_step", "s_per_step_sd")
        values = tuple(_json(point[c]) if c == "devices" else
                       int(point[c]) if c == "reference" else point[c] for c in cols)
        self._queue(f"INSERT INTO power_limits ({', '.join(cols)}) VALUES "
                    f"({','.join('?' * len(cols))})", values)

    def add_event(self, t: float, level: str, kind: str, message: str,
                  channel_id: int | None = None, details: dict[str, Any] | None = None) -> None:
        self._queue("INSERT INTO events (t, level, kind, channel_id, message, details) "
                    "VALUES (?,?,?,?,?,?)",
                    (t, level, kind, channel_id, message, _json(details or {})))

    def flush(self) -> None:
        """Commit everything queued in one transaction. Raises RunStoreError on failure, keeping
        the rows queued so a later flush can retry (e.g. after a full disk frees up).

        A row that SQLite refuses for what it holds (a value it cannot bind, a constraint) is set
        aside and counted in ``rows_rejected`` (and the meta key of that name); the rows behind it
        are committed. Only a failure of the database itself (full disk, I/O) keeps the batch."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        # runs of one statement in one call (a flush's steps, samples, meta keys, ...)
        runs = [(sql, [row for _, row in run]) for sql, run in groupby(batch, key=itemgetter(0))]
        try:
            try:  # the common case: every row taken, one transaction and no savepoints
                if all(sql in _INBOX for sql, _ in runs):
                    self._post(batch)
                    return
                with self._transaction():
                    for sql, args in runs:
                        self._execute(sql, args)
                return
            except sqlite3.OperationalError:
                raise  # the database, not a row: keep the batch for a retry
            except _REFUSED:
                pass  # rolled back: find what SQLite refuses, run by run, then row by row
            self._flush_careful(runs)
        except sqlite3.Error as e:
            with self._lock:
                self._pending[:0] = batch
                if len(self._pending) > 200_000:  # bounded: drop oldest samples, keep the rest
                    self._pending = [p for p in self._pending if "samples" not in p[0]][-200_000:]
            raise RunStoreError(f"store {self.path.name}: {e}") from e

    def _post(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Commit a batch of the steady statements (:data:`_INBOX`) as rows of the ``inbox``
        view, whose triggers write each to its table in the batch's order: a flush of the meta
        keys, the channels' totals, samples and steps is one statement, its own transaction
        (two GIL hand-overs, where a statement a table and BEGIN and COMMIT took twelve).
        Rows are padded to one of a few counts (:func:`_size_class`) with rows of no kind, which
        no trigger takes; more than :data:`MAX_ROWS` go as several statements, one transaction."""
        width = INBOX_WIDTH + 2
        rows = [(i, _INBOX[sql], *args, *(None,) * (INBOX_WIDTH - len(args)))
                for i, (sql, args) in enumerate(batch)]
        chunks = [rows[k:k + MAX_ROWS] for k in range(0, len(rows), MAX_ROWS)]
        with self._transaction() if len(chunks) > 1 else nullcontext():
            for chunk in chunks:
                size = _size_class(len(chunk))
                self._conn.execute(_inbox_insert(size), list(chain.from_iterable(
                    chain(chunk, [(None,) * width] * (size - len(chunk))))))

    def _flush_careful(self, runs: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Commit ``runs``, setting aside the rows SQLite refuses (a run in a savepoint; one that
        fails, row by row), counted in ``rows_rejected``."""
        rejected: list[str] = []
        with self._transaction():
            for sql, args in runs:
                if len(args) == 1 or not self._run_of(sql, args):
                    for one in args:  # one at a time: set aside what SQLite refuses
                        try:
                            self._conn.execute(sql, one)
                        except sqlite3.OperationalError:
                            raise  # the database, not the row: keep the batch for a retry
                        except _REFUSED as e:
                            rejected.append(f"{sql.split()[2]}: {type(e).__name__}: {e}")
            if rejected:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                   ("rows_rejected", str(self.rows_rejected + len(rejected))))
                if self.rows_rejected == 0:  # the first time: say what it was
                    self._conn.execute(
                        "INSERT INTO events (t, level, kind, channel_id, message, details) "
                        "VALUES (?,?,?,?,?,?)",
                        (0.0, "warning", "row-rejected", None, "a row could not be written "
                         f"and was set aside (later ones are counted in the meta key "
                         f"rows_rejected): {rejected[0][:300]}", "{}"))
        self.rows_rejected += len(rejected)

    def _run_of(self, sql: str, args: list[tuple[Any, ...]]) -> bool:
        """Execute a run of one statement inside a savepoint; False (and nothing written) if
        SQLite refused a row, for the caller to find it row by row. A failure of the database
        itself raises."""
        self._conn.execute("SAVEPOINT run_of")
        try:
            self._execute(sql, args)
        except sqlite3.OperationalError:
            raise
        except _REFUSED:
            self._conn.execute("ROLLBACK TO run_of")
            return False
        finally:
            self._conn.execute("RELEASE run_of")
        return True

    def _execute(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        """Execute a run of one statement. An ``INSERT ... VALUES (?,...)`` goes as one multi-row
        insert of up to :data:`MAX_ROWS` rows: Python's sqlite3 lets go of the GIL at each
        statement it steps, and takes it back after, so row by row, beside a training thread
        that holds the GIL (a Python-bound loop), each row waited out the interpreter's switch
        interval: 500 step rows kept the sampler thread in one commit for 0.8 s and cost the
        training thread a GIL hand-over each (issue 25). A run of any length is one statement:
        its rows are padded to one of a few sizes (:func:`_padded`), so SQLite's statement cache
        keeps the texts. For the same reason a flush whose rows are all taken uses no savepoints
        (two statements a run)."""
        ids = {row[-1] for row in args} if sql == _UPDATE_CHANNEL else set()
        if 1 < len(args) == len(ids):  # every channel's totals once (twice: one by one)
            self._conn.execute(_update_channels(len(args)), [
                *chain.from_iterable((row[-1], row[k]) for k in range(4) for row in args), *ids])
            return
        multi = _multi_row(sql)
        if multi is None or set(map(len, args)) != {multi[2]}:
            self._conn.executemany(sql, args)
            return
        head, one, width = multi
        most = max(1, min(MAX_ROWS,
                          self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // (width + 1)))
        k = 0
        while k < len(args):
            rows = args[k:k + most]
            size = _size_class(len(rows))
            if size == len(rows):
                self._conn.execute(head + ",".join([one] * size), list(chain.from_iterable(rows)))
            else:
                pad = (None,) * (width + 1)
                self._conn.execute(_padded(head, one, size), list(chain.from_iterable(
                    chain([(i, *row) for i, row in enumerate(rows)], [pad] * (size - len(rows))))))
            k += len(rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._conn.close()

    def checkpoint(self) -> None:
        """Move committed data from ``X.gtdb-wal`` into ``X.gtdb`` (``PASSIVE``: it never waits
        for a reader nor blocks a writer). Until a checkpoint, committed data lives only in the
        -wal file, so a copy of a running or killed run without its -wal files loses it; called
        every few seconds, that loss is bounded by the period. Call it from the thread that
        flushes. Errors are ignored: the data is safe in the WAL either way."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass


#: What SQLite (or the binding of a value) refuses for a row's content, not for the database.
_REFUSED = (sqlite3.Error, ValueError, TypeError, OverflowError)

_VALUES = re.compile(r"(INSERT\b.*\bVALUES\s*)(\(\?(?:\s*,\s*\?)*\))\s*", re.S)


#: Most rows in one statement: ~1,000 steps a second flushed every 0.5 s fit in one (a statement
#: of n rows compiles to some 16n instructions, kept in the statement cache).
MAX_ROWS = 1024


def _size_class(n: int) -> int:
    """The number of rows of the statement that carries ``n``: ``n`` itself up to 8, else ``n``
    rounded up to a quarter of its power of two (at most 4 sizes an octave, at most 25% padding)."""
    if n <= 8:
        return n
    q = 1 << (n.bit_length() - 3)
    return -(-n // q) * q


@functools.lru_cache(maxsize=64)
def _padded(head: str, one: str, size: int) -> str:
    """``head`` (``INSERT ... VALUES``) for ``size`` rows each led by a marker, the row's place
    in the run, or NULL for padding, which the insert leaves out; the rows go in their order (an
    ``INSERT OR REPLACE`` run keeps its last row of a key, as row by row)."""
    width = one.count("?")
    cols = ", ".join(f"column{i + 2}" for i in range(width))
    marked = "(?," + one[1:]
    return (f"{head.rstrip().removesuffix('VALUES').rstrip()} SELECT {cols} FROM "
            f"(VALUES {','.join([marked] * size)}) WHERE column1 IS NOT NULL ORDER BY column1")


@functools.lru_cache(maxsize=64)
def _multi_row(sql: str) -> tuple[str, str, int] | None:
    """``(head, "(?,...)", width)`` of an ``INSERT ... VALUES (?,...)``, else None."""
    m = _VALUES.fullmatch(sql)
    return None if m is None else (m.group(1), m.group(2), m.group(2).count("?"))


_UPDATE_CHANNEL = "UPDATE channels SET energy_j=?, until_t=?, gap_s=?, status=? WHERE id=?"


@functools.lru_cache(maxsize=16)
def _update_channels(n: int) -> str:
    """:data:`_UPDATE_CHANNEL` for ``n`` channels in one statement (two GIL hand-overs, not one
    a channel): each column a ``CASE id WHEN ? THEN ? ...``, then the ids. Any SQLite 3 runs it
    (no ``UPDATE ... FROM``)."""
    whens = " ".join(["WHEN ? THEN ?"] * n)
    cols = ", ".join(f"{c} = CASE id {whens} END" for c in ("energy_j", "until_t", "gap_s", "status"))
    return f"UPDATE channels SET {cols} WHERE id IN ({','.join('?' * n)})"


_ADD_STEP = ("INSERT INTO steps (idx, phase, t0, t1, duration_s, gpu_j, cpu_j, dram_j, gpu_seconds, "
             "flops, samples, tokens, timeline, extra, n) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
_ADD_SAMPLE = "INSERT OR REPLACE INTO samples VALUES (?,?,?,?)"

#: The statements of every steady flush, by the kind an ``inbox`` row gives them.
_INBOX = {_SET_META: 1, _UPDATE_CHANNEL: 2, _ADD_SAMPLE: 3, _ADD_STEP: 4}
INBOX_WIDTH = max(sql.count("?") for sql in _INBOX)


@functools.lru_cache(maxsize=64)
def _inbox_insert(size: int) -> str:
    """``size`` rows of the inbox: each its place in the batch, its kind (NULL: padding, which
    no trigger takes), then the statement's values, padded with NULL to the widest."""
    one = f"({','.join('?' * (INBOX_WIDTH + 2))})"
    return f"INSERT INTO inbox VALUES {','.join([one] * size)}"


def _inbox_schema() -> str:
    """The ``inbox`` view of this connection (TEMP: never in the store) and a trigger a kind that
    runs the kind's statement on the row's values. A statement is atomic, a failing row undoes
    the whole insert, and the conflict clauses of the statements (``OR REPLACE``) hold, as the
    insert into the view has none of its own."""
    cols = ", ".join(f"NULL AS c{k}" for k in range(1, INBOX_WIDTH + 1))
    out = ["PRAGMA temp_store=MEMORY;",
           f"CREATE TEMP VIEW IF NOT EXISTS inbox AS SELECT NULL AS ord, NULL AS kind, {cols} "
           "WHERE 0;"]
    for sql, kind in _INBOX.items():
        k = iter(range(1, INBOX_WIDTH + 1))
        body = re.sub(r"\?", lambda _: f"NEW.c{next(k)}", sql)
        out.append(f"CREATE TEMP TRIGGER IF NOT EXISTS inbox_{kind} INSTEAD OF INSERT ON inbox "
                   f"WHEN NEW.kind = {kind} BEGIN {body}; END;")
    return "\n".join(out)


def _type_name(o: Any) -> str:
    return f"<{type(o).__name__}>"


#: One encoder for every row (``json.dumps`` with options builds one a call: a third of a step
#: row's JSON time on the sampler thread); encoders keep no state between calls.
_ENCODE = json.JSONEncoder(allow_nan=False, default=_type_name).encode


def _json(value: Any) -> str:
    """JSON for a store column: standard JSON only (NaN and infinities become null), and any
    object that slipped through as its type name rather than an error that loses the row."""
    try:
        return _ENCODE(value)
    except ValueError:
        return json.dumps(_finite(value), default=_type_name)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def copy_store(reader: Any, dest: Path) -> None:
    """A consistent copy of the store ``reader`` reads (SQLite's online backup: committed data,
    its ``-wal`` included, into one self-contained file), for ``greentrack merge``. The source is
    only read. Raises ``sqlite3.Error`` or ``OSError``."""
    target = sqlite3.connect(dest)
    try:
        reader.backup_to(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal to carry with it
    finally:
        target.close()


#: The step columns a compact store sums per phase (see :func:`compact_store`).
_SUMMED = ("duration_s", "gpu_j", "cpu_j", "dram_j", "gpu_seconds", "flops", "samples", "tokens")


def compact_store(reader: Any, dest: Path) -> None:
    """What a run's totals need of the store ``reader`` reads, as a small store at ``dest``:
    its meta (with ``compact: true``), channels (with their totals) and events as they are, and
    one step row per phase with the valid rows' sums (``n`` their count); no samples. The
    integrations send these to rank 0 (:mod:`greentrack.training.gathering`): kilobytes, where the store
    holds a time series of megabytes. Raises ``sqlite3.Error`` or ``OSError``."""
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [tuple(r) for r in reader.rows("SELECT key, value FROM meta WHERE "
                                                        "key != 'rollup'")]  # no samples here
                         + [("compact", "true")])
        for table in ("channels", "events"):
            rows = reader.rows(f"SELECT * FROM {table}")
            if rows:
                names = list(rows[0].keys())
                conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                                 f"({', '.join('?' * len(names))})", [tuple(r) for r in rows])
        sums = ", ".join(f"SUM({c})" for c in _SUMMED)
        conn.executemany(
            f"INSERT INTO steps (idx, phase, t0, t1, {', '.join(_SUMMED)}, extra, n) "
            f"VALUES (0, ?, ?, ?, {', '.join('?' * len(_SUMMED))}, '{{}}', ?)",
            [tuple(r) for r in reader.rows(
                f"SELECT phase, MIN(t0), MAX(t1), {sums}, SUM({reader.step_n}) FROM steps "
                f"WHERE {VALID_STEP} GROUP BY phase")])
        conn.execute("COMMIT")
    finally:
        conn.close()


def append_event(path: Path, level: str, kind: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
    """Add an event to a closed store (at its end time): what rank 0 learns of the whole job
    after its own store is closed (:mod:`greentrack.training.gathering`). Raises ``sqlite3.Error``."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'duration_s'").fetchone()
        try:
            t = float(json.loads(row[0])) if row else 0.0
        except (TypeError, ValueError):
            t = 0.0
        conn.execute("INSERT INTO events (t, level, kind, channel_id, message, details) "
                     "VALUES (?,?,?,?,?,?)", (t, level, kind, None, message, _json(details or {})))
    finally:
        conn.close()
