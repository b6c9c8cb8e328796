"""A per-project ``emissions.csv`` that every run appends one row to, as codecarbon's trackers do.

The row is :func:`greentrack.reports.to_csv.row` (codecarbon's columns, read from the installed
codecarbon), so the file reads like codecarbon's own: ``pandas.read_csv`` gives one row per run and
codecarbon's ``FileOutput`` keeps appending to it. Set ``Config.emissions_csv`` (``--emissions-csv``,
``GREENTRACK_EMISSIONS_CSV``): :meth:`greentrack.Tracker.stop` appends the run's row;
``greentrack report --emissions-csv FILE`` appends the row of each run reported.

Safety:

* One row per run at stop: a run already in the file (same ``run_id``: a resumed run, a
  decorated function called again on one run directory) has its row replaced by the new one, which
  holds the whole run so far (codecarbon's ``on_csv_write="update"``), so a sum over the file
  counts it once. ``greentrack report --emissions-csv`` appends a row each time it is asked.
* Processes appending at once take a file lock (``<file>.lock``, the ``filelock`` package; an
  ``flock`` released when its holder dies), so the header is written once and rows never interleave.
* A file with other columns (an older codecarbon's, a user's extra column) is rewritten with both
  sets of columns, every old row kept, in a temporary file renamed over it; a warning says which.
* A file that cannot be read as a CSV (undecodable, ragged rows) is left as it was under
  ``<file>.damaged-<UTC time>`` and a new file is started; a warning says where the old one went.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from greentrack.errors import ConfigError
from greentrack.reports.to_csv import cell, columns, row

#: how long an append waits for another process's append before giving up with a warning
LOCK_TIMEOUT_S = 10.0


def append(docs: list[dict[str, Any]], path: str | os.PathLike[str],
           timeout_s: float = LOCK_TIMEOUT_S, *, replace_run: bool = False) -> list[str]:
    """Append one row per report document to the CSV at ``path`` (created with codecarbon's header
    if missing or empty). Returns warnings (a file rewritten or moved aside).

    ``replace_run``: a row of the same ``run_id`` already in the file is replaced, not repeated
    (what a run's stop does: its row holds the whole run so far).

    Raises:
        ConfigError: the file cannot be written, or another process held the lock ``timeout_s``.
    """
    from filelock import FileLock, Timeout
    check_path(path)
    # the user's link to a shared file: append to (and lock, and rewrite) the file it names, never
    # replace the link with a file of its own
    path = Path(os.path.realpath(path))
    cols = columns()
    rows = [{c: cell(r.get(c, "")) for c in cols} for r in map(row, docs)]
    try:
        with FileLock(f"{path}.lock", timeout=timeout_s):
            return _append_locked(path, cols, rows, replace_run)
    except Timeout:
        raise ConfigError("emissions_csv", str(path), f"is locked by another process for more "
                          f"than {timeout_s:g} s ({path}.lock); row not written") from None
    except OSError as e:
        raise ConfigError("emissions_csv", str(path),
                          f"cannot be written ({e.strerror or e})") from None


def append_run(run_dir: str | os.PathLike[str], config: Any) -> None:
    """Append the row of the run in ``run_dir`` to ``config.emissions_csv``, when a run stops.
    Never raises: a failure is a warning (the run is stored; ``greentrack report --emissions-csv``
    can append it later)."""
    import logging
    log = logging.getLogger("greentrack")
    try:
        from greentrack.reports import report_document
        # the settings each store recorded (a resumed run's segments each at their own), as
        # stop(), the summary and every report count them
        for w in append([report_document(Path(run_dir), {})], str(config.emissions_csv),
                        replace_run=True):
            log.warning("greentrack: %s", w)
    except Exception as e:  # noqa: BLE001 - never raise from a stop
        log.warning("greentrack: the run's row was not appended to %s: %s", config.emissions_csv, e)


def check_path(path: str | os.PathLike[str]) -> None:
    """The file's directory must exist (a typo must not create directories) and the path must
    be a regular file or nothing yet (links followed): not a directory, and not a device or a FIFO
    (reading ``/dev/zero`` whole never ends; a FIFO would hold the run's stop until a writer came).

    Raises:
        ConfigError: naming the setting, the path and what is wrong.
    """
    from greentrack._files import not_regular
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


def _append_locked(path: Path, cols: list[str], rows: list[dict[str, Any]],
                   replace_run: bool = False) -> list[str]:
    text = path.read_bytes() if path.exists() else b""
    if not text.strip():
        _replace(path, cols, rows)
        return []
    header, old, problem = _parse(text)
    if problem is not None:
        stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():  # never over an earlier damaged copy
            n += 1
            aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        os.replace(path, aside)
        _replace(path, cols, rows)
        return [f"{path} could not be read as a CSV ({problem}); it is kept unchanged as {aside} "
                f"and {path} was started anew with this run's row"]
    if sorted(header) == sorted(cols):  # codecarbon's check (FileOutput.has_valid_headers)
        ids = {r["run_id"] for r in rows if r.get("run_id")} if replace_run else set()
        at = header.index("run_id") if "run_id" in header else None
        if ids and at is not None and any(r[at] in ids for r in old):
            # A run already in the file (a resumed run, a decorated function called again on one
            # run directory, a run reported twice): its new row holds the whole run so far, so it
            # replaces the old one (codecarbon's on_csv_write="update"); two rows would count
            # the earlier segments twice in any sum over the file.
            kept = [dict(zip(header, r)) for r in old if r[at] not in ids]
            _replace(path, header, kept + rows)
            return []
        with path.open("a", encoding="utf-8", newline="") as f:
            if not text.endswith(b"\n"):
                f.write("\n")
            writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            writer.writerows(rows)
        return []
    merged = cols + [c for c in header if c not in cols]
    _replace(path, merged, [dict(zip(header, r)) for r in old] + rows)
    missing = [c for c in cols if c not in header]
    other = [c for c in header if c not in cols]
    return [f"{path} had other columns than codecarbon's emissions.csv (missing: "
            f"{', '.join(missing) or 'none'}; others: {', '.join(other) or 'none'}); rewrote it "
            f"with both, all {len(old)} old row(s) kept"]


def _parse(text: bytes) -> tuple[list[str], list[list[str]], str | None]:
    """(header, rows, None), or what makes the file unreadable as a CSV."""
    if b"\0" in text:
        return [], [], "it holds NUL bytes"
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], [], f"not UTF-8 at byte {e.start}"
    try:
        table = list(csv.reader(io.StringIO(decoded, newline="")))
    except csv.Error as e:
        return [], [], str(e)
    header, rows = table[0], [r for r in table[1:] if r]
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        return [], [], "its header has empty or repeated column names"
    for i, r in enumerate(rows, start=2):
        if len(r) != len(header):
            return [], [], f"row {i} has {len(r)} fields, the header {len(header)}"
    return header, rows, None


def _replace(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> None:
    """Write the whole file into a temporary one beside it, then rename it over ``path``."""
    mode = (os.stat(path).st_mode & 0o777) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.chmod(tmp, mode)  # mkstemp's file is 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
