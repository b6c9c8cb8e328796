"""Leases: how runs on one machine find each other, without a daemon and without guessing.

A lease is a small JSON file held under an exclusive ``flock`` for as long as its process measures
something. The kernel drops the lock when the process dies (SIGKILL included), so a lease file whose
lock can be taken is stale, whatever its content says. Files are created under a temporary name,
locked, then renamed into place: a reader never sees a lease before it is locked.

Two uses:

* **host leases** (:func:`host_lease_dir`): every tracker that measures this host's CPU or DRAM
  holds one. Two runs in ``machine`` mode at once would each count the whole host: each sees the
  other's lease and says so in its run (``host-shared`` event), with the fix (``--mode process``).
* **join leases** (``RUN_DIR/.joins``): a tracker started inside ``greentrack run`` joins the parent's
  run. It lists the devices it measures; the parent stops counting those while the lease is held.

The host lease directory is shared by every user of the machine, like ``/tmp`` (mode 1777, sticky):
another user can plant a file there, which at worst causes a false warning. Files are opened with
``O_NOFOLLOW`` and read up to 4 KiB; the values shown are cut to safe labels.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

MAX_READ = 4096
MAX_LEASES = 256  # files looked at per scan: bounded work whatever was planted


def host_lease_dir() -> Path:
    """Where this machine's host leases live: ``$GREENTRACK_LEASE_DIR``, else ``/dev/shm`` (gone at
    reboot, like the leases' processes), else the temporary directory."""
    override = os.environ.get("GREENTRACK_LEASE_DIR")
    if override:
        return Path(override)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    return base / "greentrack-leases"


class Lease:
    """One held lease. ``release()`` (or the process's death) ends it."""

    def __init__(self, directory: Path, record: dict[str, Any], shared: bool = False) -> None:
        self.directory = directory
        _make_dir(directory, shared)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = directory / f".{name}.tmp"
        self.path = directory / f"{name}.lease"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps(record).encode()[:MAX_READ])
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd: int | None = fd

    def others(self) -> list[dict[str, Any]]:
        """The records of the other live leases in this directory (stale ones are removed)."""
        return [rec for path, rec in live_leases(self.directory) if path != self.path]

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def live_leases(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of every lease in ``directory`` whose lock is held (ours included)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".lease"))[:MAX_LEASES]
    except OSError:
        return []
    out = []
    for name in names:
        path = directory / name
        record = _held(path)
        if record is not None:
            out.append((path, record))
    return out


def is_held(path: Path) -> bool:
    """True while the lease at ``path`` is held by a live process."""
    return _held(path) is not None


def _held(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: read what it says
            try:
                record = json.loads(os.read(fd, MAX_READ) or b"{}")
            except (OSError, ValueError):
                record = {}
            return record if isinstance(record, dict) else {}
        except OSError:
            return None
        # We got the lock: its process is gone. Remove it (only if it is still the same file).
        try:
            if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                path.unlink()
        except OSError:
            pass
        return None
    finally:
        os.close(fd)


def _make_dir(directory: Path, shared: bool) -> None:
    try:
        directory.mkdir(mode=0o755, parents=True)
    except FileExistsError:
        return
    if shared:  # every user's runs must see each other: like /tmp, sticky
        os.chmod(directory, 0o1777)
    else:
        os.chmod(directory, 0o755)
