"""Reads any store, while its run goes on or after; every value read is checked, damaged or
hostile rows are left out and reported (see :mod:`greentrack.store`)."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from greentrack import __version__
from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.common.labels import parse_labels
from greentrack.common.units import is_number
from greentrack.store.layout import SCHEMA_VERSION, SUFFIX, host_identity


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


#: The tables a store holds; a store whose table of one of these names is something else (a view,
#: a virtual table: a file greentrack never wrote) is refused, never queried.
TABLES = ("meta", "channels", "samples", "steps", "events", "metrics", "power_limits", "rollups")
#: Longest one query of a store may run (a 7-day, 8-GPU store's longest scan takes ~5 s): past it
#: the query is interrupted and its rows reported missing, never a command that does not end.
QUERY_LIMIT_S = 120.0
#: SQLite virtual-machine steps between checks of the time limit and of signals
PROGRESS_EVERY = 20_000


def _past(deadline: float) -> int:
    return 1 if time.monotonic() > deadline else 0


class StoreReader:
    """Reads one store, while its run goes on or after. Damaged rows are skipped and counted.

    Every query is bounded (:data:`QUERY_LIMIT_S`) and interruptible: a Ctrl-C or SIGTERM that
    arrives during one (whose handler raises, as the command line's do) ends it and is raised
    again when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: list[str] = []
        self._private: Path | None = None  # a private copy read instead (see _open_reader)
        self._deadline = float("inf")
        self._raised: BaseException | None = None  # a signal handler's, raised during a query
        wal = path.with_name(path.name + "-wal")
        had_wal = wal.exists() and wal.stat().st_size > 0  # before SQLite creates an empty one
        try:
            self._conn, self._private = _open_reader(path)
            self._conn.set_progress_handler(self._progress, PROGRESS_EVERY)
            self._deadline = time.monotonic() + QUERY_LIMIT_S
            self._check_tables()
            raw = {k: _loads(v, self.damaged, f"meta {k}")
                   for k, v in self._conn.execute("SELECT key, value FROM meta")}
            self.meta = _valid_meta(raw, self.damaged)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(steps)")}
        except (sqlite3.Error, ValueError, OSError, RunStoreError) as e:
            self.close()
            self._raise_pending(e)
            raise RunStoreError(f"{path}: not a readable greentrack store ({_why(path, e)})") from None
        version = raw.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            self.close()
            raise RunStoreError(f"{path}: written by a newer greentrack (schema_version {version}; "
                                f"greentrack {__version__} reads {SCHEMA_VERSION}): upgrade "
                                "greentrack to read it")

        self._deadline = float("inf")
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

    def _check_tables(self) -> None:
        kinds = {r[0]: (r[1], str(r[2] or "")) for r in self._conn.execute(
            "SELECT name, type, sql FROM sqlite_master WHERE name IN "
            f"({','.join('?' * len(TABLES))})", TABLES)}
        for name, (kind, sql) in kinds.items():
            if kind != "table" or sql.lstrip().upper().startswith("CREATE VIRTUAL"):
                raise RunStoreError(f"its {name} is a {'virtual table' if kind == 'table' else kind}"
                                    ", not a table greentrack writes")

    def _progress(self) -> int:
        """SQLite's progress handler: abort a query past its deadline. Python runs a pending
        signal's handler when this is called; one that raises (Ctrl-C, the command line's
        SIGTERM handler) aborts the query too, and sqlite3 swallows its exception: an abort
        before the deadline is therefore a signal (:meth:`_raise_pending`)."""
        try:
            return _past(self._deadline)
        except BaseException as e:  # noqa: BLE001 - a handler raising inside the check itself
            self._raised = e
            return 1

    def _raise_pending(self, error: BaseException | None = None) -> None:
        """Raise again what a signal handler raised during the query that ``error`` ended."""
        raised, self._raised = self._raised, None
        if raised is not None:
            raise raised
        if error is not None and "interrupted" in str(error) and not _past(self._deadline):
            raise KeyboardInterrupt from None

    def rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self._conn.row_factory = sqlite3.Row
        self._deadline = time.monotonic() + QUERY_LIMIT_S
        try:
            return list(self._conn.execute(sql, tuple(args)))
        except (sqlite3.DatabaseError, ValueError) as e:
            self._raise_pending(e)  # a Ctrl-C or SIGTERM during the query ends the command
            why = (f"the query ran past {QUERY_LIMIT_S:g} s and was stopped"
                   if "interrupted" in str(e) else str(e))
            self.damaged.append(f"{sql.split(' FROM ')[-1].split()[0]}: {why}")
            return []
        finally:
            self._deadline = float("inf")

    def scan(self, sql: str, args: Iterable[Any],
             consume: Callable[[Iterator[tuple[Any, ...]]], None]) -> bool:
        """Hand the rows of ``sql`` (plain tuples, never a dict per row) to ``consume`` as they
        are read, bounded and interruptible as :meth:`rows`. False when the query failed (part
        of the rows may have been consumed): the failure is reported in ``damaged``."""
        self._conn.row_factory = None
        self._deadline = time.monotonic() + QUERY_LIMIT_S
        try:
            consume(self._conn.execute(sql, tuple(args)))
        except (sqlite3.DatabaseError, ValueError) as e:
            self._raise_pending(e)
            self.damaged.append(f"{sql.split(' FROM ')[-1].split()[0]}: {e}")
            return False
        finally:
            self._deadline = float("inf")
        return True

    def grouped_floats(self, sql: str, args: Iterable[Any], groups: int) -> list[array[float]]:
        """The rows ``(group, value)`` of ``sql`` as one array of values per group ``0 ..
        groups - 1`` (rows of another group or a non-numeric value are skipped): a column of a
        long table (a week's step energies) at 8 bytes a row, never a Python object per row.
        Bounded and interruptible as :meth:`rows`; a failure is reported in ``damaged``."""
        out = [array("d") for _ in range(groups)]

        def take(rows: Iterator[tuple[Any, ...]]) -> None:
            for g, v in rows:
                if type(g) is int and 0 <= g < groups and type(v) is float:
                    out[g].append(v)

        return out if self.scan(sql, args, take) else [array("d") for _ in range(groups)]

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

    def metrics(self) -> list[dict[str, Any]]:
        """``Tracker.record`` rows (``t``, ``step``, ``name``, ``value``, ``energy_j``) by time;
        none for a store written before the table existed. Rows out of range are left out."""
        if not self.rows("SELECT name FROM sqlite_master WHERE type='table' AND name='metrics'"):
            return []
        return [dict(r) for r in self.rows(
            f"SELECT t, step, name, value, energy_j FROM metrics WHERE {VALID_METRIC} "
            "ORDER BY t, rowid")]

    def power_limits(self) -> list[dict[str, Any]]:
        """The measured power-limit curve (table ``power_limits``, schema 3), by limit; none for
        an older store. Rows out of range are left out and reported in ``damaged``."""
        if not self.rows("SELECT name FROM sqlite_master WHERE type='table' AND name='power_limits'"):
            return []
        out = []
        for r in self.rows("SELECT * FROM power_limits ORDER BY limit_w, rowid"):
            d = dict(r)
            devices = _loads(d.get("devices"), self.damaged, "power_limits devices")
            ok = (isinstance(devices, list) and all(isinstance(x, str) for x in devices)
                  and _is_num(d.get("limit_w"), 1.0, 1e5) and d.get("reference") in (0, 1)
                  and _is_num(d.get("steps"), 1, 1e9) and _is_num(d.get("warmup_steps"), 0, 1e9)
                  and all(_is_num(d.get(c), -3600.0, MAX_T_S) for c in ("t0", "t1"))
                  and all(_is_num(d.get(c), 0.0, MAX_ENERGY_J) for c in
                          ("j_per_step", "j_per_step_sd", "s_per_step", "s_per_step_sd"))
                  and all(d.get(c) is None or _is_num(d.get(c), 0.0, MAX_ENERGY_J)
                          for c in ("gpu_j_per_step", "gpu_j_per_step_sd")))
            if not ok:
                self.damaged.append(f"power_limits row at {d.get('limit_w')!r} W: unreadable "
                                    "values, left out")
                continue
            d["devices"], d["reference"] = devices, bool(d["reference"])
            out.append(d)
        return out

    def energy_until(self, t: float) -> float:
        """Joules of every channel of this store from its start until ``t`` (store seconds), from
        the stored buckets (the one that holds ``t`` pro rata)."""
        rows = self.rows("SELECT SUM(CASE WHEN t + dt <= ? THEN energy_j WHEN t < ? AND dt > 0 "
                         "THEN energy_j * (? - t) / dt ELSE 0 END) AS e FROM samples WHERE "
                         f"{VALID_SAMPLE}", (t, t, t))
        return float(rows[0]["e"] or 0.0) if rows else 0.0

    def invalid_rows(self, table: str) -> int:
        """Rows of ``steps`` or ``samples`` whose values no greentrack writes (negative or
        non-finite energies, times out of range); readers leave them out (``WHERE`` with
        :data:`VALID_STEP` / :data:`VALID_SAMPLE`) and this reports them in ``damaged``."""
        cond = {"steps": VALID_STEP, "samples": VALID_SAMPLE}[table]
        rows = self.rows(f"SELECT COUNT(*) AS n FROM {table} WHERE NOT {cond}")
        return self.note_invalid(table, int(rows[0]["n"] or 0) if rows else 0)

    def note_invalid(self, table: str, n: int) -> int:
        """Report ``n`` unusable rows of ``table`` in ``damaged`` (none: nothing); returns n."""
        if n:
            self.damaged.append(f"{table}: {n} row(s) with negative, non-finite or out-of-range "
                                "values, left out")
        return n

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the store as read (committed data, ``-wal`` included) into ``target``."""
        self._conn.backup(target)

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
    """SQL: ``col`` is a number within [lo, hi]. NaN reads as NULL (and NULL is never BETWEEN);
    text and blobs sort after every number in SQLite, so a numeric BETWEEN rejects them too, with no
    ``typeof()`` call per row (which made the report's scan of a 7-day store 3x slower)."""
    cond = f"({col} BETWEEN {lo!r} AND {hi!r})"
    return f"({col} IS NULL OR {cond})" if null_ok else cond


def valid_sample(row: str = "") -> str:
    """SQL: the sample ``row`` (``""``: the row queried; ``"NEW."`` in a trigger) is usable."""
    return "(" + " AND ".join([sql_number(f"{row}t", -3600.0, MAX_T_S),
                               sql_number(f"{row}dt", 0.0, MAX_T_S),
                               sql_number(f"{row}energy_j", 0.0, MAX_ENERGY_J)]) + ")"


#: SQL conditions of a usable row: what a damaged or hostile store holds outside them is left out
#: of every figure (and counted by :meth:`StoreReader.invalid_rows`).
VALID_SAMPLE = valid_sample()
VALID_STEP = "(" + " AND ".join(
    [sql_number("t0", -3600.0, MAX_T_S), sql_number("t1", -3600.0, MAX_T_S),
     sql_number("duration_s", 0.0, MAX_T_S)]
    + [sql_number(c, 0.0, MAX_ENERGY_J, null_ok=True) for c in ("gpu_j", "cpu_j", "dram_j")]
    + [sql_number(c, 0.0, 1e200, null_ok=True) for c in ("gpu_seconds", "flops", "samples", "tokens")]) + ")"

VALID_METRIC = "(" + " AND ".join(
    [sql_number("t", -3600.0, MAX_T_S), sql_number("value", -1e300, 1e300),
     sql_number("energy_j", 0.0, MAX_ENERGY_J), sql_number("step", 0, 1e15, null_ok=True),
     "typeof(name) = 'text'"]) + ")"

#: Types of the meta keys readers rely on; a damaged value is dropped (and reported), not used.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "host": (str,), "boot_id": (str,), "job": (dict,), "status": (str,), "mode": (str,), "segment": (str,),
    "started_unix": (int, float), "ended_unix": (int, float), "heartbeat_unix": (int, float),
    "duration_s": (int, float), "pid_create_time": (int, float), "pid": (int,), "rank": (int,),
    "local_rank": (int,), "world_size": (int,), "settings": (dict,), "versions": (dict,),
    "counter_interval_s": (int, float), "counter_interval_max_s": (int, float),
    "slow_cadence_changes": (int,), "rows_rejected": (int,), "steps_coalesced": (int,),
    "listener_errors": (int,),
    "bad_step_fields": (dict,), "labels": (dict,), "rollup": (dict,),
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
        if key == "labels":
            try:
                value = parse_labels(value)
            except ConfigError:
                damaged.append("meta labels: unexpected value, ignored")
                continue
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


#: A running store whose heartbeat is older than this, and whose process is gone, is incomplete.
STALE_AFTER_S = 10.0


def store_status(meta: dict[str, Any], now: float | None = None) -> str:
    """``running``, ``completed``, ``failed``, ``stopped``, or ``incomplete`` for a store whose
    process died without closing it (SIGKILL, OOM, power loss)."""
    status = str(meta.get("status", "incomplete"))
    if status != "running":
        return status
    now = time.time() if now is None else now
    alive = _process_alive(meta)
    if alive is False:
        return "incomplete"
    heartbeat = meta.get("heartbeat_unix") or meta.get("started_unix") or 0.0
    if alive is None and now - float(heartbeat) > STALE_AFTER_S:
        return "incomplete"
    return "running"


def _process_alive(meta: dict[str, Any]) -> bool | None:
    """True/False when the writer is on this host and we can tell; None otherwise."""
    if meta.get("host") != host_identity()[0]:
        return None
    try:
        import psutil
        proc = psutil.Process(int(meta["pid"]))
        created = meta.get("pid_create_time")
        if created is not None and abs(proc.create_time() - float(created)) > 1.0:
            return False  # the pid was reused by another process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (KeyError, TypeError, ValueError):
        return None
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends
        return False
