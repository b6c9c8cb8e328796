"""Directories and file sets greentrack writes: never world-writable, written all or nothing.

* :func:`make_dirs` creates each missing directory with mode 0o755, whatever the umask, so a run
  directory or a report directory (and the parents greentrack creates for them) is never group-
  or world-writable. Directories that already exist are left as they are.
* :func:`staged_dir` gives a fresh private directory beside the target to write a set of files
  into; when the block succeeds, the files are moved into the target with ``rename``, replacing
  same-named entries (a planted symlink is replaced, never written through); when it fails, the
  target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from greentrack.common.errors import ConfigError

#: never group- or world-writable
DIR_MODE = 0o755
NOT_WRITABLE_BY_OTHERS = ~0o022


def make_dirs(path: Path) -> None:
    """``mkdir -p path`` where every directory created gets mode 0o755 (less what the umask takes),
    never the 0o777 that ``Path.mkdir(parents=True)`` gives parents under ``umask 000``."""
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # another process made it
        # mkdir's mode is cut by the umask only, so this is at most 0o755; say so explicitly
        mode = stat.S_IMODE(os.stat(d).st_mode)
        if mode & 0o022:
            os.chmod(d, mode & NOT_WRITABLE_BY_OTHERS)


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists (links followed) and is not a regular file: "a directory",
    "a FIFO", "a device"...; None for a regular file or nothing there. A file greentrack reads
    whole must be regular: reading ``/dev/zero`` never ends, opening a FIFO waits for a writer."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def not_a_directory(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a directory, or be made one: it, or the nearest of its parents
    that exists, is a file (or a FIFO, a device...), said as such (``mkdir`` would say "not
    writable" or "Not a directory"); None otherwise (links followed)."""
    target = Path(os.path.abspath(path))
    for p in (target, *target.parents):
        try:
            mode = os.stat(p).st_mode
        except (FileNotFoundError, NotADirectoryError):  # missing, or under a file: look up
            continue
        except OSError:
            return None  # unreadable: making it says why
        if stat.S_ISDIR(mode):
            return None
        what = "a file" if stat.S_ISREG(mode) else not_regular(p)
        return (f"is {what}, not a directory" if p == target
                else f"is under {p}, which is {what}, not a directory")
    return None


def _not_writable_by_others(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            p = os.path.join(dirpath, name) if name is not None else dirpath
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o022:
                os.chmod(p, stat.S_IMODE(st.st_mode) & NOT_WRITABLE_BY_OTHERS)


def _conflicts(src: Path, dst: Path) -> None:
    """Raise before moving anything if an entry of ``src`` cannot take its place in ``dst``."""
    for entry in os.scandir(src):
        target = dst / entry.name
        real_dir = target.is_dir() and not target.is_symlink()
        if entry.is_dir(follow_symlinks=False):
            if real_dir:
                _conflicts(Path(entry.path), target)
        elif real_dir:
            raise ConfigError("out", str(target), "is a directory where a report file goes; "
                              "move it away or choose another --out")


def _merge(src: Path, dst: Path) -> None:
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            if target.is_dir() and not target.is_symlink():
                _merge(Path(entry.path), target)
                continue
            if os.path.lexists(target):
                os.unlink(target)  # a link or a file where our directory goes: not followed
            os.rename(entry.path, target)
        else:
            os.replace(entry.path, target)  # atomic per file; replaces a symlink, never follows it


def _target(out: Path) -> Path:
    out = Path(os.path.abspath(out))
    if out.is_dir():
        return out.resolve()  # the user's own link to a directory is where they want the files
    if os.path.lexists(out):
        raise ConfigError("out", str(out), "exists and is not a directory")
    return out


@contextmanager
def staged_dir(out: Path, exclusive: bool = False) -> Iterator[Path]:
    """A new empty directory to write a set of files into, then moved into ``out`` (created if
    missing) when the block ends without error. On error, ``out`` is left as it was.

    ``exclusive``: ``out`` must be missing or empty when the files are moved, and becomes the
    staged directory in one ``rename`` (another process that filled ``out`` meanwhile, say a
    second ``greentrack merge`` into it, makes this one a ConfigError: never a mix of both)."""
    target = _target(out)
    make_dirs(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except PermissionError:
        if exclusive or not target.is_dir():
            raise
        tmp = Path(tempfile.mkdtemp(prefix=".greentrack-", suffix=".tmp", dir=target))
    try:
        yield tmp
        _not_writable_by_others(tmp)
        os.chmod(tmp, DIR_MODE)  # mkdtemp's 0o700, now the directory's own mode
        if exclusive:
            try:
                os.rename(tmp, target)  # over a missing or empty directory only, atomically
            except OSError:
                raise ConfigError("OUT", str(out), "was filled by another process meanwhile; "
                                  "nothing was written: merge into a new directory") from None
            return
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
                return
            except OSError:  # created meanwhile: merge instead
                pass
        _conflicts(tmp, target)
        _merge(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
