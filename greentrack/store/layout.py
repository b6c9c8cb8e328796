"""The run directory and the store's schema (see :mod:`greentrack.store`)."""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from greentrack.common.errors import ConfigError, RunStoreError
from greentrack.common.files import make_dirs, not_a_directory

#: 2: ``steps.n``, the steps a row stands for (more than one when fast steps were coalesced).
#: 3: ``power_limits``, the measured power-limit curve (greentrack.process.calibration). A store of
#: version 2 or older has no such table and is read as having no curve.
SCHEMA_VERSION = 3
SUFFIX = ".gtdb"
#: The directory of a run where trackers that joined ``greentrack run`` hold their leases and
#: publish their live totals.
JOIN_DIR = ".joins"

class StepRow(NamedTuple):
    """A resolved step, as stored and as step listeners receive it (on the sampler thread).

    Times are seconds since the segment's start; energies in joules by kind (None: no channel of
    that kind); ``n`` is the number of steps the row stands for (more than one only when fast
    steps were coalesced)."""

    idx: int
    phase: str
    t0: float
    t1: float
    duration_s: float
    gpu_j: float | None
    cpu_j: float | None
    dram_j: float | None
    gpu_seconds: float
    flops: float | None
    samples: float | None
    tokens: float | None
    timeline: str
    extra: dict[str, Any]
    n: int = 1

    @property
    def energy_j(self) -> float:
        """The step's joules, all kinds: the one place this sum is made (SQL: ``run.STEP_J``)."""
        return (self.gpu_j or 0.0) + (self.cpu_j or 0.0) + (self.dram_j or 0.0)


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
CREATE TABLE IF NOT EXISTS metrics (
    t REAL NOT NULL, step INTEGER, name TEXT NOT NULL, value REAL NOT NULL, energy_j REAL NOT NULL);
CREATE TABLE IF NOT EXISTS power_limits (
    limit_w REAL NOT NULL, reference INTEGER NOT NULL, devices TEXT NOT NULL,
    steps INTEGER NOT NULL, warmup_steps INTEGER NOT NULL, t0 REAL NOT NULL, t1 REAL NOT NULL,
    j_per_step REAL NOT NULL, j_per_step_sd REAL NOT NULL, gpu_j_per_step REAL,
    gpu_j_per_step_sd REAL, s_per_step REAL NOT NULL, s_per_step_sd REAL NOT NULL);
"""
#: ``power_limits``: one row per power limit a calibration measured (greentrack.process.calibration):
#: ``limit_w`` set on every GPU of ``devices`` (JSON list), ``reference`` 1 for the limit in force
#: before the calibration (measured last, after it was restored), ``steps`` measured after
#: ``warmup_steps`` discarded, between ``t0`` and ``t1`` (store seconds), and per step the mean and
#: standard deviation of the joules (all kinds; GPU apart) and of the seconds.
#: ``metrics`` (``Tracker.record``: losses and named metrics with the cumulative energy of this
#: store's channels at that moment) is a new table, not a change: older readers ignore it and
#: :meth:`StoreReader.metrics` reads a store without it as having none, so SCHEMA_VERSION stays.
#: ``rollups`` (greentrack.store.writer.rollup_schema) likewise: older readers ignore it, and a
#: store without it (or whose meta ``rollup`` is gone) is read from its samples.


#: Overrides of this machine's identity (:func:`host_identity`): for tests that run several
#: simulated nodes on one machine, and containers whose hostname is not the node's.
HOST_ENV, BOOT_ENV = "GREENTRACK_HOSTNAME", "GREENTRACK_BOOT_ID"



def new_run_id() -> str:
    """A fresh run id: 12 hex digits that never read as a number. About 1 in 120 random ones would
    (``81028e107769`` is 8.1e107773 to pandas, to a spreadsheet and to codecarbon's dashboard, which
    read ``emissions.csv`` with type inference); those are drawn again."""
    while True:
        run_id = uuid.uuid4().hex[:12]
        try:
            float(run_id)
        except ValueError:
            return run_id

def host_identity() -> tuple[str, str]:
    """``(host, boot id)`` of this machine, as every store records them (meta ``host`` and
    ``boot_id``): host CPU/DRAM channels are one device per host, and a store is known by host,
    boot id, rank and segment wherever a copy of it turns up (``greentrack merge``, the
    integrations' gather). The host is ``os.uname().nodename`` (what ``socket.gethostname()``
    returns on POSIX, without loading ``socket`` with the tracker); the boot id Linux's
    ``/proc/sys/kernel/random/boot_id`` ("" where there is none). ``GREENTRACK_HOSTNAME`` and
    ``GREENTRACK_BOOT_ID`` override them (a character other than a letter, digit, ``.``, ``_`` or
    ``-`` becomes ``_``; at most 64)."""
    override = os.environ.get(HOST_ENV)
    host = _safe(override, 64) if override else os.uname().nodename
    boot = os.environ.get(BOOT_ENV)
    if boot is None:
        if not _BOOT_ID:  # read once per process: a start asks four times
            try:
                _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
            except OSError:
                _BOOT_ID.append("")
        boot = _BOOT_ID[0]
    return host or "host", _safe(boot, 64)


_BOOT_ID: list[str] = []


def _safe(text: str, limit: int) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:limit]


def safe_host() -> str:
    """This host's name as a store file's prefix (no domain, no odd character)."""
    return _safe(host_identity()[0].split(".")[0], 40).replace(".", "_") or "host"


def prepare_run_dir(run_dir: Path, run_id: str | None = None) -> str:
    """Create the run directory if needed and return the run id, shared by all its processes.

    The first process creates ``run.json`` atomically (``O_EXCL``); the others read it. No locks,
    so it works across hosts on a shared filesystem.
    """
    blocked = not_a_directory(run_dir)
    if blocked is not None:  # a file: say so (a file is no more "not writable" than any other)
        raise ConfigError("run_dir", str(run_dir), f"{blocked}; name a directory (created if "
                          "missing)")
    try:
        make_dirs(run_dir)  # it and the parents it needs: never group- or world-writable
    except OSError as e:
        _raise_if_no_space(e, run_dir)
        raise ConfigError("run_dir", str(run_dir), f"cannot create it ({e.strerror or e})") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError("run_dir", str(run_dir), "is not writable by this user")
    path = run_dir / "run.json"
    record = {"run_id": run_id or new_run_id(), "created_unix": time.time(),
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


def discard_unused_run_dir(run_dir: Path, run_id: str, remove_dir: bool) -> None:
    """Undo :func:`prepare_run_dir` for a start its settings refused (a GPU that does not exist, a
    power limit out of range): ``run.json`` goes if it is still this run's and nothing was written
    beside it, and the directory too when ``remove_dir`` (it was made for this start). Never
    raises: at worst an empty run directory stays."""
    path = run_dir / "run.json"
    try:
        if [p.name for p in run_dir.iterdir()] != ["run.json"]:
            return  # another process of the run already writes here
        if json.loads(path.read_text()).get("run_id") != run_id:
            return
        path.unlink()
        if remove_dir:
            run_dir.rmdir()
    except (OSError, ValueError, AttributeError):
        pass


def _raise_if_no_space(e: OSError, run_dir: Path) -> None:
    """A full disk or quota is the machine's state, not a bad setting: RunStoreError (tracking is
    then disabled and training goes on), where a bad path stays a ConfigError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise RunStoreError(f"run directory {run_dir}: no space left ({e.strerror or e})") from None
