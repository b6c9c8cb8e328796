"""The run store: one SQLite database (WAL) per process in the run directory.

Why SQLite in WAL mode: it is in the standard library, a reader never blocks the writer (the run is
readable while it goes), a committed transaction survives SIGKILL of the writer, and one file per
process means ranks on many hosts share a run directory without any locking.

Layout of a run directory::

    RUN_DIR/run.json                          run id, created once by whichever process is first
    RUN_DIR/<host>-r<rank>-<segment>.gtdb     one store per process and segment (resume = new segment)

Tables: ``meta`` (key -> JSON), ``channels`` (how each device is measured, its running total),
``samples`` (energy per channel per time bucket), ``steps``, ``events`` (gaps, errors, estimates).
Times are seconds on the process's monotonic clock since the segment start (``t``), plus the wall
clock of the segment start in ``meta`` so wall times are derived, never read mid-run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from greentrack._files import make_dirs
from greentrack.errors import ConfigError, RunStoreError
from greentrack.units import is_number

#: 2: ``steps.n``, the steps a row stands for (more than one when fast steps were coalesced).
SCHEMA_VERSION = 2
SUFFIX = ".gtdb"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL, name TEXT,
    method TEXT NOT NULL, measured INTEGER NOT NULL, source TEXT, uncertainty TEXT,
    host_scope INTEGER NOT NULL, details TEXT,
    energy_j REAL NOT NULL DEFAULT 0, until_t REAL, gap_s REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'ok');
CREATE TABLE IF NOT EXISTS samples (
    channel_id INTEGER NOT NULL, t REAL NOT NULL, dt REAL NOT NULL, energy_j REAL NOT NULL,
    PRIMARY KEY (channel_id, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY, idx INTEGER NOT NULL, phase TEXT NOT NULL, t0 REAL NOT NULL,
    t1 REAL NOT NULL, duration_s REAL NOT NULL, gpu_j REAL, cpu_j REAL, dram_j REAL,
    gpu_seconds REAL, flops REAL, samples REAL, tokens REAL, timeline TEXT, extra TEXT,
    n INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL,
    channel_id INTEGER, message TEXT NOT NULL, details TEXT);
"""


def safe_host() -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:40]


def prepare_run_dir(run_dir: Path, run_id: str | None = None) -> str:
    """Create the run directory if needed and return the run id, shared by all its processes.

    The first process creates ``run.json`` atomically (``O_EXCL``); the others read it. No locks,
    so it works across hosts on a shared filesystem.
    """
    try:
        make_dirs(run_dir)  # it and the parents it needs: never group- or world-writable
    except OSError as e:
        _raise_if_no_space(e, run_dir)
        raise ConfigError("run_dir", str(run_dir), f"cannot create it ({e.strerror or e})") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError("run_dir", str(run_dir), "is not writable by this user")
    path = run_dir / "run.json"
    record = {"run_id": run_id or uuid.uuid4().hex[:12], "created_unix": time.time(),
              "format": "greentrack-run", "schema_version": SCHEMA_VERSION}
    try:
        # 0o644 before the umask, like SQLite's own files: never world-writable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            try:
                existing = json.loads(path.read_text())
                return str(existing["run_id"])
            except (ValueError, KeyError, OSError):
                time.sleep(0.02)
        raise ConfigError("run_dir", str(run_dir), "has a damaged run.json; use a new directory") from None
    except OSError as e:
        _raise_if_no_space(e, run_dir)
        raise ConfigError("run_dir", str(run_dir), f"cannot write run.json ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
    except OSError as e:  # a full disk: no half-written run.json left to damage the next run
        path.unlink(missing_ok=True)
        _raise_if_no_space(e, run_dir)
        raise ConfigError("run_dir", str(run_dir), f"cannot write run.json ({e.strerror or e})") from None
    return str(record["run_id"])


def _raise_if_no_space(e: OSError, run_dir: Path) -> None:
    """A full disk or quota is the machine's state, not a bad setting: RunStoreError (tracking is
    then disabled and training goes on), where a bad path stays a ConfigError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise RunStoreError(f"run directory {run_dir}: no space left ({e.strerror or e})") from None


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                               check_same_thread=False)
        # a damaged page can hold invalid UTF-8: read it as replacement characters, not a crash
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
    else:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # commits survive a process crash
    return conn


def _reader_uri(path: Path, **params: str) -> str:
    """A SQLite URI for ``path``: quoted, so ``?``, ``#`` or ``%`` in a directory name are just
    characters of the name."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{query}"


def _reader_connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
    try:
        # a damaged page can hold invalid UTF-8: read it as replacement characters, not a crash
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL now
    except BaseException:
        conn.close()
        raise
    return conn


def _open_reader(path: Path) -> tuple[sqlite3.Connection, Path | None]:
    """A read-only connection to a store, and the private copy it reads when there is one.

    A reader of a WAL database needs its ``-shm`` index beside it, which SQLite creates when it
    is missing. Where it cannot (a read-only directory or copy of a finished or killed run), the
    store is read as it is: without a ``-wal`` file, as an immutable file; with one (committed
    data a killed writer never checkpointed), from a private copy of both, so nothing is lost.
    """
    if not path.is_file():
        raise RunStoreError("a directory" if path.is_dir() else
                            "a link to nothing" if path.is_symlink() else "not a regular file")
    try:
        return _reader_connect(_reader_uri(path, mode="ro")), None
    except sqlite3.OperationalError as e:
        if "unable to open" not in str(e) and "readonly" not in str(e):
            raise
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return _reader_connect(_reader_uri(path, mode="ro", immutable="1")), None
    private = Path(tempfile.mkdtemp(prefix="greentrack-read-"))
    try:
        shutil.copyfile(path, private / path.name)
        shutil.copyfile(wal, private / wal.name)
        return _reader_connect(_reader_uri(private / path.name, mode="ro")), private
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise


def _why(path: Path, e: BaseException) -> str:
    """Why a store cannot be read, with what to do where we can tell."""
    text = str(e)
    try:
        if "no such table" in text:
            if path.stat().st_size == 0:
                return "an empty file"
            wal = path.with_name(path.name + "-wal")
            if not wal.exists() or wal.stat().st_size == 0:
                return (f"{text}; its data may still be in {path.name}-wal: copy a run with its "
                        "-wal files")
    except OSError:
        pass
    return text


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
        try:
            self._conn = _connect(self.path, readonly=False)
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise RunStoreError(f"store {self.path.name}: {e}") from None
            raise ConfigError("run_dir", str(run_dir), f"cannot create the store ({e})") from None
        self.set_meta({**meta, "segment": self.segment, "schema_version": SCHEMA_VERSION})
        self.flush()
        self.checkpoint()  # the schema and the run's identity in the .gtdb itself, not only the -wal

    # -- buffered writes (cheap; committed by flush) -----------------------------------------
    def _queue(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append((sql, args))

    def set_meta(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self._queue("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, _json(v)))

    def add_channel(self, channel_id: int, info: dict[str, Any]) -> None:
        self._queue(
            "INSERT INTO channels (id, kind, device, name, method, measured, source, uncertainty, "
            "host_scope, details) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (channel_id, info["kind"], info["device"], info["name"], info["method"],
             int(info["measured"]), info["source"], info["uncertainty"], int(info["host_scope"]),
             json.dumps(info["details"])))

    def update_channel(self, channel_id: int, energy_j: float, until_t: float | None,
                       gap_s: float, status: str) -> None:
        self._queue("UPDATE channels SET energy_j=?, until_t=?, gap_s=?, status=? WHERE id=?",
                    (energy_j, until_t, gap_s, status, channel_id))

    def add_sample(self, channel_id: int, t: float, dt: float, energy_j: float) -> None:
        self._queue("INSERT OR REPLACE INTO samples VALUES (?,?,?,?)", (channel_id, t, dt, energy_j))

    def add_step(self, row: dict[str, Any]) -> None:
        self._queue(
            "INSERT INTO steps (idx, phase, t0, t1, duration_s, gpu_j, cpu_j, dram_j, gpu_seconds, "
            "flops, samples, tokens, timeline, extra, n) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row["idx"], row["phase"], row["t0"], row["t1"], row["duration_s"], row.get("gpu_j"),
             row.get("cpu_j"), row.get("dram_j"), row.get("gpu_seconds"), row.get("flops"),
             row.get("samples"), row.get("tokens"), row.get("timeline", "host"),
             _json(row.get("extra") or {}), row.get("n", 1)))

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
        rejected: list[str] = []
        try:
            with self._transaction():
                for sql, args in batch:
                    try:
                        self._conn.execute(sql, args)
                    except sqlite3.OperationalError:
                        raise  # the database, not the row: keep the batch for a retry
                    except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
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
        except sqlite3.Error as e:
            with self._lock:
                self._pending[:0] = batch
                if len(self._pending) > 200_000:  # bounded: drop oldest samples, keep the rest
                    self._pending = [p for p in self._pending if "samples" not in p[0]][-200_000:]
            raise RunStoreError(f"store {self.path.name}: {e}") from e

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


class StoreReader:
    """Reads one store, while its run goes on or after. Damaged rows are skipped and counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: list[str] = []
        self._private: Path | None = None  # a private copy read instead (see _open_reader)
        wal = path.with_name(path.name + "-wal")
        had_wal = wal.exists() and wal.stat().st_size > 0  # before SQLite creates an empty one
        try:
            self._conn, self._private = _open_reader(path)
            raw = {k: _loads(v, self.damaged, f"meta {k}")
                   for k, v in self._conn.execute("SELECT key, value FROM meta")}
            self.meta = _valid_meta(raw, self.damaged)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(steps)")}
        except (sqlite3.Error, ValueError, OSError, RunStoreError) as e:
            self.close()
            raise RunStoreError(f"{path}: not a readable greentrack store ({_why(path, e)})") from None
        version = raw.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            self.close()
            from greentrack import __version__
            raise RunStoreError(f"{path}: written by a newer greentrack (schema_version {version}; "
                                f"greentrack {__version__} reads {SCHEMA_VERSION}): upgrade "
                                "greentrack to read it")

        #: SQL for the steps a row stands for: ``n`` (coalesced rows, schema 2), else one per row.
        self.step_n = "n" if "n" in columns else "1"
        self._check_wal(had_wal)

    def _check_wal(self, had_wal: bool) -> None:
        """A store never closed (its process was killed, or it still runs) keeps its latest data
        in ``-wal`` until a checkpoint (every 10 s): a copy without that file misses it."""
        if self.meta.get("status") != "running" or had_wal:
            return
        if "heartbeat_unix" not in self.meta:  # not one flush of readings reached the .gtdb
            self.close()
            raise RunStoreError(f"{self.path}: holds only its header: its readings are in "
                                f"{self.path.name}-wal, which is missing: copy a run with its "
                                "-wal files")
        self.damaged.append(f"no {self.path.name}-wal beside a store that was not closed: if "
                            "this is a copy, readings after its last checkpoint (at most 10 s) "
                            "are missing")

    def rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self._conn.row_factory = sqlite3.Row
        try:
            return list(self._conn.execute(sql, tuple(args)))
        except (sqlite3.DatabaseError, ValueError) as e:
            self.damaged.append(f"{sql.split(' FROM ')[-1].split()[0]}: {e}")
            return []

    def channels(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rows("SELECT * FROM channels ORDER BY id"):
            d = dict(r)
            if d.get("kind") not in ("gpu", "cpu", "dram") \
                    or not _is_num(d.get("energy_j"), 0.0, MAX_ENERGY_J) \
                    or not (d.get("until_t") is None or _is_num(d.get("until_t"), -MAX_T_S, MAX_T_S)) \
                    or not _is_num(d.get("gap_s"), 0.0, MAX_T_S):
                self.damaged.append(f"channel row {d.get('id')!r}: unreadable values, skipped")
                continue
            d["measured"] = bool(d["measured"])
            d["host_scope"] = bool(d["host_scope"])
            d["details"] = _loads(d["details"], self.damaged, f"channel {d['id']}") or {}
            out.append(d)
        return out

    def steps(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows("SELECT * FROM steps ORDER BY id")]

    def events(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows("SELECT * FROM events ORDER BY id")]

    def samples(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows("SELECT * FROM samples ORDER BY t, channel_id")]

    def invalid_rows(self, table: str) -> int:
        """Rows of ``steps`` or ``samples`` whose values no greentrack writes (negative or
        non-finite energies, times out of range); readers leave them out (``WHERE`` with
        :data:`VALID_STEP` / :data:`VALID_SAMPLE`) and this reports them in ``damaged``."""
        cond = {"steps": VALID_STEP, "samples": VALID_SAMPLE}[table]
        rows = self.rows(f"SELECT COUNT(*) AS n FROM {table} WHERE NOT {cond}")
        n = int(rows[0]["n"] or 0) if rows else 0
        if n:
            self.damaged.append(f"{table}: {n} row(s) with negative, non-finite or out-of-range "
                                "values, left out")
        return n

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None


#: The most energy one row or one channel may hold (1 EJ: far beyond any training run); more is
#: damage, like a negative or non-finite value.
MAX_ENERGY_J = 1e18
#: The longest span of a store's monotonic times (about 31 years), and of a step or a gap.
MAX_T_S = 1e9


def sql_number(col: str, lo: float, hi: float, null_ok: bool = False) -> str:
    """SQL: ``col`` is a number within [lo, hi] (NaN reads as NULL in SQLite; text is rejected)."""
    cond = f"(typeof({col}) IN ('integer', 'real') AND {col} BETWEEN {lo!r} AND {hi!r})"
    return f"({col} IS NULL OR {cond})" if null_ok else cond


#: SQL conditions of a usable row: what a damaged or hostile store holds outside them is left out
#: of every figure (and counted by :meth:`StoreReader.invalid_rows`).
VALID_SAMPLE = "(" + " AND ".join([sql_number("t", -3600.0, MAX_T_S), sql_number("dt", 0.0, MAX_T_S),
                             sql_number("energy_j", 0.0, MAX_ENERGY_J)]) + ")"
VALID_STEP = "(" + " AND ".join(
    [sql_number("t0", -3600.0, MAX_T_S), sql_number("t1", -3600.0, MAX_T_S),
     sql_number("duration_s", 0.0, MAX_T_S)]
    + [sql_number(c, 0.0, MAX_ENERGY_J, null_ok=True) for c in ("gpu_j", "cpu_j", "dram_j")]
    + [sql_number(c, 0.0, 1e200, null_ok=True) for c in ("gpu_seconds", "flops", "samples", "tokens")]) + ")"

#: Types of the meta keys readers rely on; a damaged value is dropped (and reported), not used.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "host": (str,), "status": (str,), "mode": (str,), "segment": (str,),
    "started_unix": (int, float), "ended_unix": (int, float), "heartbeat_unix": (int, float),
    "duration_s": (int, float), "pid_create_time": (int, float), "pid": (int,), "rank": (int,),
    "local_rank": (int,), "world_size": (int,), "settings": (dict,), "versions": (dict,),
    "counter_interval_s": (int, float), "counter_interval_max_s": (int, float),
    "slow_cadence_changes": (int,), "rows_rejected": (int,), "steps_coalesced": (int,),
    "bad_step_fields": (dict,),
}


#: Ranges of numeric meta keys: a damaged value outside is dropped (and reported), not used.
_META_RANGES: dict[str, tuple[float, float]] = {
    "started_unix": (0.0, 1e11), "ended_unix": (0.0, 1e11), "heartbeat_unix": (0.0, 1e11),
    "pid_create_time": (0.0, 1e11), "duration_s": (0.0, MAX_T_S),
    "counter_interval_s": (0.0, 86400.0), "counter_interval_max_s": (0.0, 86400.0),
}


_is_num = is_number


def _valid_meta(raw: dict[str, Any], damaged: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        want = _META_TYPES.get(key)
        if value is None and want is not None:
            continue  # already reported by _loads, or never set
        if want is not None and (not isinstance(value, want) or isinstance(value, bool)
                                 or ((int in want or float in want)
                                     and not _is_num(value, *_META_RANGES.get(key, (-math.inf, math.inf))))):
            damaged.append(f"meta {key}: unexpected value, ignored")
            continue
        if key == "settings":
            value = _valid_settings(value, damaged)
        out[key] = value
    return out


#: Settings readers compute with (bin widths, cadences): each a number > 0 and <= a day.
_NUMERIC_SETTINGS = ("interval_s", "counter_interval_s", "flush_interval_s", "resolution_s")


def _valid_settings(settings: dict[str, Any], damaged: list[str]) -> dict[str, Any]:
    out = dict(settings)
    for name in _NUMERIC_SETTINGS:
        if name in out and out[name] is not None and not (_is_num(out[name], 0.0, 86400.0)
                                                          and out[name] > 0):
            damaged.append(f"meta settings {name}: unexpected value, ignored")
            del out[name]
    return out


def _loads(text: Any, damaged: list[str], where: str) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except (TypeError, ValueError):
        damaged.append(f"{where}: not JSON")
        return None


def _json(value: Any) -> str:
    """JSON for a store column: standard JSON only (NaN and infinities become null), and any
    object that slipped through as its type name rather than an error that loses the row."""
    try:
        return json.dumps(value, allow_nan=False, default=lambda o: f"<{type(o).__name__}>")
    except ValueError:
        return json.dumps(_finite(value), default=lambda o: f"<{type(o).__name__}>")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def store_paths(run_dir: Path) -> list[Path]:
    """The store files of a run directory, or a ConfigError naming what is wrong."""
    try:
        if not run_dir.exists():
            raise ConfigError("RUN_DIR", str(run_dir), "does not exist")
        if not run_dir.is_dir():
            raise ConfigError("RUN_DIR", str(run_dir), "is not a directory")
        paths = sorted(run_dir.glob(f"*{SUFFIX}"))
    except OSError as e:  # a name too long, a loop of links, no permission
        raise ConfigError("RUN_DIR", str(run_dir), f"cannot be read ({e.strerror or e})") from None
    if not paths:
        raise ConfigError("RUN_DIR", str(run_dir), "holds no greentrack run (no *.gtdb store)")
    return paths
