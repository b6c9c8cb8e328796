"""A per-project ``emissions.csv`` that runs append their rows to, as codecarbon's trackers do.

The row is :func:`greentrack.reports.to_csv.row` (codecarbon's columns, read from the installed
codecarbon), so the file reads like codecarbon's own: ``pandas.read_csv`` reads it and codecarbon's
``FileOutput`` keeps appending to it. Set ``Config.emissions_csv`` (``--emissions-csv``,
``GREENTRACK_EMISSIONS_CSV``): :meth:`greentrack.Tracker.stop` appends the run's row;
``greentrack report --emissions-csv`` appends the row of each run reported.

**Append-only.** A file other programs append to (codecarbon's trackers, other runs) is never
rewritten to update a row: a rewrite loses the rows they append meanwhile. A stop appends what of
its run the file does not hold yet: the run's totals (:mod:`greentrack.carbon.footprint`) less the
rows of the same ``run_id`` already there (a correction row). A run stopped once has one row; a
resumed run, or several processes of one run each stopping, have rows that add up to the run, so
a sum over the file (what codecarbon's dashboards do) counts every run once; a run asked again
(``greentrack report --emissions-csv`` after the run's own stop) adds nothing. Energies,
emissions and duration are added; powers and the emission rate are those of the row's own part.

Safety:

* Processes appending at once take an ``flock`` on the CSV itself (released when its holder
  dies; no lock file left beside it): the header is written once, rows never interleave.
* An append is one ``write`` of whole rows; one that fails or is cut short (a full disk) is
  truncated back, so no partial row is left.
* The file is read line by line, only lines holding a run's id are parsed: bounded time and
  memory however long the project's file.
* A file with only a UTF-8 BOM or blanks counts as empty; a short last row (a write cut short
  by another program) is left as it is (pandas reads its missing cells as NaN).
* A file with other columns than codecarbon's (an older codecarbon's, a user's extra column) is
  rewritten once with both sets of columns, every old row kept, in a temporary file renamed over
  it; a warning says which. A file that cannot be read as a CSV (NUL bytes, undecodable, a
  broken header) is left as it was under ``<file>.damaged-<UTC time>`` and a new file is
  started; a warning says where it went. A file that is not writable is refused in one line.
* A file is started (its header written), moved aside or rewritten only once it has not changed
  for :data:`SETTLE_S` after it was read: a program that writes it without the lock (codecarbon
  creates the file, then writes it) is read again, not taken for damage or for an empty file.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from greentrack.common.errors import ConfigError
from greentrack.common.files import not_regular
from greentrack.common.units import J_PER_KWH
from greentrack.reports.to_csv import cell, columns, row

#: how long an append waits for another process's append before giving up with a warning
LOCK_TIMEOUT_S = 10.0
#: the columns a run's rows add up to its totals in (kWh, kg, s)
ADDITIVE = ("duration", "emissions", "energy_consumed", "cpu_energy", "gpu_energy", "ram_energy")
#: powers (W) recomputed from a row's own energy (kWh) and duration
POWERS = (("cpu_power", "cpu_energy"), ("gpu_power", "gpu_energy"), ("ram_power", "ram_energy"))
#: a difference under this share of the run's energy and emissions is no new row
SAME = 1e-9
#: Before a file is started, moved aside or rewritten, it must not change for this long after it
#: was read (another program may be writing it without the lock), up to this many reads.
SETTLE_S = 0.05
STABLE_READS = 5


def append(docs: list[dict[str, Any]], path: str | os.PathLike[str],
           timeout_s: float = LOCK_TIMEOUT_S) -> list[str]:
    """Append each report document's run to the CSV at ``path`` (created with codecarbon's
    header if missing or empty): what of each run the file does not hold yet (see the module
    docstring). Returns warnings and notes (a file rewritten or moved aside, a run already
    there).

    Raises:
        ConfigError: the file cannot be written, or another process held it ``timeout_s``.
    """
    check_path(path)
    # the user's link to a shared file: append to (and lock) the file it names, never replace the
    # link with a file of its own
    path = Path(os.path.realpath(path))
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError("emissions_csv", str(path), "is not writable; row not written (it is "
                          "never replaced: make it writable, or name another file)")
    cols = columns()
    rows = [{c: cell(r.get(c, "")) for c in cols} for r in map(row, docs)]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError("emissions_csv", str(path),
                              f"cannot be written ({e.strerror or e})") from None
        try:
            _lock(fd, path, deadline, timeout_s)
            if _same_file(fd, path):  # not replaced (moved aside, merged) while we waited
                return _append_locked(fd, path, cols, rows)
        except OSError as e:
            raise ConfigError("emissions_csv", str(path),
                              f"cannot be written ({e.strerror or e})") from None
        finally:
            os.close(fd)  # releases the lock


def _lock(fd: int, path: Path, deadline: float, timeout_s: float) -> None:
    import fcntl
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise ConfigError("emissions_csv", str(path), f"is locked by another process for "
                              f"more than {timeout_s:g} s; row not written")
        time.sleep(0.01)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_path(path: str | os.PathLike[str]) -> None:
    """The file's directory must exist (a typo must not create directories) and the path must
    be a regular file or nothing yet (links followed): not a directory, and not a device or a FIFO
    (reading ``/dev/zero`` whole never ends; a FIFO would hold the run's stop until a writer came).

    Raises:
        ConfigError: naming the setting, the path and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError("emissions_csv", str(path), "is a directory; name a file, e.g. "
                          f"{path / 'emissions.csv'}")
    what = not_regular(path)
    if what is not None:
        raise ConfigError("emissions_csv", str(path), f"is {what}; name a regular file (created "
                          "if missing)")
    target = Path(os.path.realpath(path))  # a dangling link: its target's directory must exist
    if not target.parent.is_dir():
        raise ConfigError("emissions_csv", str(path), f"its directory {target.parent} does not exist")


# -- under the lock ------------------------------------------------------------------------------

def _append_locked(fd: int, path: Path, cols: list[str], rows: list[dict[str, Any]]) -> list[str]:
    ids = {str(r.get("run_id")) for r in rows if r.get("run_id")}
    for _ in range(STABLE_READS):
        seen = _stamp(fd)
        read = _read(path, ids)
        if read is not None and read[2] is None and sorted(read[0]) == sorted(cols):
            break  # rows are only appended: nothing to make sure of
        # about to write a header, move the file aside or rewrite it: only into a file no one is
        # writing. A program that does not take the lock (codecarbon creates the file, then
        # writes it at offset 0) can be read half-written: an empty first line, then its rows,
        # once set a valid file aside; a header written meanwhile is overwritten by its bytes.
        time.sleep(SETTLE_S)
        if _stamp(fd) == seen:
            break
    if read is None:  # empty, blanks or a UTF-8 BOM alone: a new file
        _write(fd, _csv_text(cols, rows, header=True))
        return []
    header, found, problem, ends_newline = read
    if problem is not None:
        aside = _set_aside(path)
        _replace(path, cols, rows)
        return [f"{path} could not be read as a CSV ({problem}); it is kept unchanged as {aside} "
                f"and {path} was started anew with this run's row"]
    notes: list[str] = []
    new = []
    for r in rows:
        rid = str(r.get("run_id") or "")
        part = _correction(r, found.get(rid, [])) if rid else r
        if part is None:
            notes.append(f"already in {path}: run {rid} (its rows there hold all of it)")
        else:
            new.append(part)
    if sorted(header) == sorted(cols):  # codecarbon's check (FileOutput.has_valid_headers)
        if new:
            _write(fd, ("" if ends_newline else "\n") + _csv_text(header, new, header=False))
        return notes
    old = _read_all(path)
    merged = cols + [c for c in header if c not in cols]
    _replace(path, merged, [dict(zip(header, r)) for r in old] + new)
    missing = [c for c in cols if c not in header]
    other = [c for c in header if c not in cols]
    return notes + [f"{path} had other columns than codecarbon's emissions.csv (missing: "
                    f"{', '.join(missing) or 'none'}; others: {', '.join(other) or 'none'}); "
                    f"rewrote it with both, all {len(old)} old row(s) kept"]


def _stamp(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def _read(path: Path, ids: set[str]
          ) -> tuple[list[str], dict[str, list[dict[str, str]]], str | None, bool] | None:
    """The file's header, the rows of ``ids``, what makes it unreadable (None: nothing) and
    whether it ends with a newline; None for an empty file (blanks or a UTF-8 BOM alone)."""
    with open(path, "rb") as f:  # the same file (checked): read line by line
        first = f.readline()
        if not first.decode("utf-8-sig", errors="replace").strip() and \
                not f.read(64 * 1024).strip():
            return None
        header, problem = _header(first)
        if problem is not None:
            return header, {}, problem, True
        found, problem, ends_newline = _scan(f, header, ids, first)
        return header, found, problem, ends_newline


def _header(first: bytes) -> tuple[list[str], str | None]:
    """The header's column names, or what makes it unreadable."""
    if b"\0" in first:
        return [], "it holds NUL bytes"
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], f"not UTF-8 at byte {e.start}"
    try:
        header = next(csv.reader([text]))
    except (csv.Error, StopIteration) as e:
        return [], str(e) or "no header"
    if not header or len(set(header)) != len(header) or not all(h.strip() for h in header):
        return [], "its header has empty or repeated column names"
    return header, None


def _scan(f: Any, header: list[str], ids: set[str], first: bytes
          ) -> tuple[dict[str, list[dict[str, str]]], str | None, bool]:
    """The rows of ``ids`` in the rest of the file, whether it holds NUL bytes, and whether it
    ends with a newline. Only lines holding an id are decoded and parsed."""
    found: dict[str, list[dict[str, str]]] = {}
    at = header.index("run_id") if "run_id" in header else None
    keys = [i.encode() for i in ids]
    last = first
    for line in f:
        last = line
        if b"\0" in line:
            return found, "it holds NUL bytes", True
        if at is None or not any(k in line for k in keys):
            continue
        try:
            fields = next(csv.reader([line.decode("utf-8")]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            continue  # a damaged line is not this run's row
        if len(fields) > at and fields[at] in ids:
            found.setdefault(fields[at], []).append(dict(zip(header, fields)))
    return found, None, last.endswith(b"\n")


def _number(v: Any) -> float:
    try:
        return float(v) if v not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def _correction(new: dict[str, Any], there: list[dict[str, str]]) -> dict[str, Any] | None:
    """``new`` (a run's totals) less what ``there`` (its rows in the file) already holds; None
    when they hold it all."""
    if not there:
        return new
    held = {k: sum(_number(r.get(k)) for r in there) for k in ADDITIVE}
    out = dict(new)
    for k in ADDITIVE:
        out[k] = _number(new.get(k)) - held[k]
    scale = max(abs(_number(new.get("energy_consumed"))), 1e-300)
    scale_g = max(abs(_number(new.get("emissions"))), 1e-300)
    if abs(out["energy_consumed"]) <= SAME * scale and abs(out["emissions"]) <= SAME * scale_g:
        return None
    dur = out["duration"]
    for power, energy in POWERS:  # this row's own powers: its energy over its duration
        out[power] = out[energy] * J_PER_KWH / dur if dur > 0 else ""
    out["emissions_rate"] = out["emissions"] / dur if dur > 0 else ""
    return out


def _csv_text(cols: list[str], rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, restval="", extrasaction="ignore",
                            lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write(fd: int, text: str) -> None:
    """Append ``text`` whole or not at all: one write; a failed or short one is truncated back
    (when nothing else was appended since)."""
    data = text.encode("utf-8")
    before = os.fstat(fd).st_size
    written = 0
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "the write was cut short")
    except OSError:
        try:
            if os.fstat(fd).st_size == before + written:  # no one appended meanwhile
                os.ftruncate(fd, before)
        except OSError:
            pass
        raise


def _read_all(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8-sig")
    table = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    return table[1:]


def _set_aside(path: Path) -> Path:
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():  # never over an earlier damaged copy
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, aside)
    return aside


def _replace(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> None:
    """Write the whole file into a temporary one beside it, then rename it over ``path``."""
    mode = (os.stat(path).st_mode & 0o777) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(_csv_text(cols, rows, header=True))
        os.chmod(tmp, mode)  # mkstemp's file is 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
